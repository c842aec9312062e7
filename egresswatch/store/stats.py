"""Per-server counts over the event store: ``egresswatch stats`` and the web view.

Each server is one range of the ``events_server_ts_dest`` index (its flagged
reasons one of the partial ``events_flagged`` index); a flow counts once, by
its deciding event.
"""

from __future__ import annotations

from typing import Any

from egresswatch.store.db import Store


def server_names(store: Store) -> list[str]:
    """Every MCP server with stored events, in name order: one index seek each."""
    names: list[str] = []
    row = store.execute("SELECT min(server) FROM events WHERE server IS NOT NULL")
    while row and row[0][0] is not None:
        names.append(row[0][0])
        row = store.execute("SELECT min(server) FROM events WHERE server > ?", (names[-1],))
    return names


def stats(
    store: Store,
    since: float | None = None,
    until: float | None = None,
    server: str | None = None,
    top: int | None = None,
) -> list[dict[str, Any]]:
    """Per MCP server (or only ``server``): event and flagged counts, destinations
    contacted (count, flagged, first/last seen; DNS answers not counted) and
    flagged events by reason. One index range per server (events_server_ts_dest).
    With ``top``, only the ``top`` most contacted destinations are listed, and
    ``destination_count`` says how many there were (a server that floods random
    names costs one row each, not one dict each). A flow counts once, by its
    deciding event (not its provisional SYN)."""
    where, params = ["server = ?", "(decides IS NULL OR decides = 1)"], []
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    w = " AND ".join(where)
    # the partial index of flagged events (migration 0004), named: without
    # statistics the planner prefers events_verdict_ts and reads every server's
    # flagged rows (a read-only view cannot ANALYZE)
    flagged_idx = " INDEXED BY events_flagged" if _has_index(store, "events_flagged") else ""
    groups = (
        f"SELECT coalesce(dst_name, dst) AS destination, count(*) AS n,"
        f" sum(verdict = 'flagged') AS flagged, min(ts) AS first_seen, max(ts) AS last_seen"
        f" FROM events WHERE {w} AND kind != 'dns_answer' GROUP BY destination"
    )
    if top:  # the totals over every group ride along (window functions): one scan
        sql = (
            "SELECT *, count(*) OVER () AS d, sum(n) OVER () AS total, sum(flagged) OVER () AS total_flagged"
            f" FROM ({groups}) ORDER BY n DESC, destination LIMIT {int(top)}"
        )
    else:
        sql = groups + " ORDER BY n DESC, destination"
    out: list[dict[str, Any]] = []
    for name in [server] if server is not None else server_names(store):
        rows = store.execute(sql, [name, *params])
        reasons = store.execute(
            f"SELECT reason, count(*) AS n FROM events{flagged_idx} WHERE {w} AND verdict = 'flagged'"
            f" GROUP BY reason ORDER BY n DESC, reason",
            [name, *params],
        )
        if not rows and not reasons:
            continue
        dests = [
            {"destination": r["destination"], "count": r["n"], "flagged": r["flagged"],
             "first_seen": r["first_seen"], "last_seen": r["last_seen"]}
            for r in rows
        ]  # fmt: skip
        entry: dict[str, Any] = {
            "server": name,
            "events": sum(d["count"] for d in dests),
            "flagged": sum(d["flagged"] for d in dests),
            "destinations": dests,
            "flagged_by_reason": {r["reason"]: r["n"] for r in reasons},
        }
        if top:
            first = rows[0] if rows else None
            entry.update(
                events=first["total"] if first else 0,
                flagged=first["total_flagged"] if first else 0,
                destination_count=first["d"] if first else 0,
            )
        out.append(entry)
    return out


def _has_index(store: Store, name: str) -> bool:
    return bool(store.execute("SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = ?", [name]))
