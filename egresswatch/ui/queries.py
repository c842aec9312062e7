"""What the pages ask of the event database, over a read-only :class:`Store`.

Per-server destination counts come from :func:`egresswatch.query.stats`, event
search from :func:`egresswatch.query.query_events` and the allowlist proposal
from :mod:`egresswatch.allowlist`, so the view says what the CLI says. The SQL
here answers only what those do not: the time buckets of the timeline, the
install-phase split, the alert rows and the "anything new?" probe.
Every query is bounded by a time window and answered from an index.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from egresswatch import allowlist
from egresswatch.config import Config
from egresswatch.errors import StoreError
from egresswatch.policy import Policy
from egresswatch.query import query_events, stats
from egresswatch.store import Store

DEFAULT_WINDOW = 86400.0  # without ?since: the 24 h up to the newest stored event
MAX_SUGGEST_EVENTS = 20_000  # events read for the allowlist proposal (newest first)


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


def server_names(store: Store) -> list[str]:
    """Every server with stored events, one index seek per server."""
    names: list[str] = []
    row = store.execute("SELECT min(server) FROM events WHERE server IS NOT NULL")
    while row and row[0][0] is not None:
        names.append(row[0][0])
        row = store.execute("SELECT min(server) FROM events WHERE server > ?", (names[-1],))
    return names


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
    by_name = {s["server"]: s for s in stats(store, win.since, win.until)}
    out = []
    for name in sorted(set(server_names(store)) | set(by_name)):
        s = by_name.get(name) or {
            "server": name, "events": 0, "flagged": 0, "destinations": [], "flagged_by_reason": {}
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


def destinations(store: Store, server: str, win: Window) -> dict[str, list[dict[str, Any]]]:
    """Destinations of one server by phase (``run``, ``install``): events,
    flagged, flagged reasons, first and last seen (DNS answers not counted)."""
    cond, params = _range(win)
    rows = store.execute(
        "SELECT coalesce(phase, 'run') = 'install' AS install, coalesce(dst_name, dst) AS destination,"
        " count(*) AS n, sum(verdict = 'flagged') AS flagged, min(ts) AS first_seen, max(ts) AS last_seen,"
        " json_group_array(DISTINCT CASE WHEN verdict = 'flagged' THEN reason END) AS reasons"
        f" FROM events WHERE server = ?{cond} AND kind != 'dns_answer'"
        " GROUP BY install, destination ORDER BY install, flagged DESC, n DESC, destination",
        [server, *params],
    )
    out: dict[str, list[dict[str, Any]]] = {"run": [], "install": []}
    for r in rows:
        reasons = sorted(x for x in json.loads(r["reasons"]) if x)
        out["install" if r["install"] else "run"].append(
            {"destination": r["destination"], "count": r["n"], "flagged": r["flagged"],
             "reasons": reasons, "first_seen": r["first_seen"], "last_seen": r["last_seen"]}
        )  # fmt: skip
    return out


def flagged_reasons(store: Store, server: str, win: Window) -> dict[str, int]:
    cond, params = _range(win)
    rows = store.execute(
        f"SELECT reason, count(*) AS n FROM events WHERE server = ?{cond} AND verdict = 'flagged'"
        " GROUP BY reason ORDER BY n DESC, reason",
        [server, *params],
    )
    return {r["reason"]: r["n"] for r in rows}


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
        " GROUP BY b, verdict, destination",
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


def suggestion(store: Store, cfg: Config, server: str, win: Window) -> str:
    """`egresswatch allowlist suggest --server NAME` over the window, as TOML."""
    events = query_events(store, since=win.since, until=win.until, server=server, limit=MAX_SUGGEST_EVENTS)
    notes: allowlist.Notes = {}
    result = allowlist.suggest(events, server=server, skip=allowlist.config_skipper(cfg), notes=notes)
    header = f"egresswatch allowlist suggest --server {server}: {len(events)} events"
    if len(events) >= MAX_SUGGEST_EVENTS:
        header += f" (the newest {MAX_SUGGEST_EVENTS}; narrow the window for all)"
    return allowlist.render_toml(result, notes, header)


def alerts(store: Store, server: str | None, held: bool = False, limit: int = 200) -> list[dict[str, Any]]:
    """Alert and digest rows, newest first; rows ``held`` back inside an alert's
    window (each is also counted in the window's digest) only when asked."""
    where, params = [], []
    if server is not None:
        where.append("server = ?")
        params.append(server)
    if not held:
        where.append("result != 'held'")
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
