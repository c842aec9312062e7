"""Allowlist entries: the text syntax (``name``, ``*.suffix``, ``*``, IP or CIDR,
each with an optional ``:port``) parsed into :class:`Entry`, and a compiled set
of entries (:class:`Matcher`) that answers "which entry allows this destination".

Pure: no I/O, no clock. The policy (:mod:`egresswatch.judge.policy`) compiles
one Matcher per server and phase; :mod:`egresswatch.judge.allowlist` proposes entries.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

from egresswatch.errors import ConfigError

_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")
_IPNet = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Entry:
    """One parsed allowlist entry. ``kind`` is ``any`` (``*``), ``name``
    (exact), ``suffix`` (``*.example.com``: subdomains only) or ``net``."""

    text: str
    kind: str
    value: str = ""
    net: _IPNet | None = None
    port: int | None = None
    source: str = ""

    def describe(self) -> str:
        return f"{self.source}: {self.text}" if self.source else self.text


def normalize_host(name: str) -> str:
    """Lower-case ASCII (IDNA for non-ASCII) without the trailing dot; raises ValueError."""
    n = name.strip().rstrip(".")
    if not n.isascii():
        n = n.encode("idna").decode("ascii")
    n = n.lower()
    if not n or len(n) > 253 or not all(_LABEL.fullmatch(label) for label in n.split(".")):
        raise ValueError("not a host name")
    return n


def parse_entry(text: str, source: str = "") -> Entry:
    """Parse ``name``, ``*.suffix``, ``*``, an IP or CIDR, each with an optional
    ``:port`` (``[v6]:port`` or ``[v6/len]:port`` for IPv6). Raises ConfigError."""
    where = f"{source}: " if source else ""
    s = text.strip() if isinstance(text, str) else ""
    host, port_text = s, None
    if s.startswith("["):
        m = re.fullmatch(r"\[([^\]]+)\](?::([^:]*))?", s)
        if not m:
            raise ConfigError(f"{where}{text!r}: unbalanced [brackets]")
        host, port_text = m.group(1), m.group(2)
    elif s.count(":") == 1:
        host, port_text = s.split(":")
    port = None
    if port_text is not None:
        if not port_text.isascii() or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ConfigError(f"{where}{text!r}: port must be 1-65535")
        port = int(port_text)
    if not host:
        raise ConfigError(f"{where}{text!r}: empty entry")
    if host == "*":
        return Entry(text=s, kind="any", port=port, source=source)
    if host[0].isdigit() or ":" in host:
        try:
            net = ipaddress.ip_network(host, strict=False)
        except ValueError:
            net = None
        if net is not None:
            return Entry(text=s, kind="net", net=net, port=port, source=source)
        if ":" in host or "/" in host:
            raise ConfigError(f"{where}{text!r}: not an IP address or CIDR")
    kind = "name"
    if host.startswith("*."):
        kind, host = "suffix", host[2:]
    try:
        value = normalize_host(host)
    except (ValueError, UnicodeError):
        raise ConfigError(f"{where}{text!r}: not a host name, *.suffix, IP or CIDR") from None
    return Entry(text=s, kind=kind, value=value, port=port, source=source)


def _port_ok(entry: Entry, port: int | None) -> bool:
    return entry.port is None or port is None or entry.port == port


class Matcher:
    """A compiled set of entries. ``match`` never raises."""

    def __init__(self, entries: Iterable[Entry] = ()) -> None:
        self.exact: dict[str, list[Entry]] = {}
        self.suffix: dict[str, list[Entry]] = {}
        self.nets: list[Entry] = []
        self.any: list[Entry] = []
        self.entries: list[Entry] = []
        for e in entries:
            self.entries.append(e)
            if e.kind == "name":
                self.exact.setdefault(e.value, []).append(e)
            elif e.kind == "suffix":
                self.suffix.setdefault(e.value, []).append(e)
            elif e.kind == "net":
                self.nets.append(e)
            else:
                self.any.append(e)

    @classmethod
    def parse(cls, texts: Iterable[str], source: str = "") -> Matcher:
        return cls(parse_entry(t, source) for t in texts)

    def match(self, name: str | None = None, ip: str | None = None, port: int | None = None) -> Entry | None:
        """The first entry matching the destination: exact name, then the most
        specific ``*.suffix``, then IP/CIDR, then ``*``. A None port (a DNS
        query) matches entries with any port."""
        if name:
            n = name.rstrip(".").lower()
            for e in self.exact.get(n, ()):
                if _port_ok(e, port):
                    return e
            if self.suffix:
                labels = n.split(".")
                for i in range(1, len(labels)):
                    for e in self.suffix.get(".".join(labels[i:]), ()):
                        if _port_ok(e, port):
                            return e
        if ip and self.nets:
            try:
                addr = ipaddress.ip_address(ip.split("%", 1)[0])
            except ValueError:
                addr = None
            if addr is not None:
                for e in self.nets:
                    if e.net is not None and e.net.version == addr.version and addr in e.net:
                        if _port_ok(e, port):
                            return e
        for e in self.any:
            if _port_ok(e, port):
                return e
        return None


def is_valid_entry(text: str) -> bool:
    """``text`` parses as an allowlist entry."""
    try:
        parse_entry(text)
    except ConfigError:
        return False
    return True
