"""SQLite event store: schema and migrations, batched writes, retention, permissions.

The only module that imports ``sqlite_utils``. One :class:`Store` owns one
connection (WAL, ``synchronous=NORMAL``) guarded by a lock, so the pipeline
thread can write while a service thread calls :meth:`Store.prune` between
batches. The alert worker writes through its own connection
(:class:`AlertLog`). Queries live in :mod:`egresswatch.store.query`.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import sqlite3
import stat
import threading
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import sqlite_utils

from egresswatch.config import RetentionConfig
from egresswatch.errors import StoreError, permission_hint
from egresswatch.model import Event
from egresswatch.safefiles import trust_problems

log = logging.getLogger(__name__)

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


_VERDICT = EVENT_FIELDS.index("verdict")

_INSERT_EVENT = "INSERT INTO events ({}) VALUES ({})".format(
    ", ".join(EVENT_FIELDS + NAME_FIELDS), ", ".join("?" * (len(EVENT_FIELDS) + len(NAME_FIELDS)))
)


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted_by_age: int = 0
    deleted_by_size: int = 0
    alerts_deleted: int = 0
    chunks: int = 0
    seconds: float = 0.0
    size_bytes: int = 0
    longest_step: float = 0.0  # seconds the writer could have waited for the lock


def _connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise StoreError(f"{path}: no such database")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError) or "not a database" in str(exc):
                raise StoreError(f"{path}: not a usable SQLite database ({exc})") from None
            # WAL database with no -shm/-wal and a directory we cannot write:
            # the writer is not running, so an immutable read is consistent.
            if Path(f"{path}-wal").exists():
                raise StoreError(f"{path}: cannot open the database read-only") from None
            try:
                conn = sqlite3.connect(
                    uri + "&immutable=1", uri=True, check_same_thread=False, isolation_level=None
                )
            except sqlite3.Error as exc2:
                raise StoreError(f"{path}: cannot open the database read-only: {exc2}") from None
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: not a usable SQLite database ({exc})") from None
    return conn


def _check_path(path: Path, readonly: bool) -> None:
    """Refuse, in one line, a database path that cannot work: a directory, a
    path under a regular file, a file in /proc or /sys, no permission."""
    if path.absolute().resolve().parts[1:2] in (("proc",), ("sys",), ("dev",)):
        raise StoreError(f"{path}: a kernel file system is no place for a database")
    for parent in path.absolute().parents:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{path}: {parent} is not a directory")
        break
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if readonly:
            raise StoreError(f"{path}: no such database") from None
        return
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: not a regular file")
    if readonly and not os.access(path, os.R_OK):
        raise PermissionError(13, "Permission denied", str(path))
    if not readonly and os.statvfs(path).f_flag & os.ST_RDONLY:
        raise StoreError(f"{path}: on a read-only file system")
    if not readonly and not os.access(path, os.R_OK | os.W_OK):
        raise PermissionError(13, "Permission denied", str(path))


def make_db_dir(path: Path, group: str | None) -> int:
    """Create the database's directory (0750, group ``group``) if missing; the group id or -1."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StoreError(f"daemon.db_group: no such group {group!r}") from None
    if not path.parent.exists():
        os.makedirs(path.parent, mode=0o750, exist_ok=True)
        os.chmod(path.parent, 0o750)
        if gid >= 0 and os.geteuid() == 0:
            _chown(path.parent, None, gid)
    return gid


def _create_file(path: Path, group: str | None) -> None:
    """Create the database directory and file with restrictive modes; an
    existing root-owned database is given ``group`` (when it was created
    before the group was configured, or a start failed half-way)."""
    gid = make_db_dir(path, group)
    if path.exists():
        if gid >= 0 and os.geteuid() == 0:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_gid != gid:
                    _chown(path, fd, gid)
                    os.fchmod(fd, 0o640)
            finally:
                os.close(fd)
        return
    mode = 0o640 if gid >= 0 else 0o600
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        if gid >= 0 and os.geteuid() == 0:
            _chown(path, fd, gid)
    finally:
        os.close(fd)


