"""What the pages ask of the event database, over a read-only :class:`Store`.

Per-server destination counts come from :func:`egresswatch.store.stats.stats`, event
search from :func:`egresswatch.store.query.query_events` and the allowlist proposal
from :mod:`egresswatch.judge.allowlist`, so the view says what the CLI says. The SQL
here answers only what those do not: the time buckets of the timeline, the
install-phase split, the alert rows and the "anything new?" probe.
Every query is bounded by a time window and answered from an index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from egresswatch.config import Config
from egresswatch.errors import StoreError
from egresswatch.judge import allowlist
from egresswatch.judge.allowtoml import render_toml
from egresswatch.judge.policy import Policy
from egresswatch.store.db import Store
from egresswatch.store.stats import server_names, stats

OVERVIEW_TOP = 10  # destinations listed per server on the servers page
DEFAULT_WINDOW = 86400.0  # without ?since: the 24 h up to the newest stored event


def open_readonly(path: Any) -> Store:
    """The database, read-only twice over: a ``mode=ro`` connection and
    ``PRAGMA query_only`` (as the desktop notifier does)."""
    store = Store(path, readonly=True)
    try:
        store.execute("PRAGMA query_only=1")
    except StoreError:
        store.close()
        raise
    return store


@dataclass(frozen=True, slots=True)
class Window:
    since: float
    until: float | None
    default: bool  # True: chosen from the newest event, not from the URL


def newest_ts(store: Store) -> float | None:
    row = store.execute("SELECT max(ts) FROM events")
    return row[0][0] if row else None


def window(store: Store, since: float | None, until: float | None, server: str | None = None) -> Window:
    """The URL's window, else the 24 h up to the newest event, starting no
    earlier than the first event (of ``server``), so a short capture fills the timeline."""
    if since is not None:
        return Window(since, until, False)
    end = until if until is not None else newest_ts(store)
    if end is None:
        return Window(0.0, until, True)
    if server is None:
        first = store.execute("SELECT min(ts) FROM events")[0][0]
    else:
        first = store.execute("SELECT min(ts) FROM events WHERE server = ?", (server,))[0][0]
    return Window(max(end - DEFAULT_WINDOW, first if first is not None else end), until, True)


def head(store: Store) -> dict[str, int]:
    """The newest event and alert ids: the live view reloads when they change."""
    e = store.execute("SELECT max(id) FROM events")[0][0]
    a = store.execute("SELECT max(id) FROM alerts")[0][0]
    return {"events": int(e or 0), "alerts": int(a or 0)}


def server_span(store: Store, server: str) -> dict[str, Any]:
    """First and last stored event of a server and its MCP host (from the newest event)."""
    first = store.execute("SELECT min(ts) FROM events WHERE server = ?", (server,))[0][0]
    last = store.execute(
        "SELECT ts, host FROM events WHERE server = ? ORDER BY server DESC, ts DESC LIMIT 1", (server,)
    )
    return {
        "first_seen": first,
        "last_seen": last[0]["ts"] if last else None,
        "host": last[0]["host"] if last else None,
    }


def learning_state(cfg: Config, server: str, first_seen: float | None, now: float) -> dict[str, Any]:
    """How the policy judges this server's new destinations (policy.learning,
    the server's allowlist): ``allowlist``, ``learning`` (until when), ``learned``
    (window over: new destinations are flagged new_destination) or ``off``.
    The window is counted from the first stored event, as the daemon seeds it."""
    sp = cfg.servers.get(server)
    allow = list(sp.allow) if sp else []
    if not Policy(cfg).learning(server):
        return {"state": "allowlist" if allow else "off", "allow": allow, "until": None}
    if first_seen is None:
        return {"state": "learning", "allow": allow, "until": None}
    until = first_seen + cfg.policy.learning_hours * 3600.0
    return {"state": "learning" if now < until else "learned", "allow": allow, "until": until}


def overview(store: Store, cfg: Config, win: Window, now: float) -> list[dict[str, Any]]:
    """Every server with events: query.stats() in the window plus its host, span
    and learning state; servers quiet in the window are listed with zero counts."""
    by_name = {s["server"]: s for s in stats(store, win.since, win.until, top=OVERVIEW_TOP)}
    out = []
    for name in sorted(set(server_names(store)) | set(by_name)):
        s = by_name.get(name) or {
            "server": name, "events": 0, "flagged": 0, "destinations": [], "flagged_by_reason": {},
            "destination_count": 0,
        }  # fmt: skip
        span = server_span(store, name)
        out.append({**s, **span, "learning": learning_state(cfg, name, span["first_seen"], now)})
    return out


def _range(win: Window) -> tuple[str, list[Any]]:
    cond, params = " AND ts >= ?", [win.since]
    if win.until is not None:
        cond += " AND ts < ?"
        params.append(win.until)
    return cond, params


MAX_DESTINATIONS = 300  # rows of a server's destination tables (the rest: event search)


def server_rows(store: Store, server: str, win: Window) -> list[dict[str, Any]]:
    """One pass over a server's events in the window: the distinct (kind, names,
    verdict, reason, phase) with their count and first/last time. The server
    page's destination tables, flagged reasons and allowlist proposal are all
    computed from these rows. A flow counts once, by its deciding event (not
    its provisional SYN: docs/policy.md, one verdict per flow)."""
    cond, params = _range(win)
    rows = store.execute(
        "SELECT kind, qname, sni, dst_name, dst, verdict, reason, phase,"
        " count(*) AS count, min(ts) AS first_seen, max(ts) AS last_seen"
        f" FROM events WHERE server = ? AND (decides IS NULL OR decides = 1){cond}"
        " GROUP BY kind, qname, sni, dst_name, dst, verdict, reason, phase",
        [server, *params],
    )
    return [{"server": server, **{k: r[k] for k in r.keys()}} for r in rows]  # noqa: SIM118


def destinations(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Destinations by phase (``run``, ``install``): events, flagged, flagged
    reasons, first and last seen (DNS answers not counted, as in stats), the
    flagged first; at most MAX_DESTINATIONS each (``more``: how many left out)."""
    acc: dict[tuple[bool, str], dict[str, Any]] = {}
    for r in rows:
        if r["kind"] == "dns_answer":
            continue
        dest = r["dst_name"] or r["dst"]
        key = (r["phase"] == "install", dest)
        d = acc.get(key)
        if d is None:
            d = acc[key] = {"destination": dest, "count": 0, "flagged": 0, "reasons": set(),
                            "first_seen": r["first_seen"], "last_seen": r["last_seen"]}  # fmt: skip
        d["count"] += r["count"]
        if r["verdict"] == "flagged":
            d["flagged"] += r["count"]
            d["reasons"].add(r["reason"])
        d["first_seen"] = min(d["first_seen"], r["first_seen"])
        d["last_seen"] = max(d["last_seen"], r["last_seen"])
    out: dict[str, Any] = {"run": [], "install": [], "more": {"run": 0, "install": 0}}
    for (install, _), d in acc.items():
        d["reasons"] = sorted(d["reasons"])
        out["install" if install else "run"].append(d)
    for phase in ("run", "install"):
        out[phase].sort(key=lambda d: (-d["flagged"], -d["count"], str(d["destination"])))
        out["more"][phase] = max(len(out[phase]) - MAX_DESTINATIONS, 0)
        del out[phase][MAX_DESTINATIONS:]
    return out


