"""Events <-> stored rows: an Event as the row the store inserts, a stored row as
the dict of ``Event.to_dict()``, and what an event went to (its destination label).
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

from egresswatch.model import (
    DNS_ANSWER,
    DNS_QUERY,
    FLOW_SUMMARY,
    LINKED_KINDS,
    QUIC_SNI,
    TLS_INCOMPLETE,
    TLS_SNI,
    Event,
)
from egresswatch.store.schema import EVENT_FIELDS, JSON_FIELDS, NAME_FIELDS


def event_row(event: Event) -> tuple[Any, ...]:
    """The stored row (EVENT_FIELDS + NAME_FIELDS order) of an event."""
    d = event.to_dict()
    row: list[Any] = []
    for f in EVENT_FIELDS:
        v = d.get(f)
        if f in JSON_FIELDS and v is not None:
            v = json.dumps(v, separators=(",", ":"))
        elif isinstance(v, bool):
            v = int(v)
        row.append(v)
    main = d.get("dst_name") or d.get("qname") or d.get("sni")
    alt = d.get("qname") or d.get("sni")
    rname = main.lower()[::-1] if main else None
    ralt = alt.lower()[::-1] if alt else None
    row.append(rname)
    row.append(ralt if ralt != rname else None)
    return tuple(row)


#: Where a row (of :func:`event_row`) holds the verdict.
VERDICT_AT = EVENT_FIELDS.index("verdict")

#: The statement that inserts one :func:`event_row`.
INSERT_EVENT = "INSERT INTO events ({}) VALUES ({})".format(
    ", ".join(EVENT_FIELDS + NAME_FIELDS), ", ".join("?" * (len(EVENT_FIELDS) + len(NAME_FIELDS)))
)


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
