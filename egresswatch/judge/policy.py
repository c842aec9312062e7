"""Allowlists and detectors -> Verdict, in a fixed order. Pure: frame time only, no I/O.

Allowlist entries are parsed and matched in :mod:`egresswatch.judge.entries`, the
detectors live in :mod:`egresswatch.judge.exfil` and :mod:`egresswatch.judge.doh`.

Order of checks (first that decides wins), documented in docs/policy.md:

1. no process found for the flow        -> unwatched / unattributed
   a process outside any MCP server tree -> unwatched / outside_mcp
2. DNS answer                          -> allowed / dns_answer (the query carries the verdict)
   flow summary (bytes sent)           -> flagged / upload (high) over policy.upload_max_bytes
                                          to one destination, else allowed / volume
3. encrypted-DNS resolver (DoH/DoT/DoQ) -> flagged / doh_dot (high), unless policy.doh_allow
4. DNS exfiltration shape (queries)    -> flagged / dns_exfil (high)
5. allowlist entry matches             -> allowed / allowlist (an SNI-less connection to
   an address several resolved names share: an address entry, or every name)
6. connection to a never-resolved IP   -> flagged / direct_ip (high)
7. install phase (package runner hooks) -> flagged / install_egress (medium), never learned
8. learning mode: first contact        -> flagged / first_seen (low) within the server's
   learning window, new_destination (medium) after it; later contacts -> allowed / learned
9. otherwise                           -> flagged / not_allowlisted (medium)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable

from egresswatch.config import Config, ServerPolicy
from egresswatch.judge.doh import doh_dot
from egresswatch.judge.entries import Entry, Matcher, parse_entry
from egresswatch.judge.exfil import DnsExfilDetector
from egresswatch.judge.names import Owner, owner_key
from egresswatch.judge.upload import UploadDetector
from egresswatch.model import (
    ALLOWED,
    CONNECT,
    DNS_ANSWER,
    DNS_QUERY,
    FLAGGED,
    FLOW_SUMMARY,
    ICMP_FLOW,
    Attribution,
    Observation,
    Verdict,
)

#: reason code -> (verdict, severity). Stable strings; see docs/policy.md.
REASONS: dict[str, tuple[str, str]] = {
    "outside_mcp": ("unwatched", "info"),
    "unattributed": ("unwatched", "info"),
    "dns_answer": (ALLOWED, "info"),
    "allowlist": (ALLOWED, "info"),
    "learned": (ALLOWED, "info"),
    "first_seen": (FLAGGED, "low"),
    "new_destination": (FLAGGED, "medium"),
    "install_egress": (FLAGGED, "medium"),
    "not_allowlisted": (FLAGGED, "medium"),
    "direct_ip": (FLAGGED, "high"),
    "dns_exfil": (FLAGGED, "high"),
    "doh_dot": (FLAGGED, "high"),
    "upload": (FLAGGED, "high"),  # judge/upload.py, flow_summary events
    "volume": (ALLOWED, "info"),
}

Resolver = Callable[[Owner, str, float | None], bool]


def verdict(reason: str, rule: str | None = None) -> Verdict:
    v, sev = REASONS[reason]
    return Verdict(verdict=v, reason=reason, rule=rule, severity=sev)


def _compile(cfg: Config, server: str, install: bool) -> Matcher:
    entries: list[Entry] = []
    sp = cfg.servers.get(server)
    if sp is not None:
        entries += [parse_entry(t, f"servers.{server}.allow") for t in sp.allow]
    entries += [parse_entry(t, "policy.global_allow") for t in cfg.policy.global_allow]
    if install:
        entries += [parse_entry(t, "policy.install_allow") for t in cfg.policy.install_allow]
    return Matcher(entries)


def validate(cfg: Config) -> None:
    """Raise ConfigError naming the first invalid allowlist entry in ``cfg``."""
    for name in cfg.servers:
        _compile(cfg, name, True)
    _compile(cfg, "", True)
    Matcher.parse(cfg.policy.doh_allow, "policy.doh_allow")


class Policy:
    """Judges observations. ``resolved(owner, ip, ts)`` (NameMemory.resolved)
    powers the direct_ip detector; without it that detector is off."""

    def __init__(self, config: Config, resolved: Resolver | None = None, max_learned: int = 200_000) -> None:
        self._resolved = resolved
        self.max_learned = max(1, max_learned)
        self._learned: OrderedDict[tuple[str, str], None] = OrderedDict()
        self._since: dict[str, float] = {}  # server -> frame time its learning began
        self.exfil = DnsExfilDetector(config.policy.exfil)
        self.upload = UploadDetector(config.policy.upload_max_bytes, config.policy.upload_window_seconds)
        self.reload(config)

    def reload(self, config: Config) -> None:
        """Use a new config; learned destinations and detector windows are kept.
        Raises ConfigError (and keeps the old config) on an invalid entry."""
        validate(config)
        self.config = config
        self._doh_allow = Matcher.parse(config.policy.doh_allow, "policy.doh_allow")
        self._matchers: dict[tuple[str, bool], Matcher] = {}
        self.exfil.configure(config.policy.exfil)
        self.upload.configure(config.policy.upload_max_bytes, config.policy.upload_window_seconds)

    def remember(self, server: str, destination: str, ts: float | None = None) -> None:
        """Seed the learning baseline (e.g. from stored events at start-up);
        ``ts``: when the server was seen then, which starts its learning window."""
        self._learn((server, destination.rstrip(".").lower()))
        if ts is not None:
            self._since[server] = min(ts, self._since.get(server, ts))

    def learning(self, server: str) -> bool:
        """Learning applies to a server without an allowlist, unless overridden."""
        sp = self.config.servers.get(server) or ServerPolicy()
        if sp.learning is not None:
            return sp.learning
        return self.config.policy.learning and not sp.allow

    def _matcher(self, server: str, install: bool) -> Matcher:
        key = (server, install)
        m = self._matchers.get(key)
        if m is None:
            m = self._matchers[key] = _compile(self.config, server, install)
        return m

    def _learn(self, key: tuple[str, str]) -> bool:
        """Record ``key``; True when it was new."""
        if key in self._learned:
            self._learned.move_to_end(key)
            return False
        self._learned[key] = None
        while len(self._learned) > self.max_learned:
            self._learned.popitem(last=False)
        return True

    def judge(
        self, obs: Observation, attr: Attribution, dst_name: str | None, candidates: tuple[str, ...] = ()
    ) -> Verdict:
        """The verdict for one observation. ``candidates``: every name the
        server resolved to the destination of a connection (or hello) without
        SNI; with several, each is judged (see docs/policy.md)."""
        server = attr.server
        if server is None:
            # no process: nobody checked whether it was inside an MCP tree
            return verdict("unattributed" if attr.process is None else "outside_mcp")
        if obs.kind == DNS_ANSWER:
            return verdict("dns_answer")
        if obs.kind == FLOW_SUMMARY:  # bytes sent, allowlisted destination or not
            return self.upload.judge(server, obs, dst_name)
        exfil = None
        if obs.kind == DNS_QUERY:  # always fed, so its windows see every query
            exfil = self.exfil.observe(server, obs.qname, obs.qtype, obs.ts)
            name, ip, port = obs.qname, None, None
        else:
            name, ip, port = obs.sni or dst_name, obs.dst, obs.dport
        shared = () if obs.is_dns or obs.sni or len(candidates) < 2 else candidates
        ech = " (ECH: outer name)" if obs.ech else ""
        doh = doh_dot(obs, dst_name)
        for cand in shared:
            doh = doh or doh_dot(obs, cand)
        if doh and self._doh_allow.match(name, ip, port) is None:
            return verdict("doh_dot", doh)
        if exfil is not None:
            return verdict("dns_exfil", exfil.detail)
        matcher = self._matcher(server, attr.phase == "install")
        if shared:
            return self._judge_shared(server, obs, attr, matcher, shared)
        entry = matcher.match(name, ip, port)
        if entry is not None:
            return verdict("allowlist", entry.describe() + ech)
        if (
            self._resolved is not None
            and (obs.kind == CONNECT or not obs.sni)
            and not obs.is_dns
            and obs.dport != 53
            and not self._resolved(owner_key(obs, attr), obs.dst, obs.ts)
        ):
            where = f"{obs.dst} (ICMP echo)" if obs.kind == ICMP_FLOW else f"{obs.dst}:{obs.dport}"
            return verdict("direct_ip", f"{where} was never resolved by this server")
        dest = (name or ip or "").rstrip(".").lower()
        if attr.phase == "install":
            # install hooks reach the registries (install_allow), nothing else; never learned
            return verdict("install_egress", (dest + ech) if dest else None)
        if self.learning(server) and dest:
            if self._learn((server, dest)):
                since = self._since.setdefault(server, obs.ts)
                if obs.ts - since > self.config.policy.learning_hours * 3600:
                    return verdict("new_destination", dest + ech)  # after its learning window
                return verdict("first_seen", dest + ech)
            return verdict("learned", dest + ech)
        return verdict("not_allowlisted", (dest + ech) if dest else None)

    def _judge_shared(
        self, server: str, obs: Observation, attr: Attribution, matcher: Matcher, names: tuple[str, ...]
    ) -> Verdict:
        """A connection without SNI to an address several resolved names share:
        allowed when an address entry covers it or when every name is allowed;
        else judged as the address, the rule naming every candidate."""
        ip, port = obs.dst, obs.dport
        entry = matcher.match(None, ip, port)
        if entry is not None:
            return verdict("allowlist", entry.describe())
        entries = [matcher.match(n, None, port) for n in names]
        if all(e is not None for e in entries):
            rules = dict.fromkeys(e.describe() for e in entries if e is not None)
            return verdict("allowlist", f"{'; '.join(rules)} (every name of {ip})")
        outside = [n for n, e in zip(names, entries, strict=True) if e is None]
        dest = f"{ip} (one of {', '.join(names)}; not allowlisted: {', '.join(outside)})"
        if attr.phase == "install":
            return verdict("install_egress", dest)
        if self.learning(server):  # the address is what is learned
            seen = f"{ip} (one of {', '.join(names)})"
            known = all((server, n) in self._learned for n in names)
            if not self._learn((server, ip)) or known:
                return verdict("learned", seen)
            since = self._since.setdefault(server, obs.ts)
            if obs.ts - since > self.config.policy.learning_hours * 3600:
                return verdict("new_destination", seen)
            return verdict("first_seen", seen)
        return verdict("not_allowlisted", dest)
