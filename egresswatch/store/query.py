"""Event search: the ``egresswatch events`` filters (time, server, process,
domain glob, verdict, kind; one row per flow) and their time arguments.

Rows come back as the dicts of ``Event.to_dict()`` (same keys, same order, the
kind-specific keys only for their kinds) with the row ``id`` first
(:func:`egresswatch.store.rows.row_to_dict`).
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from egresswatch.store.db import Store
from egresswatch.store.domains import domain_condition, domain_conditions
from egresswatch.store.rows import row_to_dict
from egresswatch.textsafe import safe

_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_REL = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_EPOCH = re.compile(r"^\s*\d+(?:\.\d+)?\s*$")


def parse_time(text: str, now: float) -> float:
    """``2h``/``30m``/``7d``/``45s``/``1w`` ago, an ISO-8601 time (local time when it
    has no offset) or epoch seconds -> epoch seconds. ValueError (one line) otherwise."""
    m = _REL.match(text)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2).lower()]
    if _EPOCH.match(text):
        return float(text)
    try:
        dt = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(
            f"cannot parse time {safe(text)!r}: use 2h, 30m, 7d, an ISO-8601 time or epoch seconds"
        ) from None
    if dt.tzinfo is None:
        dt = dt.astimezone()
    return dt.timestamp()


def query_events(
    store: Store,
    since: float | None = None,
    until: float | None = None,
    server: str | None = None,
    pid: int | None = None,
    process: str | None = None,
    domain_glob: str | None = None,
    verdict: str | None = None,
    kind: str | None = None,
    limit: int | None = 50,
    after_id: int | None = None,
    flows: bool = False,
) -> list[dict[str, Any]]:
    """Matching events, newest first; with ``after_id`` the rows after that id,
    oldest first (for following new rows). With ``flows``: one row per flow,
    its deciding event (filters apply to it), with ``flow_kinds``, the kinds
    of the flow's records in order."""
    where, params = _where(since, until, server, pid, process, verdict, kind, after_id)
    if flows:
        where.insert(0, _DECIDING)
    order = " ORDER BY id ASC" if after_id is not None else " ORDER BY ts DESC, id DESC"
    lim = f" LIMIT {int(limit)}" if limit is not None and limit > 0 else ""
    if domain_glob and lim:
        # One branch per name column, each answered from its (name, ts) index,
        # then only the rows that will be shown are read.
        branches, bparams = [], []
        for c, p in domain_conditions(domain_glob):
            branches.append("SELECT id, ts FROM events WHERE " + " AND ".join([*where, c]))
            bparams += params + p
        sql = f"SELECT * FROM events WHERE id IN (SELECT id FROM ({' UNION '.join(branches)}){order}{lim}){order}"
        params = bparams
    else:
        if domain_glob:
            c, p = domain_condition(domain_glob)
            where.append(c)
            params += p
        cond = (" WHERE " + " AND ".join(where)) if where else ""
        sql = f"SELECT * FROM events{cond}{order}{lim}"
    rows = [row_to_dict(r) for r in store.execute(sql, params)]
    if flows and rows:
        ids = list(dict.fromkeys(r["flow_id"] for r in rows))
        kinds: dict[str, list[str]] = {}
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            for r in store.execute(
                f"SELECT flow_id, kind FROM events WHERE flow_id IN ({', '.join('?' * len(part))}) ORDER BY id",
                part,
            ):
                kinds.setdefault(r["flow_id"], []).append(r["kind"])
        for row in rows:
            row["flow_kinds"] = kinds.get(row["flow_id"], [])
    return rows


# The latest deciding event of its flow (an escalation after an allowed
# decision is a later deciding event of the same flow).
_DECIDING = (
    "flow_id IS NOT NULL AND decides = 1 AND NOT EXISTS (SELECT 1 FROM events later"
    " WHERE later.flow_id = events.flow_id AND later.decides = 1 AND later.id > events.id)"
)


def _where(
    since: float | None,
    until: float | None,
    server: str | None,
    pid: int | None,
    process: str | None,
    verdict: str | None,
    kind: str | None,
    after_id: int | None = None,
) -> tuple[list[str], list[Any]]:
    where: list[str] = []
    params: list[Any] = []
    for col, op, val in (
        ("ts", ">=", since),
        ("ts", "<", until),
        ("server", "=", server),
        ("pid", "=", pid),
        ("process", "=", process),
        ("verdict", "=", verdict),
        ("kind", "=", kind),
        ("id", ">", after_id),
    ):
        if val is not None:
            where.append(f"{col} {op} ?")
            params.append(val)
    return where, params


def count_events(
    store: Store,
    since: float | None = None,
    until: float | None = None,
    server: str | None = None,
    pid: int | None = None,
    process: str | None = None,
    domain_glob: str | None = None,
    verdict: str | None = None,
    kind: str | None = None,
) -> int:
    """How many events :func:`query_events` would return without a limit."""
    where, params = _where(since, until, server, pid, process, verdict, kind)
    if domain_glob:
        c, p = domain_condition(domain_glob)
        where.append(c)
        params += p
    cond = (" WHERE " + " AND ".join(where)) if where else ""
    return int(store.execute(f"SELECT count(*) FROM events{cond}", params)[0][0])
