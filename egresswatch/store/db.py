"""The event store: one SQLite database the pipeline writes in batches.

One :class:`Store` owns one connection (WAL, ``synchronous=NORMAL``) guarded
by a lock, so the pipeline thread can write while a service thread calls
:meth:`Store.prune` between batches. It keeps rows in memory while writes fail
and reopens the file when it is deleted or replaced. The alert worker writes
through its own connection (:class:`~egresswatch.store.alertlog.AlertLog`).
The file on disk is :mod:`~egresswatch.store.files`, the schema
:mod:`~egresswatch.store.schema`, retention :mod:`~egresswatch.store.retention`,
queries :mod:`~egresswatch.store.query` and :mod:`~egresswatch.store.stats`.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat
import threading
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from egresswatch.config import RetentionConfig
from egresswatch.errors import StoreError, permission_hint
from egresswatch.model import Event
from egresswatch.store.alertlog import AlertLog
from egresswatch.store.files import (
    check_path,
    check_permissions,
    connect,
    create_file,
    match_sidecars,
    remove_stale_sidecars,
)
from egresswatch.store.retention import Retention
from egresswatch.store.rows import INSERT_EVENT, VERDICT_AT, event_row
from egresswatch.store.schema import Database, prepare

log = logging.getLogger(__name__)

MAX_PENDING = 50_000  # rows kept in memory while the database cannot be written


class Store(Retention):
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

    def _open(self) -> Database:
        try:
            check_path(self.path, self.readonly)
            if not self.readonly:
                create_file(self.path, self.group)
            conn = connect(self.path, self.readonly)
        except PermissionError:
            raise StoreError(f"{self.path}: permission denied{permission_hint(database=True)}") from None
        except OSError as exc:
            raise StoreError(f"{exc.filename or self.path}: {exc.strerror or exc}") from None
        db = prepare(conn, self.path, self.readonly)
        if self.readonly:
            return db
        try:
            st = os.stat(self.path)
        except OSError as exc:
            conn.close()
            raise StoreError(f"{self.path}: cannot prepare database: {exc}") from None
        self._identity = (st.st_dev, st.st_ino)
        match_sidecars(self.path)
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
                remove_stale_sidecars(self.path)
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
                        self.conn.executemany(INSERT_EVENT, chunk)
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
            if r[VERDICT_AT] == "unwatched":
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

    # -- reading (used by egresswatch.store.query and .stats) ----------------------
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
