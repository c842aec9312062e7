"""Allowlist suggestions from recorded events: per MCP server, a minimal
allowlist covering what it contacted, never flagged attacks, with notes saying
what was left out and why.

Pure functions over event dicts: the CLI (``egresswatch allowlist suggest``) and
the web view do the database I/O. Imports from catalogs are
:mod:`egresswatch.judge.catalogs`, the TOML output :mod:`egresswatch.judge.allowtoml`.
"""

from __future__ import annotations

import ipaddress
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from egresswatch.config import Config
from egresswatch.judge.entries import Matcher, is_valid_entry
from egresswatch.judge.names import is_ip
from egresswatch.judge.suffixes import registrable_domain

#: at least this many distinct subdomains of one registrable domain collapse to ``*.domain``
COLLAPSE_AT = 3
#: events with these reasons are never suggested: they are attacks, not baseline
# High-severity findings are never proposed for an allowlist: a DNS tunnel, a
# private resolver, a connection to an IP the server never resolved. A user who
# trusts such a destination adds it by hand.
NEVER_SUGGEST = frozenset({"dns_exfil", "doh_dot", "direct_ip"})
#: flagged events that may still be suggested: a destination first seen while learning
LEARNED_REASONS = frozenset({"first_seen"})
#: at most this many flagged destinations are named per server in the notes
FLAGGED_SHOWN = 20

#: server -> notes on its proposal (one line each), shown as TOML comments
Notes = dict[str, list[str]]


def _destination(ev: Mapping[str, Any]) -> str | None:
    kind = ev.get("kind")
    if kind == "dns_query":
        name = ev.get("qname")
    elif kind in ("tls_sni", "quic_sni", "tls_incomplete", "connect"):
        name = ev.get("sni") or ev.get("dst_name") or ev.get("dst")
    else:  # dns_answer and unknown kinds are not egress
        return None
    if not isinstance(name, str) or not name.strip():
        return None
    return name.strip().rstrip(".").lower()


def collapse(destinations: Iterable[str]) -> list[str]:
    """A minimal allowlist for a set of destinations: names with at least
    COLLAPSE_AT distinct subdomains under one registrable domain become
    ``*.domain`` (plus ``domain`` itself if it was contacted); IPs stay IPs."""
    names: set[str] = set()
    ips: set[str] = set()
    for d in destinations:
        (ips if is_ip(d) else names).add(d)
    by_domain: dict[str, set[str]] = defaultdict(set)
    for n in names:
        by_domain[registrable_domain(n)].add(n)
    out: set[str] = set()
    for domain, members in by_domain.items():
        subs = {m for m in members if m != domain}
        if len(subs) >= COLLAPSE_AT:
            out.add(f"*.{domain}")
            if domain in members:
                out.add(domain)
        else:
            out |= members
    out |= {ipaddress.ip_address(i).compressed for i in ips}
    return sorted(out, key=lambda e: (is_ip(e), e.removeprefix("*."), e.startswith("*.")))


