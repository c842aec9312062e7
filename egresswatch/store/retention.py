"""Retention: delete events (and alerts) past their age or the size limit, in
short chunks, and give the free pages back to the file system.

A mixin of :class:`~egresswatch.store.db.Store` (``store.prune()``,
``store.size_bytes()``): each chunk is its own transaction under the store's
lock, so the pipeline's writer waits at most one chunk.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egresswatch.config import RetentionConfig
from egresswatch.errors import StoreError
from egresswatch.store.schema import Database

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PruneResult:
    deleted_by_age: int = 0
    deleted_by_size: int = 0
    alerts_deleted: int = 0
    chunks: int = 0
    seconds: float = 0.0
    size_bytes: int = 0
    longest_step: float = 0.0  # seconds the writer could have waited for the lock


class Retention:
    """Pruning and size of the store; the attributes are the Store's."""

    path: Path
    readonly: bool
    retention: RetentionConfig
    counters: Counter[str]
    db: Database
    _lock: threading.RLock
    _longest: float

    def size_bytes(self) -> int:
        """Bytes in use by the database pages (the file minus its free pages)."""
        with self._lock:
            pc = self.db.conn.execute("PRAGMA page_count").fetchone()[0]
            fl = self.db.conn.execute("PRAGMA freelist_count").fetchone()[0]
            ps = self.db.conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pc - fl) * ps)

    def prune_logged(self, now_ts: float, max_chunks: int = 20) -> PruneResult:
        """:meth:`prune`, its figures logged (info when something was deleted)."""
        result = self.prune(now_ts, max_chunks=max_chunks)
        deleted = result.deleted_by_age + result.deleted_by_size
        (log.info if deleted else log.debug)(
            "retention: %d events deleted (%d by age, %d by size) in %.3fs; database %.1f MB",
            deleted, result.deleted_by_age, result.deleted_by_size, result.seconds, result.size_bytes / 1e6,
        )  # fmt: skip
        return result

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
            n = self.db.conn.execute(sql, params).rowcount
        self._longest = max(self._longest, time.monotonic() - t)
        return n

    def _reclaim(self, max_steps: int) -> None:
        """Give free pages back to the file system (auto_vacuum=INCREMENTAL), in steps."""
        for _ in range(max_steps):
            with self._lock:
                if self.db.conn.execute("PRAGMA auto_vacuum").fetchone()[0] != 2:
                    return
                if self.db.conn.execute("PRAGMA freelist_count").fetchone()[0] == 0:
                    return
                t = time.monotonic()
                self.db.conn.executescript("PRAGMA incremental_vacuum(256);")  # steps to the end
                self._longest = max(self._longest, time.monotonic() - t)
