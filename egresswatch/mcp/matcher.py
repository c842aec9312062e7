"""Ties a command line to a discovered MCP server definition or a launcher pattern.

:class:`Matcher` compares the :func:`~egresswatch.mcp.signature.signature` of
a running command line with those of the ServerDefs (of the process's own
account, or system-wide ones) and with the configured launcher patterns; a
definition always wins over a pattern. Pure and memoised: no I/O.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Protocol

from egresswatch.mcp.signature import Signature, base_name, is_generic, signature

log = logging.getLogger(__name__)


class ServerLike(Protocol):
    """The fields of discovery.ServerDef that matching reads."""

    @property
    def host(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def command(self) -> str | None: ...
    @property
    def args(self) -> tuple[str, ...]: ...
    @property
    def cwd(self) -> str | os.PathLike[str] | None: ...
    @property
    def disabled(self) -> bool: ...
    @property
    def owner(self) -> str | None: ...


def _same_exe(expected: str, actual: str, cwd: str | os.PathLike[str] | None) -> bool:
    e, a = expected.replace("\\", "/"), actual.replace("\\", "/")
    if "/" in e and "/" in a:
        if cwd and not e.startswith("/"):
            e = os.path.join(os.fspath(cwd), e)
        e, a = os.path.normpath(e), os.path.normpath(a)
        if e == a:
            return True
        if not a.startswith("/") or not e.startswith("/"):
            rel, full = (a, e) if not a.startswith("/") else (e, a)
            return full.endswith("/" + rel.lstrip("./"))
        return False
    return base_name(e) == base_name(a)


def sig_matches(expected: Signature, actual: Signature, cwd: str | os.PathLike[str] | None = None) -> bool:
    """Does the launched ``actual`` run the ``expected`` definition?"""
    if is_generic(expected):
        return False
    if actual.args[: len(expected.args)] != expected.args:
        return False
    if expected.kind == actual.kind:
        if expected.kind == "exe":
            return _same_exe(expected.name, actual.name, cwd)
        if expected.kind == "py":
            return expected.name == actual.name
        return expected.name == actual.name
    if actual.kind != "exe":
        return False
    path = actual.name.replace("\\", "/")
    if expected.kind == "npm":  # node .../_npx/<hash>/node_modules/.bin/<bin>
        unscoped = expected.name.rsplit("/", 1)[-1]
        return ("/_npx/" in path or "/node_modules/" in path) and (
            base_name(path) == unscoped or f"/node_modules/{expected.name}/" in path
        )
    if expected.kind == "py":  # python .../uv/archive-v0/<hash>/bin/<pkg>
        return (
            "/bin/" in path
            and base_name(path).replace("_", "-") == expected.name
            and ("/uv/" in path or "/pipx/" in path or "archive-v" in path)
        )
    return False


@dataclass(frozen=True, slots=True)
class RootMatch:
    server: str
    host: str | None
    via: str
    runner: bool


class Matcher:
    """Ties command lines to ServerDefs or launcher patterns; memoised.

    A definition with an ``owner`` (the account whose config holds it) speaks
    only for that account's processes; one without (system-wide files) for
    every account. :func:`classify_with` prefers any definition match in a
    chain over any pattern match."""

    def __init__(self, servers: Sequence[ServerLike], patterns: Sequence[str] = ()) -> None:
        self.defs: list[tuple[Signature, ServerLike]] = []
        for s in servers:
            if s.command is None or getattr(s, "disabled", False):
                continue
            sig = signature((s.command, *s.args))
            if sig is not None and not is_generic(sig):
                self.defs.append((sig, s))
        self.patterns: list[re.Pattern[str]] = []
        for p in patterns:
            try:
                self.patterns.append(re.compile(p))
            except re.error as exc:
                log.warning("launcher pattern %r ignored: %s", p, exc)
        self._config = lru_cache(maxsize=8192)(self._config_uncached)
        self._pattern = lru_cache(maxsize=8192)(self._pattern_uncached)

    def match(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...] = (), user: str | None = None
    ) -> RootMatch | None:
        """A definition match for a process of ``user`` running ``cmdline``, else a pattern match."""
        return self.match_config(cmdline, ancestor_hosts, user) or self.match_pattern(cmdline, ancestor_hosts)

    def match_config(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...] = (), user: str | None = None
    ) -> RootMatch | None:
        if sum(len(a) for a in cmdline) > 4096:  # keep the memo small whatever processes do
            return self._config_uncached(cmdline, ancestor_hosts, user)
        return self._config(cmdline, ancestor_hosts, user)

    def match_pattern(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...] = ()
    ) -> RootMatch | None:
        if sum(len(a) for a in cmdline) > 4096:
            return self._pattern_uncached(cmdline, ancestor_hosts)
        return self._pattern(cmdline, ancestor_hosts)

    def _config_uncached(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...], user: str | None
    ) -> RootMatch | None:
        if not cmdline or not self.defs:
            return None
        sig = signature(cmdline)
        if sig is None:
            return None
        # a user-switching wrapper (su, sudo ...) runs the command as another
        # account than its own: there only system-wide definitions, and ones that
        # launch through such a wrapper themselves, speak for it; the launched
        # process matches its own account's definition
        hits = [
            (e, s)
            for e, s in self.defs
            if (s.owner is None or (s.owner == user and (e.switched or not sig.switched)))
            and sig_matches(e, sig, s.cwd)
        ]
        if not hits:
            return None

        def rank(hit: tuple[Signature, ServerLike]) -> tuple[int, int]:
            host = (hit[1].host or "").lower()
            near = any(host == h or host.startswith(h + "-") for h in ancestor_hosts)
            return (0 if near else 1, -len(hit[0].args))

        _exp, best = min(hits, key=rank)
        return RootMatch(best.name, best.host, "config", sig.runner)

    def _pattern_uncached(
        self, cmdline: tuple[str, ...], ancestor_hosts: tuple[str, ...]
    ) -> RootMatch | None:
        if not cmdline or not self.patterns:
            return None
        sig = signature(cmdline)
        if sig is None or is_generic(sig):
            return None
        text = " ".join(cmdline)
        for pat in self.patterns:
            if pat.search(text):
                name = sig.name if sig.kind != "exe" else base_name(sig.name)
                host = ancestor_hosts[0] if ancestor_hosts else None
                return RootMatch(name, host, "pattern", sig.runner)
        return None