def suggest(
    events: Iterable[Mapping[str, Any]],
    server: str | None = None,
    skip: Callable[[str, Mapping[str, Any]], bool] | None = None,
    notes: Notes | None = None,
    existing: Mapping[str, Sequence[str]] | None = None,
    flagged: dict[str, dict[str, set[str]]] | None = None,
) -> dict[str, list[str]]:
    """Per MCP server, a minimal allowlist covering the destinations in
    ``events`` (Event.to_dict() / stored rows). Only events of ``server`` when
    given; never events outside MCP trees, of the install phase (policy.install_allow
    judges those), not deciding their flow (a SYN whose hello named it),
    flagged for any reason but ``first_seen`` (learning), or flagged
    dns_exfil/doh_dot/direct_ip; never destinations for which
    ``skip(dest, event)`` is true (e.g. already in policy.global_allow).

    ``existing`` (server -> its allow entries in the config) is kept as is, first,
    and destinations it already covers are not suggested again. Flagged
    destinations left out are named in ``notes`` (and returned in ``flagged``:
    server -> destination -> reasons). Unusable names (bytes outside host-name
    syntax) are left out and counted in ``notes``. A dict may stand for several
    identical events: its ``count`` key (default 1) is what the notes count."""
    dests: dict[str, set[str]] = defaultdict(set)
    valid: dict[str, bool] = {}
    dropped: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    held: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
    existing = existing or {}
    covers = {srv: Matcher.parse(entries) for srv, entries in existing.items()}
    for ev in events:
        srv = ev.get("server")
        if not isinstance(srv, str) or (server is not None and srv != server):
            continue
        dest = _destination(ev)
        if dest is None:
            continue
        if ev.get("decides") is False:  # a SYN its hello decided: the hello names the flow
            continue
        n = ev.get("count", 1)
        reason = ev.get("reason")
        if reason in NEVER_SUGGEST:
            dropped[srv][f"flagged {reason}"] += n
            continue
        if ev.get("phase") == "install":
            # install hooks are judged by policy.install_allow, not the server's allowlist
            dropped[srv]["install phase"] += n
            continue
        if skip is not None and skip(dest, ev):
            continue
        ok = valid.get(dest)
        if ok is None:
            ok = valid[dest] = is_valid_entry(dest)
        if not ok:  # counted, never echoed: the name is not one an allowlist could hold
            dropped[srv]["not a host name"] += n
            continue
        if ev.get("verdict") == "flagged" and reason not in LEARNED_REASONS:
            held[srv][dest].add(str(reason))
            continue
        m = covers.get(srv)
        if m is not None and _covered(m, dest):
            continue
        dests[srv].add(dest)
    result: dict[str, list[str]] = {}
    for srv in sorted(set(dests) | set(held) | set(dropped)):
        kept = list(dict.fromkeys(existing.get(srv, ())))
        result[srv] = kept + [d for d in collapse(dests.get(srv, ())) if d not in kept]
    if notes is not None:
        for srv in result:
            if existing.get(srv):
                notes.setdefault(srv, []).append(
                    f"the first {len(dict.fromkeys(existing[srv]))} entries are already in the config"
                )
            for why, count in sorted(dropped.get(srv, {}).items()):
                notes.setdefault(srv, []).append(f"left out {count} event(s): {why}")
            names = sorted(held.get(srv, {}))
            for dest in names[:FLAGGED_SHOWN]:
                reasons = ", ".join(sorted(held[srv][dest]))
                notes.setdefault(srv, []).append(
                    f"FLAGGED ({reasons}), NOT SUGGESTED: {dest} -- add it by hand only if you trust it"
                )
            if len(names) > FLAGGED_SHOWN:
                notes.setdefault(srv, []).append(
                    f"FLAGGED, NOT SUGGESTED: {len(names) - FLAGGED_SHOWN} more destination(s)"
                )
    if flagged is not None:
        for srv, by_dest in held.items():
            flagged[srv] = dict(by_dest)
    return dict(sorted(result.items()))


def _covered(m: Matcher, dest: str) -> bool:
    if is_ip(dest):
        return m.match(None, dest, None) is not None
    return m.match(dest, None, None) is not None


def config_existing(cfg: Config) -> dict[str, tuple[str, ...]]:
    """``existing`` for :func:`suggest`: each server's allow entries in the config."""
    return {name: sp.allow for name, sp in cfg.servers.items() if sp.allow}


def config_skipper(cfg: Config) -> Callable[[str, Mapping[str, Any]], bool]:
    """``skip`` for :func:`suggest`: destinations the config's ``policy.global_allow``
    (or, for install-phase events, ``policy.install_allow``) already allows."""
    base = Matcher.parse(cfg.policy.global_allow, "policy.global_allow")
    install = Matcher.parse((*cfg.policy.global_allow, *cfg.policy.install_allow), "policy.install_allow")

    seen: dict[tuple[str, bool], bool] = {}

    def skip(dest: str, ev: Mapping[str, Any]) -> bool:
        key = (dest, ev.get("phase") == "install")
        hit = seen.get(key)
        if hit is None:
            m = install if key[1] else base
            hit = seen[key] = (
                m.match(None, dest, None) if is_ip(dest) else m.match(dest, None, None)
            ) is not None
        return hit

    return skip