def _chown(path: Path, fd: int | None, gid: int) -> None:
    """Give ``path`` (or the open ``fd``) to root:gid; EPERM (no CAP_CHOWN, or a
    system call filter without the chown calls) is a one-line StoreError."""
    try:
        if fd is not None:
            os.fchown(fd, 0, gid)
        else:
            os.chown(path, 0, gid, follow_symlinks=False)
    except PermissionError as exc:
        raise StoreError(
            f"{path}: cannot give it to daemon.db_group (gid {gid}): {exc.strerror} "
            "(needs CAP_CHOWN and the chown system calls)"
        ) from None


def _match_sidecars(path: Path) -> None:
    """Give -wal/-shm the owner/group/mode of the database file (SQLite usually does)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        try:
            sst = os.lstat(side)
        except OSError:
            continue
        if not stat.S_ISREG(sst.st_mode) or sst.st_uid != os.geteuid():
            continue
        if stat.S_IMODE(sst.st_mode) != stat.S_IMODE(st.st_mode):
            os.chmod(side, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0 and (sst.st_uid, sst.st_gid) != (st.st_uid, st.st_gid):
            os.chown(side, st.st_uid, st.st_gid)


def _remove_stale_sidecars(path: Path) -> None:
    """-wal/-shm left by the deleted database (another connection still had it
    open) must not be replayed into the new one."""
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        try:
            st = os.lstat(side)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            os.unlink(side)


def check_permissions(path: Path | str) -> list[str]:
    """Problems that let a user other than root (or the owner running us) change
    the database: the checks of :func:`egresswatch.safefiles.trust_problems` on
    the file and its directories, and on the -wal/-shm files beside it."""
    path = Path(path)
    problems = trust_problems(path)
    for p in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{p}: cannot stat: {exc.strerror}")
            continue
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{p}: is a symbolic link")
            continue
        if st.st_uid not in (0, os.geteuid()):
            problems.append(f"{p}: owned by uid {st.st_uid}, not root")
        if st.st_mode & 0o022:
            problems.append(f"{p}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
    return problems


class Store:
    """The event database. Implements the pipeline Sink protocol."""

    def __init__(
        self,
        path: Path | str,
        *,
        readonly: bool = False,
        group: str | None = None,
        batch_size: int = 500,
        flush_interval: float = 1.0,
        retention: RetentionConfig | None = None,
        max_pending: int = MAX_PENDING,
    ) -> None:
        self.path = Path(path)
        self.max_pending = max(batch_size, max_pending)
        self.readonly = readonly
        self.batch_size = max(1, batch_size)
        self.flush_interval = flush_interval
        self.retention = retention or RetentionConfig()
        self.counters: Counter[str] = Counter()
        self._lock = threading.RLock()
        self._pending: list[tuple[Any, ...]] = []
        self._last_flush_ts: float | None = None
        self._closed = False
        self._longest = 0.0
        self._failing = False
        self._disk_full = False
        self._dropped_at_failure = 0
        self.group = group
        self.problem: str | None = None  # why writes fail right now (status health)
        self._identity: tuple[int, int] | None = None
        self._lost: str | None = None
        self.db = self._open()

    def _open(self) -> sqlite_utils.Database:
        try:
            _check_path(self.path, self.readonly)
            if not self.readonly:
                _create_file(self.path, self.group)
            conn = _connect(self.path, self.readonly)
        except PermissionError:
            raise StoreError(f"{self.path}: permission denied{permission_hint(database=True)}") from None
        except OSError as exc:
            raise StoreError(f"{exc.filename or self.path}: {exc.strerror or exc}") from None
        db = sqlite_utils.Database(conn)
        if self.readonly:
            if not db["events"].exists():
                conn.close()
                raise StoreError(f"{self.path}: not an egresswatch database (no events table)")
            self._check_schema(db)
            return db
        try:
            if not db["events"].exists():
                conn.execute("PRAGMA auto_vacuum=INCREMENTAL")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-32768")  # 32 MiB: index inserts stay in memory
            conn.execute("PRAGMA wal_autocheckpoint=4000")  # fewer, larger checkpoints
            if db["events"].exists() and not db["_sqlite_migrations"].exists():
                self._check_schema(db)  # a table someone else made: say so, not "already exists"
            MIGRATIONS.apply(db)
            st = os.stat(self.path)
        except (sqlite3.DatabaseError, OSError) as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot prepare database: {exc}") from None
        self._check_schema(db)
        self._identity = (st.st_dev, st.st_ino)
        _match_sidecars(self.path)
        return db

    def file_problem(self) -> str | None:
        """Why the database path no longer names the file being written
        (deleted, replaced, turned into a symlink), or None."""
        if self.readonly or self._identity is None:
            return None
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            return "deleted"
        except OSError as exc:
            return f"cannot stat: {exc.strerror}"
        if stat.S_ISLNK(st.st_mode):
            return "replaced by a symbolic link"
        if (st.st_dev, st.st_ino) != self._identity:
            return "replaced by another file"
        return None

    def _reopen_if_moved(self) -> bool:
        """Called with the lock held before each batch: if the database file was
        deleted or replaced, open (or create) the file now at the path, never
        through a symlink or a file another user could write. False when the
        path cannot be used (rows stay pending). Logged once per incident."""
        problem = self.file_problem()
        if problem is None:
            return True
        first = self._lost != problem
        if first:
            self._lost = problem
            self.counters["db_file_lost"] += 1
        try:
            problems = check_permissions(self.path)
            if problems:
                raise StoreError(f"refusing to open a new one: {problems[0]}")
            self.db.conn.close()  # checkpoints into the old file; its -wal goes with it
            if problem == "deleted":
                _remove_stale_sidecars(self.path)
            self.db = self._open()
        except (StoreError, OSError) as exc:
            self.problem = f"database {self.path} was {problem}; {exc}"
            if first:
                log.error("%s", self.problem)
                self.counters["write_errors"] += 1
            self._failing = True
            return False
        log.error("database %s was %s; opened a new one there", self.path, problem)
        self.counters["db_reopened"] += 1
        self._lost = self.problem = None
        self._failing = False
        return True

    def _check_schema(self, db: sqlite_utils.Database) -> None:
        """Refuse an SQLite file whose ``events`` table is not ours (one line)."""
        try:
            columns = set(db["events"].columns_dict)
        except sqlite3.DatabaseError as exc:
            db.conn.close()
            raise StoreError(f"{self.path}: not a usable SQLite database ({exc})") from None
        missing = [f for f in ("id", *EVENT_FIELDS, *NAME_FIELDS) if f not in columns]
        if missing:
            ours = db["_sqlite_migrations"].exists()
            db.conn.close()
            lacks = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
            if ours:  # an egresswatch database of another version, not yet migrated
                raise StoreError(f"{self.path}: written by another egresswatch version (events lacks {lacks});"
                                 " start the daemon on it once to migrate it")  # fmt: skip
            raise StoreError(f"{self.path}: not an egresswatch database (its events table lacks {lacks})")

    @property
    def conn(self) -> sqlite3.Connection:
        return self.db.conn

    # -- writing -----------------------------------------------------------
    def write(self, event: Event) -> None:
        if self.readonly or self._closed:
            raise StoreError(f"{self.path}: opened read-only" if self.readonly else f"{self.path}: closed")
        row = event_row(event)
        with self._lock:
            self._pending.append(row)
        if self._failing:  # retried by the next flush() call (housekeeping), not per event
            return
        ts = event.obs.ts
        if self._last_flush_ts is None:
            self._last_flush_ts = ts
        if len(self._pending) >= self.batch_size or abs(ts - self._last_flush_ts) >= self.flush_interval:
            self._last_flush_ts = ts
            self.flush()

    def write_many(self, events: Sequence[Event]) -> None:
        for e in events:
            self.write(e)

    @property
    def disk_full(self) -> bool:
        """The last write failed because the file system (or the database) is full."""
        return self._disk_full

    def flush(self) -> None:
        """Write pending events in one transaction. A failure is logged once per
        streak of failures and counted; the rows are kept and retried by the next
        flush (the daemon's housekeeping), first one batch alone and, when that
        commits, the rest, so a full disk costs one small attempt per flush. At
        most ``max_pending`` rows are kept: past that the oldest events outside
        MCP trees (``unwatched``) are dropped first, then the oldest others, all
        counted in ``events_dropped``."""
        if self.readonly or self._closed:
            return
        with self._lock:
            if not self._pending or not self._reopen_if_moved():
                self._drop_excess()
                return
            rows, self._pending = self._pending, []
            done = 0
            step = self.batch_size if self._failing else len(rows)  # probe with one batch first
            while done < len(rows):
                chunk = rows[done : done + step]
                try:
                    with self.db.atomic():
                        self.conn.executemany(_INSERT_EVENT, chunk)
                except sqlite3.Error as exc:
                    self._failed(exc, rows[done:])
                    return
                done += len(chunk)
                step = len(rows)
                self.counters["events_written"] += len(chunk)
            if self._failing:
                self._failing = self._disk_full = False
                self.problem = None
                dropped = self.counters["events_dropped"] - self._dropped_at_failure
                log.warning("writing to %s works again (%d events dropped meanwhile)", self.path, dropped)

    def _failed(self, exc: sqlite3.Error, rows: list[tuple[Any, ...]]) -> None:
        self.counters["write_errors"] += 1
        full = getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL
        self.problem = f"cannot write events to {self.path}: {exc}"
        if not self._failing:  # once per failure streak, not once per batch
            self._dropped_at_failure = self.counters["events_dropped"]
            keeping = (
                f"; keeping up to {self.max_pending} events in memory until there is space" if full else ""
            )
            log.error("cannot write %d events to %s: %s%s", len(rows), self.path, exc, keeping)
        self._failing = True
        self._disk_full = full
        rows.extend(self._pending)
        self._pending = rows
        self._drop_excess()

    def _drop_excess(self) -> None:
        """While writes fail, keep at most ``max_pending`` rows: drop (and count)
        the oldest unwatched events first, then the oldest others."""
        over = len(self._pending) - self.max_pending
        if over <= 0:
            return
        drop: set[int] = set()
        for i, r in enumerate(self._pending):
            if len(drop) == over:
                break
            if r[_VERDICT] == "unwatched":
                drop.add(i)
        kept = [r for i, r in enumerate(self._pending) if i not in drop]
        del kept[: max(0, len(kept) - self.max_pending)]
        self.counters["events_dropped"] += len(self._pending) - len(kept)
        self._pending = kept

    @property
    def pending(self) -> int:
        """Rows waiting for the next batch (they pile up while writes fail)."""
        return len(self._pending)

    def check_file(self) -> str | None:
        """Reopen the database if its file was deleted or replaced (see flush);
        the problem that remains, or None."""
        if self.readonly or self._closed:
            return None
        with self._lock:
            self._reopen_if_moved()
            problem = self.file_problem()
        return f"database {self.path} was {problem}" if problem else None

    def close(self) -> None:
        if self._closed:
            return
        self.flush()
        with self._lock:
            self._closed = True
            self.conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- reading (used by egresswatch.store.query) ---------------------------------
    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchall()
            except (sqlite3.DatabaseError, sqlite3.ProgrammingError) as exc:
                raise StoreError(f"{self.path}: query failed: {exc}") from None

    def alert_log(self) -> AlertLog:
        """A separate connection for the alert worker thread (call it in that thread)."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        return AlertLog(self.path)

    # -- retention -----------------------------------------------------------
    def size_bytes(self) -> int:
        """Bytes in use by the database pages (the file minus its free pages)."""
        with self._lock:
            pc = self.conn.execute("PRAGMA page_count").fetchone()[0]
            fl = self.conn.execute("PRAGMA freelist_count").fetchone()[0]
            ps = self.conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pc - fl) * ps)

    def prune(self, now_ts: float, *, chunk: int = 500, max_chunks: int = 2000) -> PruneResult:
        """Delete events (and alerts) older than ``retention.max_age_days``, then the
        oldest events while the data exceeds ``retention.max_size_mb``. Each chunk
        is its own short transaction, so writers wait at most one chunk."""
        if self.readonly:
            raise StoreError(f"{self.path}: opened read-only")
        start = time.monotonic()
        self._longest = 0.0
        cutoff = now_ts - self.retention.max_age_days * 86400.0
        by_age = by_size = alerts = chunks = 0
        while chunks < max_chunks:
            n = self._delete_chunk("events", "ts < ?", (cutoff,), chunk)
            chunks += 1
            by_age += n
            if n < chunk:
                break
        while chunks < max_chunks:
            n = self._delete_chunk("alerts", "ts < ?", (cutoff,), chunk)
            chunks += 1
            alerts += n
            if n < chunk:
                break
        limit = int(self.retention.max_size_mb * 1024 * 1024)
        while chunks < max_chunks and limit > 0 and self.size_bytes() > limit:
            n = self._delete_chunk("events", "1", (), chunk)
            chunks += 1
            by_size += n
            if n == 0:
                break
        if by_age or by_size or alerts:
            self._reclaim(max_chunks)
        self.counters["pruned_age"] += by_age
        self.counters["pruned_size"] += by_size
        return PruneResult(
            by_age, by_size, alerts, chunks, time.monotonic() - start, self.size_bytes(), self._longest
        )

    def _delete_chunk(self, table: str, where: str, params: tuple[Any, ...], n: int) -> int:
        sql = f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} ORDER BY id LIMIT {n})"
        with self._lock, self.db.atomic():
            t = time.monotonic()
            n = self.conn.execute(sql, params).rowcount
        self._longest = max(self._longest, time.monotonic() - t)
        return n

    def _reclaim(self, max_steps: int) -> None:
        """Give free pages back to the file system (auto_vacuum=INCREMENTAL), in steps."""
        for _ in range(max_steps):
            with self._lock:
                if self.conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                    return
                if self.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0:
                    return
                t = time.monotonic()
                self.conn.executescript("PRAGMA incremental_vacuum(256);")  # steps to the end
                self._longest = max(self._longest, time.monotonic() - t)


