"""Queries over the event store: ``egresswatch events`` filters and ``stats``.

Rows come back as the dicts of ``Event.to_dict()`` (same keys, same order, the
kind-specific keys only for their kinds) with the row ``id`` first.
"""

from __future__ import annotations

import json
import re
import sqlite3
from datetime import datetime
from typing import Any

from egresswatch.model import (
    DNS_ANSWER,
    DNS_QUERY,
    FLOW_SUMMARY,
    LINKED_KINDS,
    QUIC_SNI,
    TLS_INCOMPLETE,
    TLS_SNI,
)
from egresswatch.store.db import JSON_FIELDS, Store
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


def _glob_tokens(pattern: str) -> list[str]:
    """Split a GLOB pattern into literal characters, ``*``, ``?`` and ``[...]`` classes."""
    toks: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        c = pattern[i]
        if c == "[":
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            if j < n and pattern[j] == "]":
                j += 1
            k = pattern.find("]", j)
            k = n - 1 if k < 0 else k
            toks.append(pattern[i : k + 1])
            i = k + 1
        else:
            toks.append(c)
            i += 1
    return toks


def domain_forms(pattern: str) -> list[str]:
    """``pattern`` and the other spellings of the same name as names are stored:
    a Unicode label as IDNA (``xn--...``) and as its UTF-8 bytes in ``\\DDD``
    form; an ``xn--`` label as the ``\\DDD`` form of its Unicode. Glob labels
    (``*``) stay as they are."""
    from encodings import idna

    from egresswatch.decode.dns import presentation

    labels = pattern.split(".")
    ascii_form, byte_form = [], []
    for label in labels:
        if any(c in label for c in "*?["):
            ascii_form.append(label)
            byte_form.append(label)
            continue
        try:
            if not label.isascii():
                ascii_form.append(idna.ToASCII(label).decode("ascii"))
                byte_form.append(presentation(label.lower().encode("utf-8")))
                continue
            if label.lower().startswith("xn--"):
                ascii_form.append(label)
                byte_form.append(presentation(idna.ToUnicode(label).encode("utf-8")))
                continue
        except UnicodeError:
            pass
        ascii_form.append(label)
        byte_form.append(label)
    return list(dict.fromkeys([pattern, ".".join(ascii_form), ".".join(byte_form)]))


def domain_conditions(pattern: str) -> list[tuple[str, list[Any]]]:
    """SQL conditions, one per name column (rname, ralt) and spelling of the
    name (:func:`domain_forms`), matching ``pattern`` (GLOB, case-insensitive)
    against dst_name, qname or sni. Names are stored reversed, so a suffix
    pattern becomes an index range."""
    out: list[tuple[str, list[Any]]] = []
    for form in domain_forms(pattern):
        out += _conditions(form)
    return out


def _conditions(pattern: str) -> list[tuple[str, list[Any]]]:
    toks = _glob_tokens(pattern.lower())
    rev = "".join(reversed(toks))
    prefix = ""
    for t in reversed(toks):
        if t in ("*", "?") or t.startswith("["):
            break
        prefix += t
    out: list[tuple[str, list[Any]]] = []
    for col in ("rname", "ralt"):
        if prefix and ord(prefix[-1]) < 0x10FFFF:
            hi = prefix[:-1] + chr(ord(prefix[-1]) + 1)
            out.append((f"({col} >= ? AND {col} < ? AND {col} GLOB ?)", [prefix, hi, rev]))
        else:
            out.append((f"{col} GLOB ?", [rev]))
    return out


def domain_condition(pattern: str) -> tuple[str, list[Any]]:
    """One SQL condition: any of :func:`domain_conditions`."""
    conds = domain_conditions(pattern)
    return "(" + " OR ".join(c for c, _ in conds) + ")", [p for _, ps in conds for p in ps]


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


def _json(v: Any) -> Any:
    if v is None:
        return None
    try:
        return json.loads(v)
    except (TypeError, ValueError):
        return v


def row_to_dict(row: sqlite3.Row) -> dict[str, Any]:
    """A stored row -> the Event.to_dict() shape, with ``id`` first."""
    r = {k: row[k] for k in row.keys()}  # noqa: SIM118 - sqlite3.Row
    for f in JSON_FIELDS:
        if f in r:
            r[f] = _json(r[f])
    d: dict[str, Any] = {"id": r["id"]}
    for f in ("ts", "frame", "kind", "proto", "src", "sport", "dst", "dport"):
        d[f] = r[f]
    kind = r["kind"]
    if kind in (DNS_QUERY, DNS_ANSWER):
        for f in ("qname", "qtype", "rcode"):
            d[f] = r[f]
        d["answers"] = r["answers"] if r["answers"] is not None else []
        d["dns_id"] = r["dns_id"]
        if kind == DNS_ANSWER:
            d["records"] = r["records"] if r["records"] is not None else []
    elif kind in (TLS_SNI, QUIC_SNI, TLS_INCOMPLETE):
        d["sni"] = r["sni"]
        d["alpn"] = r["alpn"] if r["alpn"] is not None else []
        d["ech"] = bool(r["ech"])
        d["tls_versions"] = r["tls_versions"] if r["tls_versions"] is not None else []
        if kind == QUIC_SNI:
            d["quic_version"] = r["quic_version"]
    elif kind == FLOW_SUMMARY:
        for f in ("bytes_out", "bytes_new"):
            d[f] = r.get(f)
        d["ended"] = bool(r.get("ended"))
    if r["note"] is not None:
        d["note"] = r["note"]
    d["dst_name"] = r["dst_name"]
    if kind in LINKED_KINDS:
        d["candidates"] = r.get("candidates") or []
        d["flow_id"] = r.get("flow_id")
        d["decides"] = r.get("decides") is None or bool(r["decides"])  # rows before flows: each decided
    for f in ("pid", "process", "exe", "cmdline", "user"):
        d[f] = r[f]
    d["chain"] = r["chain"] if r["chain"] is not None else []
    for f in ("server", "host", "phase", "attribution", "verdict", "reason", "rule", "severity"):
        d[f] = r[f]
    return d


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


def destination(d: dict[str, Any]) -> str:
    """What an event went to: the name (with the port for connections), or the address."""
    name = d.get("dst_name") or d.get("qname") or d.get("sni") or " | ".join(d.get("candidates") or ())
    kind = d.get("kind")
    if kind in ("dns_query", "dns_answer"):
        return f"{name or '-'}" + (f" (type {d['qtype']})" if d.get("qtype") is not None else "")
    addr = d.get("dst") or "-"
    port = d.get("dport")
    where = f"[{addr}]:{port}" if ":" in str(addr) else f"{addr}:{port}"
    return f"{name} ({where})" if name else where