def flagged_reasons(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        if r["verdict"] == "flagged":
            counts[r["reason"]] = counts.get(r["reason"], 0) + r["count"]
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def suggestion(rows: list[dict[str, Any]], cfg: Config, server: str) -> str:
    """`egresswatch allowlist suggest --server NAME` over the window, as TOML:
    allowlist.suggest() over the grouped rows, each counting as its events."""
    notes: allowlist.Notes = {}
    result = allowlist.suggest(
        rows, server=server, skip=allowlist.config_skipper(cfg), notes=notes,
        existing=allowlist.config_existing(cfg),
    )  # fmt: skip
    total = sum(r["count"] for r in rows)
    header = f"egresswatch allowlist suggest --server {server}: {total} events"
    return render_toml(result, notes, header)


def timeline(
    store: Store, server: str, win: Window, end: float, buckets: int = 48, top: int = 12
) -> dict[str, Any]:
    """Counts per time bucket: by verdict, and for the ``top`` destinations
    (most events in the window), each with whether any of its events was flagged."""
    width = max((end - win.since) / buckets, 1e-3)
    cond, params = _range(win)
    rows = store.execute(
        f"SELECT CAST((ts - ?) / ? AS INTEGER) AS b, verdict, coalesce(dst_name, dst) AS destination,"
        f" count(*) AS n FROM events WHERE server = ?{cond} AND kind != 'dns_answer'"
        " AND (decides IS NULL OR decides = 1) GROUP BY b, verdict, destination",
        [win.since, width, server, *params],
    )
    by_verdict: dict[str, list[int]] = {}
    per_dest: dict[str, list[int]] = {}
    flagged: set[str] = set()
    for r in rows:
        b = min(max(int(r["b"]), 0), buckets - 1)
        by_verdict.setdefault(r["verdict"], [0] * buckets)[b] += r["n"]
        per_dest.setdefault(r["destination"], [0] * buckets)[b] += r["n"]
        if r["verdict"] == "flagged":
            flagged.add(r["destination"])
    ranked = sorted(per_dest, key=lambda d: (-sum(per_dest[d]), d))[:top]
    return {
        "start": win.since,
        "width": width,
        "buckets": buckets,
        "verdicts": by_verdict,
        "destinations": [(d, d in flagged, per_dest[d]) for d in ranked],
        "others": max(len(per_dest) - top, 0),
    }


def alerts(store: Store, server: str | None, limit: int = 200) -> list[dict[str, Any]]:
    """Alert and digest rows, newest first. What the rules kept back is listed in
    the digest that counted it; ``held`` rows, written by versions before the
    per-server budget (#13), are left out as they were then."""
    where, params = ["result != 'held'"], []
    if server is not None:
        where.append("server = ?")
        params.append(server)
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    rows = store.execute(f"SELECT * FROM alerts{cond} ORDER BY ts DESC, id DESC LIMIT {int(limit)}", params)
    out = []
    for r in rows:
        d = {k: r[k] for k in r.keys()}  # noqa: SIM118 - sqlite3.Row
        try:
            d["targets"] = json.loads(d["targets"]) if d["targets"] else []
        except ValueError:
            d["targets"] = [d["targets"]]
        out.append(d)
    return out
