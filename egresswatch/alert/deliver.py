"""Alert delivery: the rules of :mod:`egresswatch.alert.rules`, then the channels.

:meth:`Alerter.write` decides on frame time (``event.obs.ts``) and only puts
records on a bounded priority queue (highest severity, then urgent, then
oldest first), so it never blocks capture and nothing severe waits behind a
backlog of lesser alerts; a worker thread delivers (apprise, through
:mod:`egresswatch.alert.channels`) with retries and records every alert and
digest in the store's ``alerts`` table through its own connection.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from egresswatch.alert.channels import apprise_notifier
from egresswatch.alert.keys import rank
from egresswatch.alert.message import AlertRecord
from egresswatch.alert.rules import AlertRules
from egresswatch.config import AlertsConfig
from egresswatch.model import Event
from egresswatch.store.alertlog import AlertLog
from egresswatch.store.db import Store

log = logging.getLogger(__name__)

_Item = tuple[int, int, int, AlertRecord]  # (-severity, -urgent, seq, record)


class Alerter:
    """Pipeline sink turning flagged events into alerts.

    ``notify(title, body)`` replaces apprise when given (its result's truthiness
    is the delivery result). ``digest_timer`` (seconds) lets the worker send
    due digests by wall time in a live daemon when no event arrives; replay
    leaves it None and relies on frame time and :meth:`close`.
    """

    def __init__(
        self,
        config: AlertsConfig,
        store: Store | None,
        *,
        notify: Callable[[str, str], object] | None = None,
        queue_size: int = 1000,
        max_attempts: int = 5,
        digest_timer: float | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.rules = AlertRules(config)
        self.max_attempts = max(1, max_attempts)
        self.digest_timer = digest_timer
        self.queue_size = max(1, queue_size)
        self._listeners: list[Callable[[AlertRecord], None]] = []
        self._lock = threading.Lock()
        self._ready = threading.Condition(self._lock)
        self._heap: list[_Item] = []
        self._records: deque[dict[str, Any]] = deque(maxlen=10_000)  # dropped rows
        self._seq = itertools.count()
        self._closed = False
        self._stopping = False
        self._last_ts = float("-inf")  # newest frame time written
        self._last_write = float("-inf")  # monotonic time of the last write
        self.targets: list[str] = []
        self.counters: Counter[str] = Counter()
        if notify is not None:
            self._notify = notify
            self.targets = ["callback"]
        else:
            self._notify, self.targets = apprise_notifier(config.urls)
        self._worker = threading.Thread(target=self._run, name="egresswatch-alerts", daemon=True)
        self._worker.start()

    def add_listener(self, fn: Callable[[AlertRecord], None]) -> None:
        """``fn(record)`` is called on the worker thread for every alert and digest."""
        self._listeners.append(fn)

    # -- sink ----------------------------------------------------------------
    def write(self, event: Event) -> None:
        if not event.decides:  # not its flow's decision (egresswatch.judge.flows): one alert per flow
            return
        if self._closed:
            return
        self._last_ts = max(self._last_ts, event.obs.ts)
        self._last_write = time.monotonic()
        with self._lock:
            for rec in self.rules.decide(event):
                self._enqueue(rec)

    def tick(self, now_ts: float) -> None:
        """Send the digests due by ``now_ts`` (wall time in a live daemon). While
        events still flow (within the last second) their frame time rules
        instead: a daemon behind a flood must not send a digest each tick."""
        if time.monotonic() - self._last_write < 1.0:
            now_ts = min(now_ts, self._last_ts)
        with self._lock:
            for rec in self.rules.due(now_ts):
                self._enqueue(rec)

    def close(self, timeout: float = 10.0) -> None:
        """Send every pending digest, deliver what is queued, stop the worker."""
        if self._closed:
            return
        with self._lock:
            for rec in self.rules.flush():
                self._enqueue(rec)
            self._closed = self._stopping = True
            self._ready.notify_all()
        self._worker.join(timeout)
        if self._worker.is_alive():
            log.warning("alert worker still busy at close; %d alerts not delivered", len(self._heap))

    @property
    def stats(self) -> Counter[str]:
        """Delivery and decision counters together."""
        return self.counters + self.rules.counters

    # -- queue ---------------------------------------------------------------
    def _enqueue(self, rec: AlertRecord) -> None:
        """With the lock held. A full queue gives up its least important record."""
        item: _Item = (-rank(rec.severity), -int(rec.urgent), next(self._seq), rec)
        if len(self._heap) >= self.queue_size:
            worst = max(self._heap)
            if item >= worst:
                self._dropped(rec)
                return
            self._heap.remove(worst)
            heapq.heapify(self._heap)
            self._dropped(worst[3])
        heapq.heappush(self._heap, item)
        self._ready.notify()

    def _dropped(self, rec: AlertRecord) -> None:
        self.counters["alerts_dropped"] += 1
        self._records.append(self._row(rec, "dropped", error="alert queue full"))

    def _row(self, rec: AlertRecord, result: str, **extra: Any) -> dict[str, Any]:
        row: dict[str, Any] = {
            "ts": rec.ts, "recorded": time.time(), "kind": rec.kind, "server": rec.server,
            "destination": rec.destination, "reason": rec.reason, "severity": rec.severity,
            "result": result, "targets": self.targets, "attempts": 0, "count": rec.count,
            "pid": rec.pid, "process": rec.process, "host": rec.host, "title": rec.title, "body": rec.body,
        }  # fmt: skip
        row.update(extra)
        return row

    # -- worker ----------------------------------------------------------------
    def _send(self, rec: AlertRecord) -> tuple[bool, str | None]:
        try:
            result = self._notify(rec.title, rec.body)
        except Exception as exc:  # a notifier bug must not kill the worker
            return False, f"{type(exc).__name__}: {exc}"
        if result:  # AppriseResult defines __bool__; a bare None counts as failure
            return True, None
        error = "delivery failed"
        logs = getattr(result, "logs", None)
        if callable(logs):
            try:
                msgs = [
                    e.message for e in logs() if getattr(e, "level", "") in ("WARNING", "ERROR", "CRITICAL")
                ]
                if msgs:
                    error = "; ".join(dict.fromkeys(msgs))[:500]
            except Exception:  # pragma: no cover - depends on apprise internals
                pass
        return False, error

    def _attempt(self, rec: AlertRecord, attempt: int, row_id: int | None, alog: AlertLog | None,
                 retries: list[tuple[float, int, AlertRecord, int, int | None]]) -> None:  # fmt: skip
        if attempt == 1:
            for fn in self._listeners:
                try:
                    fn(rec)
                except Exception:
                    log.exception("alert listener failed")
        if not self.targets:
            ok, err, result = True, None, "no_targets"
        else:
            ok, err = self._send(rec)
            result = "sent" if ok else "failed"
        retry_at: float | None = None
        if ok and self.targets:
            self.counters["alerts_sent"] += 1
        elif not ok:
            self.counters["delivery_failures"] += 1
            if attempt < self.max_attempts and not self._closed:
                delay = self.config.retry_seconds * min(2 ** (attempt - 1), 16)
                retry_at = time.monotonic() + delay
                log.warning("alert delivery failed (attempt %d, retry in %.1fs): %s", attempt, delay, err)
            else:
                self.counters["alerts_failed"] += 1
                log.error("alert delivery failed after %d attempts: %s", attempt, err)
        if alog is not None and row_id is None:
            row_id = alog.insert(self._row(rec, result, attempts=attempt, error=err))
        elif alog is not None and row_id is not None:
            alog.update(row_id, result=result, attempts=attempt, error=err, recorded=time.time())
        if retry_at is not None:
            heapq.heappush(retries, (retry_at, next(self._seq), rec, attempt + 1, row_id))

    def _next(self, timeout: float) -> AlertRecord | None:
        with self._lock:
            if not self._heap and not self._stopping:
                self._ready.wait(timeout)
            return heapq.heappop(self._heap)[3] if self._heap else None

    def _run(self) -> None:
        alog = self.store.alert_log() if self.store is not None else None
        retries: list[tuple[float, int, AlertRecord, int, int | None]] = []
        next_tick = time.monotonic() + (self.digest_timer or 0.0)
        try:
            while True:
                timeout = 0.25
                if retries:
                    timeout = max(0.0, min(timeout, retries[0][0] - time.monotonic()))
                rec = self._next(timeout)
                if rec is not None:
                    self._attempt(rec, 1, None, alog, retries)
                batch: list[dict[str, Any]] = []
                while self._records and len(batch) < 1000:
                    batch.append(self._records.popleft())
                if batch and alog is not None:
                    alog.insert_many(batch)
                while retries and (retries[0][0] <= time.monotonic()):
                    _, _, again, attempt, row_id = heapq.heappop(retries)
                    self._attempt(again, attempt, row_id, alog, retries)
                if self.digest_timer and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.digest_timer
                    self.tick(time.time())
                if self._stopping and rec is None and not self._heap:
                    break
            for _ in retries:
                self.counters["alerts_failed"] += 1
        except Exception:  # pragma: no cover - keep the daemon alive, say why alerts stopped
            log.exception("alert worker stopped")
        finally:
            if alog is not None:
                alog.close()
