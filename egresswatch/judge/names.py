"""Per-owner DNS memory: which name did *this* server or process resolve to an IP?

A global "last answer for this IP" map gives wrong names as soon as two
processes resolve different names to one CDN address, so every answer is
remembered under the owner of the flow that received it (see ``owner_key``).
Time is frame time (``obs.ts``); memory is a bounded LRU.
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

from egresswatch.model import DNS_ANSWER, DNS_QUERY, Attribution, Observation

Owner = tuple[str, ...]

#: Where answers that a caching resolver on this host received are remembered.
#: With nss-resolve (Fedora, Arch: getaddrinfo asks systemd-resolved over
#: varlink) or nscd, a process's lookups never leave it as DNS packets: the
#: resolver process asks upstream and the answer reaches only that process.
SYSTEM: Owner = ("system",)
#: Process names (as the kernel shows them, 15 characters at most) of caching resolvers.
SYSTEM_RESOLVERS = frozenset(
    {
        "systemd-resolve",  # systemd-resolved, cut to 15 characters
        "systemd-resolved",
        "nscd",
        "unscd",
        "dnsmasq",
        "unbound",
        "named",
        "pdns_recursor",
        "kresd",
        "stubby",
        "dnscrypt-proxy",
        "coredns",
        "mDNSResponder",
    }
)

#: Answers are kept at least this long (seconds) whatever their TTL: clients
#: cache beyond TTL 0/short TTLs and pooled connections reconnect later.
MIN_TTL = 300.0
#: and at most this long, to bound memory and staleness.
MAX_TTL = 86400.0
_A, _AAAA, _CNAME = 1, 28, 5
_MAX_CHAIN = 16


def owner_key(obs: Observation, attr: Attribution) -> Owner:
    """Whose DNS memory an observation belongs to.

    1. an MCP server: ``("server", host, name)`` (all its processes share it);
    2. else a known process: ``("proc", pid, create_time)``;
    3. else the local host address of the flow: ``("host", ip)`` (for a DNS
       answer that is the client address it was sent to, for a connection its
       source). Offline replays without process records thus get per-host
       memory, never one global map across hosts.
    """
    if attr.server is not None:
        return ("server", attr.host or "", attr.server)
    if attr.process is not None:
        return ("proc", str(attr.process.pid), repr(attr.process.create_time))
    return ("host", _norm_ip(obs.local()[0]))


@lru_cache(maxsize=4096)
def _norm_ip(ip: str) -> str:
    if ":" not in ip:
        return ip
    try:
        return ipaddress.ip_address(ip.split("%", 1)[0]).compressed
    except ValueError:
        return ip.lower()


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _norm_name(name: str) -> str:
    """Compare form of a presentation-form name: ASCII letters lower-cased (DNS
    is case-insensitive for those only), a trailing separator dot removed (not
    an escaped one, ``\\.``); escapes are kept exactly."""
    while len(name) > 1 and name.endswith("."):
        head = name[:-1]
        if (len(head) - len(head.rstrip("\\"))) % 2:  # an odd run of "\\": the dot is escaped
            break
        name = head
    return name.translate(_ASCII_LOWER)


@dataclass(frozen=True, slots=True)
class _Entry:
    names: tuple[str, ...]  # queried name first, then the CNAME targets leading to the IP
    expires: float


#: Names remembered per (owner, address); the oldest answer is dropped beyond it.
MAX_NAMES_PER_ADDRESS = 32


class NameMemory:
    """Remembers DNS answers per owner and names connection destinations.

    Every name an owner resolved to an address is kept (up to
    :data:`MAX_NAMES_PER_ADDRESS`, each with its own expiry), not only the
    last one: names behind one CDN address share it, and a connection without
    SNI to that address could be to any of them (see :meth:`candidates`).
    ``max_entries`` bounds the names kept in all (least recently used
    addresses dropped first).
    """

    def __init__(self, max_entries: int = 65536) -> None:
        self.max_entries = max(1, max_entries)
        # (owner, ip) -> {queried name: entry}, least recently answered first
        self._map: OrderedDict[tuple[Owner, str], dict[str, _Entry]] = OrderedDict()
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def observe(self, obs: Observation, attr: Attribution) -> str | None:
        """Record a DNS answer; return the event's destination name: the query
        name, the SNI, or for a connection without SNI the one name the owner
        resolved to the address (None when unknown or when several names share
        it: :meth:`candidates` lists them)."""
        if obs.kind == DNS_ANSWER:
            self.record(owner_key(obs, attr), obs)
            if attr.server is None and attr.process is not None and attr.process.name in SYSTEM_RESOLVERS:
                self.record(SYSTEM, obs)
            return _norm_name(obs.qname) if obs.qname else None
        if obs.kind == DNS_QUERY:
            return _norm_name(obs.qname) if obs.qname else None
        if obs.sni:
            return _norm_name(obs.sni)
        found = self.candidates(obs, attr)
        return found[0] if len(found) == 1 else None

    def candidates(self, obs: Observation, attr: Attribution) -> tuple[str, ...]:
        """For a connection (or a hello without SNI): every name the owner
        resolved to its destination address and that has not expired at frame
        time, sorted; else those of the host's resolver (:data:`SYSTEM`).
        Empty for DNS and for hellos that carry an SNI."""
        if obs.is_dns or obs.sni:
            return ()
        owner = owner_key(obs, attr)
        return self.queried(owner, obs.dst, obs.ts) or self.queried(SYSTEM, obs.dst, obs.ts)

    def record(self, owner: Owner, obs: Observation) -> int:
        """Remember every A/AAAA address reached from the question through the
        CNAME chain of ``obs`` (a dns_answer). Returns how many were stored."""
        if not obs.qname or obs.rcode not in (0, None):
            return 0
        qname = _norm_name(obs.qname)
        stored = 0
        if obs.records:
            cnames: dict[str, str] = {}
            addrs: list[tuple[str, str, int]] = []
            for r in obs.records:
                owner_name = _norm_name(r.name)
                if r.rtype == _CNAME:
                    cnames.setdefault(owner_name, _norm_name(r.data))
                elif r.rtype in (_A, _AAAA):
                    addrs.append((owner_name, r.data, r.ttl))
            chain = [qname]
            while chain[-1] in cnames and len(chain) < _MAX_CHAIN and cnames[chain[-1]] not in chain:
                chain.append(cnames[chain[-1]])
            for owner_name, ip, ttl in addrs:
                if owner_name in chain:
                    names = tuple(chain[: chain.index(owner_name) + 1])
                    self._put(owner, ip, names, obs.ts + _clamp(ttl))
                    stored += 1
        else:  # answers only (A/AAAA/CNAME data in wire order), no TTLs known
            chain = [qname]
            for data in obs.answers:
                if is_ip(data):
                    self._put(owner, data, tuple(chain), obs.ts + MIN_TTL)
                    stored += 1
                elif len(chain) < _MAX_CHAIN:
                    chain.append(_norm_name(data))
        return stored

    def _put(self, owner: Owner, ip: str, names: tuple[str, ...], expires: float) -> None:
        key = (owner, _norm_ip(ip))
        entries = self._map.get(key)
        if entries is None:
            entries = self._map[key] = {}
        else:
            self._map.move_to_end(key)
            if entries.pop(names[0], None) is not None:
                self._count -= 1
        entries[names[0]] = _Entry(names, expires)  # the latest answer last
        self._count += 1
        if len(entries) > MAX_NAMES_PER_ADDRESS:
            del entries[next(iter(entries))]
            self._count -= 1
        while self._count > self.max_entries and self._map:
            _, dropped = self._map.popitem(last=False)
            self._count -= len(dropped)

    def _live(self, owner: Owner, ip: str, ts: float | None) -> list[_Entry]:
        """The entries of (owner, ip) not expired at ``ts``, latest answer first."""
        key = (owner, _norm_ip(ip))
        entries = self._map.get(key)
        if not entries:
            return []
        if ts is not None:
            for name in [n for n, e in entries.items() if ts > e.expires]:
                del entries[name]
                self._count -= 1
            if not entries:
                del self._map[key]
                return []
        self._map.move_to_end(key)
        return list(reversed(entries.values()))

    def names(self, owner: Owner, ip: str, ts: float | None = None) -> tuple[str, ...]:
        """Every name (queries, then their CNAME targets; the latest answer
        first) ``owner`` resolved to ``ip``; empty when unknown or expired at
        frame time ``ts``."""
        return tuple(dict.fromkeys(n for e in self._live(owner, ip, ts) for n in e.names))

    def queried(self, owner: Owner, ip: str, ts: float | None = None) -> tuple[str, ...]:
        """The names ``owner`` asked for that resolved to ``ip`` (not expired at ``ts``), sorted."""
        return tuple(sorted(e.names[0] for e in self._live(owner, ip, ts)))

    def lookup(self, owner: Owner, ip: str, ts: float | None = None) -> str | None:
        """The name ``owner`` asked for that most recently resolved to ``ip``."""
        found = self._live(owner, ip, ts)
        return found[0].names[0] if found else None

    def resolved(self, owner: Owner, ip: str, ts: float | None = None) -> bool:
        """Did ``owner`` resolve any name to ``ip`` (not yet expired at ``ts``)?
        Answers of the host's caching resolver and /etc/hosts (:data:`SYSTEM`)
        count too: with nss-resolve or nscd they are the owner's answers."""
        return bool(self._live(owner, ip, ts)) or bool(self._live(SYSTEM, ip, ts))

    def load_hosts(self, text: str) -> int:
        """Remember the entries of an /etc/hosts file under :data:`SYSTEM`
        (replacing earlier ones); returns how many addresses were stored."""
        for key in [k for k in self._map if k[0] == SYSTEM]:
            entries = self._map[key]
            for name in [n for n, e in entries.items() if e.expires == _FOREVER]:
                del entries[name]
                self._count -= 1
            if not entries:
                del self._map[key]
        stored = 0
        for ip, names in parse_hosts(text):
            self._put(SYSTEM, ip, names, _FOREVER)
            stored += 1
        return stored


_FOREVER = float("inf")


def parse_hosts(text: str) -> list[tuple[str, tuple[str, ...]]]:
    """(address, names) of an /etc/hosts text; comments, loopback and bad lines skipped."""
    out: list[tuple[str, tuple[str, ...]]] = []
    for line in text.splitlines():
        fields = line.split("#", 1)[0].split()
        if len(fields) < 2:
            continue
        try:
            addr = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            continue
        if addr.is_loopback or addr.is_unspecified:
            continue
        out.append((addr.compressed, tuple(_norm_name(n) for n in fields[1:])))
    return out


def _clamp(ttl: int) -> float:
    return min(max(float(ttl), MIN_TTL), MAX_TTL)


def is_ip(text: str) -> bool:
    """True for a literal IPv4/IPv6 address."""
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
