"""Upload volume per MCP server and destination, from stored ``flow_summary`` events.

Each summary carries the bytes its flow sent since the flow's previous summary
(``bytes_new``), so their sum is what went out whatever the flows' lengths.
One index range per server (``events_volume``, migration 0005).
"""

from __future__ import annotations

from typing import Any

from egresswatch.store.db import Store


def upload_volume(
    store: Store, since: float | None = None, until: float | None = None, server: str | None = None
) -> dict[str, list[dict[str, Any]]]:
    """server -> destinations sorted by bytes sent (most first): ``destination``
    (the flow's name, else its address), ``bytes_out`` (sent within the period),
    ``flows``, ``largest_flow`` (the most one flow had sent), ``flagged``
    (summaries flagged ``upload``), ``first_seen``/``last_seen``."""
    where: list[str] = ["kind = 'flow_summary'", "server IS NOT NULL"]
    params: list[Any] = []
    if server is not None:
        where.append("server = ?")
        params.append(server)
    if since is not None:
        where.append("ts >= ?")
        params.append(since)
    if until is not None:
        where.append("ts < ?")
        params.append(until)
    rows = store.execute(
        "SELECT server, coalesce(dst_name, dst) AS destination, coalesce(sum(bytes_new), 0) AS sent,"
        " count(DISTINCT coalesce(flow_id, proto || ' ' || src || ' ' || sport || ' ' || dst || ' ' || dport))"
        " AS flows, max(bytes_out) AS largest, sum(verdict = 'flagged') AS flagged,"
        " min(ts) AS first_seen, max(ts) AS last_seen"
        f" FROM events WHERE {' AND '.join(where)}"
        " GROUP BY server, destination ORDER BY server, sent DESC, destination",
        params,
    )
    out: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        out.setdefault(r["server"], []).append(
            {"destination": r["destination"], "bytes_out": r["sent"], "flows": r["flows"],
             "largest_flow": r["largest"] or 0, "flagged": r["flagged"] or 0,
             "first_seen": r["first_seen"], "last_seen": r["last_seen"]}
        )  # fmt: skip
    return out


def add_volumes(
    stats: list[dict[str, Any]], store: Store, since: float | None = None, until: float | None = None
) -> list[dict[str, Any]]:
    """``stats`` (query.stats()) with each server's ``bytes_out`` (total sent),
    ``uploads`` (upload_volume's list) and each destination's ``bytes_out``."""
    volumes = upload_volume(store, since, until)
    for entry in stats:
        ups = volumes.get(entry["server"], [])
        sent = {u["destination"]: u["bytes_out"] for u in ups}
        entry["bytes_out"] = sum(sent.values())
        entry["uploads"] = ups
        for d in entry["destinations"]:
            d["bytes_out"] = sent.get(d["destination"], 0)
    return stats