class AlertLog:
    """Alert rows, through a connection of its own (one per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        return conn

    def _follow(self) -> None:
        """Reconnect when the daemon's Store has opened a new file at the path
        (deleted or replaced database); never to a symlink or a missing file."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) == self._identity:
            return
        try:
            conn = self._connect()
            conn.execute("SELECT 1 FROM alerts LIMIT 1")
        except (sqlite3.Error, OSError):
            return  # not ready yet: the Store creates the table; try at the next alert
        self.conn.close()
        self.conn = conn

    def insert(self, row: dict[str, Any]) -> int | None:
        self._follow()
        cols = [f for f in ALERT_FIELDS if f in row]
        sql = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        try:
            return self.conn.execute(sql, [_alert_value(row[c]) for c in cols]).lastrowid
        except sqlite3.Error as exc:
            log.error("cannot record alert in %s: %s", self.path, exc)
            return None

    def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Several rows in one transaction (held-back and dropped alerts)."""
        self._follow()
        try:
            self.conn.execute("BEGIN")
            for row in rows:
                cols = [f for f in ALERT_FIELDS if f in row]
                sql = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                self.conn.execute(sql, [_alert_value(row[c]) for c in cols])
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.rollback()
            log.error("cannot record %d alerts in %s: %s", len(rows), self.path, exc)

    def update(self, row_id: int, **fields: Any) -> None:
        self._follow()
        cols = [f for f in ALERT_FIELDS if f in fields]
        sql = f"UPDATE alerts SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?"
        try:
            self.conn.execute(sql, [*(_alert_value(fields[c]) for c in cols), row_id])
        except sqlite3.Error as exc:
            log.error("cannot update alert in %s: %s", self.path, exc)

    def close(self) -> None:
        self.conn.close()


def _alert_value(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return json.dumps(list(v))
    return v
