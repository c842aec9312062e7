"""The database's shape: tables, columns, indexes and the migrations that build them.

The only module that imports ``sqlite_utils``: it wraps a connection from
:mod:`egresswatch.store.files` in a :data:`Database`, brings it to the current
schema (:func:`prepare`) and refuses a file whose ``events`` table is not ours
(:func:`check_schema`). Rows are converted in :mod:`egresswatch.store.rows`.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any, TypeAlias

import sqlite_utils

from egresswatch.errors import StoreError

#: The connection wrapper the store uses (``atomic()`` transactions).
Database: TypeAlias = sqlite_utils.Database

# Event.to_dict() fields in their stored order; JSON_FIELDS hold JSON text.
EVENT_FIELDS: tuple[str, ...] = (
    "ts", "frame", "kind", "proto", "src", "sport", "dst", "dport",
    "qname", "qtype", "rcode", "answers", "records", "dns_id",
    "sni", "alpn", "ech", "tls_versions", "quic_version", "note", "dst_name",
    "pid", "process", "exe", "cmdline", "user", "chain", "server", "host", "phase", "attribution",
    "verdict", "reason", "rule", "severity",
    "candidates", "flow_id", "decides",  # migration 0003
    "bytes_out", "bytes_new", "ended",  # migration 0005
)  # fmt: skip
_V1_FIELDS = EVENT_FIELDS[: EVENT_FIELDS.index("candidates")]  # the columns of migration 0001
JSON_FIELDS = frozenset({"answers", "records", "alpn", "tls_versions", "cmdline", "chain", "candidates"})
# Reversed lower-case names so that suffix globs (*.example.com) use an index.
NAME_FIELDS = ("rname", "ralt")
_INT = {"frame", "sport", "dport", "qtype", "rcode", "dns_id", "ech", "quic_version", "pid", "decides",
        "bytes_out", "bytes_new", "ended"}  # fmt: skip
ALERT_FIELDS: tuple[str, ...] = (
    "ts", "recorded", "kind", "server", "host", "destination", "reason", "severity",
    "pid", "process", "count", "targets", "result", "error", "attempts", "title", "body",
)  # fmt: skip
_ALERT_INT = {"pid", "count", "attempts"}
MAX_PENDING = 50_000  # rows kept in memory while the database cannot be written


MIGRATIONS = sqlite_utils.Migrations("egresswatch")


@MIGRATIONS(name="0001_events_alerts")
def _m0001(db: sqlite_utils.Database) -> None:
    cols: dict[str, Any] = {"id": int}
    for f in (*_V1_FIELDS, *NAME_FIELDS):
        cols[f] = float if f == "ts" else int if f in _INT else str
    db.table("events").create(cols, pk="id", not_null={"ts", "kind", "verdict"}, strict=True)
    for idx in (
        ["ts"],
        ["server", "ts"],
        ["verdict", "ts"],
        ["pid", "ts"],
        ["process", "ts"],
        ["rname", "ts"],
    ):
        db.table("events").create_index(idx, f"events_{'_'.join(idx)}")
    db.execute("CREATE INDEX events_ralt_ts ON events(ralt, ts) WHERE ralt IS NOT NULL")
    acols: dict[str, Any] = {"id": int}
    for f in ALERT_FIELDS:
        acols[f] = float if f in ("ts", "recorded") else int if f in _ALERT_INT else str
    db.table("alerts").create(acols, pk="id", not_null={"ts", "kind", "result"}, strict=True)
    db.table("alerts").create_index(["ts"], "alerts_ts")
    db.table("alerts").create_index(["server", "ts"], "alerts_server_ts")


@MIGRATIONS(name="0002_events_server_ts_dest")
def _m0002(db: sqlite_utils.Database) -> None:
    # Covers per-server destination counts in a time range (stats, `egresswatch ui`):
    # one index range per server, no table lookups.
    db.execute(
        "CREATE INDEX IF NOT EXISTS events_server_ts_dest ON events(server, ts, kind, verdict, dst_name, dst)"
    )


@MIGRATIONS(name="0003_flows")
def _m0003(db: sqlite_utils.Database) -> None:
    """One verdict per flow: the events of a flow share ``flow_id``; ``decides``
    marks the one whose verdict is the flow's; ``candidates`` (JSON) the names
    an SNI-less destination address was resolved from. Older rows keep NULLs."""
    db.execute("ALTER TABLE events ADD COLUMN candidates TEXT")
    db.execute("ALTER TABLE events ADD COLUMN flow_id TEXT")
    db.execute("ALTER TABLE events ADD COLUMN decides INTEGER")
    db.execute("CREATE INDEX events_flow_id ON events(flow_id) WHERE flow_id IS NOT NULL")
    # stats and the ui count a flow once (decides): keep their index covering
    db.execute("DROP INDEX IF EXISTS events_server_ts_dest")
    db.execute(
        "CREATE INDEX events_server_ts_dest ON events(server, ts, kind, verdict, dst_name, dst, decides)"
    )


@MIGRATIONS(name="0004_events_flagged")
def _m0004(db: sqlite_utils.Database) -> None:
    # Flagged counts by reason (stats, the servers page): a small partial index,
    # not a table lookup per event of the range.
    db.execute("CREATE INDEX events_flagged ON events(server, ts, reason, decides) WHERE verdict = 'flagged'")


@MIGRATIONS(name="0005_volume")
def _m0005(db: sqlite_utils.Database) -> None:
    """flow_summary events: bytes a flow sent (``bytes_out``), since its previous
    summary (``bytes_new``), whether it ended; their index covers `stats` volumes."""
    for col in ("bytes_out", "bytes_new", "ended"):
        db.execute(f"ALTER TABLE events ADD COLUMN {col} INTEGER")
    db.execute(
        "CREATE INDEX events_volume ON events(server, ts, dst_name, dst, dport, bytes_new)"
        " WHERE kind = 'flow_summary'"
    )


def prepare(conn: sqlite3.Connection, path: Path, readonly: bool) -> Database:
    """``conn`` as a :data:`Database` at the current schema: read-only, checked
    only; otherwise with the store's pragmas (WAL, ``synchronous=NORMAL``) and
    the migrations applied. A one-line StoreError (``conn`` closed) when the
    file cannot be made or is not an egresswatch database."""
    db = sqlite_utils.Database(conn)
    if readonly:
        if not db["events"].exists():
            conn.close()
            raise StoreError(f"{path}: not an egresswatch database (no events table)")
        check_schema(db, path)
        return db
    try:
        if not db["events"].exists():
            conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA cache_size=-32768")  # 32 MiB: index inserts stay in memory
        conn.execute("PRAGMA wal_autocheckpoint=4000")  # fewer, larger checkpoints
        if db["events"].exists() and not db["_sqlite_migrations"].exists():
            check_schema(db, path)  # a table someone else made: say so, not "already exists"
        MIGRATIONS.apply(db)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: cannot prepare database: {exc}") from None
    check_schema(db, path)
    return db


def check_schema(db: Database, path: Path) -> None:
    """Refuse an SQLite file whose ``events`` table is not ours (one line)."""
    try:
        columns = set(db["events"].columns_dict)
    except sqlite3.DatabaseError as exc:
        db.conn.close()
        raise StoreError(f"{path}: not a usable SQLite database ({exc})") from None
    missing = [f for f in ("id", *EVENT_FIELDS, *NAME_FIELDS) if f not in columns]
    if missing:
        ours = db["_sqlite_migrations"].exists()
        db.conn.close()
        lacks = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        if ours:  # an egresswatch database of another version, not yet migrated
            raise StoreError(f"{path}: written by another egresswatch version (events lacks {lacks});"
                             " start the daemon on it once to migrate it")  # fmt: skip
        raise StoreError(f"{path}: not an egresswatch database (its events table lacks {lacks})")
