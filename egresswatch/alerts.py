"""Alerts for flagged events: dedupe per window, digests, background delivery.

The only module that imports ``apprise``. :meth:`Alerter.write` decides on
frame time (``event.obs.ts``) and only appends to a bounded queue, so it never
blocks capture; a worker thread delivers with retries and records every alert
in the store's ``alerts`` table through its own connection.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import queue
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import apprise

from egresswatch.config import AlertsConfig
from egresswatch.model import FLAGGED, Event
from egresswatch.store import AlertLog, Store
from egresswatch.textsafe import safe

log = logging.getLogger(__name__)

SEVERITIES = ("info", "low", "medium", "high")
DIGEST_ITEMS = 20  # held-back events listed in a digest
OVERFLOW = "(many destinations)"  # destination of the shared window once max_windows are open
_STOP = object()

Key = tuple[str, str, str]  # (server, destination, reason)


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert (``kind`` "alert") or digest of held-back events (``kind`` "digest")."""

    kind: str
    ts: float
    server: str
    destination: str
    reason: str
    severity: str
    title: str
    body: str
    count: int = 1
    host: str | None = None
    pid: int | None = None
    process: str | None = None


@dataclass
class _Window:
    start: float
    end: float
    first: str
    severity: str
    host: str | None
    held: int = 0
    held_items: list[str] = field(default_factory=list)
    last_ts: float = 0.0


def _rank(sev: str) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else len(SEVERITIES) - 1


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def destination_of(event: Event) -> str:
    """The event's own flow's destination (SNI, else the candidate names, ...)."""
    return event.destination()


def _summary(event: Event) -> str:
    p = event.attr.process
    proc = f"{p.name}[{p.pid}]" if p else "unknown process"
    o = event.obs
    return f"{_when(o.ts)} {proc} {o.kind} {destination_of(event)} ({o.dst}:{o.dport})"


def format_alert(event: Event) -> tuple[str, str]:
    """(title, body) for a flagged event; every packet-derived string escaped."""
    o, a, v = event.obs, event.attr, event.verdict
    server = safe(a.server or "-")
    dest = safe(destination_of(event))
    title = f"egresswatch: MCP server {server} contacted {dest} ({safe(v.reason)})"
    p = a.process
    chain = " > ".join(f"{safe(c.name or '?')}[{c.pid}]" for c in a.chain) or "-"
    lines = [
        f"Server: {server} (host {safe(a.host or '-')}, phase {safe(a.phase or '-')})",
        f"Destination: {dest} ({safe(o.dst)}:{o.dport}/{o.proto}, {safe(o.kind)})",
        f"Reason: {safe(v.reason)}"
        + (f" ({safe(v.rule)})" if v.rule else "")
        + f", severity {safe(v.severity)}",
        f"Verdict: {safe(v.verdict)}",
        f"Time: {_when(o.ts)}",
        f"Process: {safe(p.name) if p else '-'}[{p.pid if p else '-'}] {safe(p.exe or '') if p else ''}".rstrip(),
        f"Command: {safe(' '.join(p.cmdline)) if p and p.cmdline else '-'}",
        f"Chain: {chain}",
    ]
    return title, "\n".join(lines)


def apprise_target(url: str) -> str | None:
    """``url`` as apprise will use it, secrets hidden; None when apprise cannot
    use it (unknown scheme, missing plugin). For `doctor`."""
    ap = apprise.Apprise()
    if not ap.add(url):
        return None
    return str(next(iter(ap)).url(privacy=True))


def apprise_sender(url: str) -> Callable[[str, str, str], bool] | None:
    """A function sending ``(title, body, severity)`` to one apprise URL and
    returning whether it was delivered; None when apprise cannot use the URL.
    For the user-session desktop notifier."""
    ap = apprise.Apprise()
    if not ap.add(url):
        return None
    types = {"high": apprise.NotifyType.FAILURE, "medium": apprise.NotifyType.WARNING}

    def send(title: str, body: str, severity: str) -> bool:
        kind = types.get(severity, apprise.NotifyType.INFO)
        return bool(ap.notify(title=title, body=body, notify_type=kind))

    return send


class Alerter:
    """Pipeline sink turning flagged events into alerts.

    ``notify(title, body)`` replaces apprise when given (its result's truthiness
    is the delivery result). ``digest_timer`` (seconds) lets the worker close
    windows by wall time in a live daemon; replay leaves it None and relies on
    frame time and :meth:`close`.
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
        max_windows: int = 10_000,
    ) -> None:
        self.config = config
        self.store = store
        self.min_rank = _rank(config.min_severity)
        self.max_attempts = max(1, max_attempts)
        self.digest_timer = digest_timer
        self.max_windows = max(1, max_windows)
        self.counters: Counter[str] = Counter()
        self._listeners: list[Callable[[AlertRecord], None]] = []
        self._windows: dict[Key, _Window] = {}
        self._expiry: list[tuple[float, Key, float]] = []
        self._lock = threading.Lock()
        self._queue: queue.Queue[object] = queue.Queue(maxsize=max(1, queue_size))
        self._records: deque[dict[str, Any]] = deque(maxlen=10_000)  # held/dropped rows
        self._seq = itertools.count()
        self._closed = False
        self._apprise: Any = None
        self.targets: list[str] = []
        if notify is not None:
            self._notify = notify
            self.targets = ["callback"]
        else:
            self._apprise = apprise.Apprise()
            for i, url in enumerate(config.urls, 1):
                if not self._apprise.add(url):
                    log.warning("alerts.urls: entry %d is not a usable apprise URL; ignored", i)
            self.targets = [s.url(privacy=True) for s in self._apprise]
            self._notify = self._apprise_notify
        self._worker = threading.Thread(target=self._run, name="egresswatch-alerts", daemon=True)
        self._worker.start()

    def add_listener(self, fn: Callable[[AlertRecord], None]) -> None:
        """``fn(record)`` is called on the worker thread for every alert and digest."""
        self._listeners.append(fn)

    # -- sink ----------------------------------------------------------------
    def write(self, event: Event) -> None:
        v = event.verdict
        if not event.decides:  # not its flow's decision (egresswatch.flows): one alert per flow
            return
        if v.verdict != FLAGGED or _rank(v.severity) < self.min_rank or self._closed:
            return
        ts = event.obs.ts
        key: Key = (event.attr.server or "-", destination_of(event), v.reason)
        with self._lock:
            self._expire(ts)
            if key not in self._windows and len(self._windows) >= self.max_windows:
                key = (key[0], OVERFLOW, key[2])  # a flood of destinations: one window per server+reason
            w = self._windows.get(key)
            if w is not None:
                w.held += 1
                w.last_ts = max(w.last_ts, ts)
                if _rank(v.severity) > _rank(w.severity):
                    w.severity = v.severity
                if len(w.held_items) < DIGEST_ITEMS:
                    w.held_items.append(safe(_summary(event)))
                self.counters["alerts_suppressed"] += 1
                self._records.append(self._row(key, ts, "alert", v.severity, "held", event=event))
                return
            end = ts + self.config.window_seconds
            self._windows[key] = _Window(
                ts, end, safe(_summary(event)), v.severity, event.attr.host, last_ts=ts
            )
            heapq.heappush(self._expiry, (end, key, ts))
        title, body = format_alert(event)
        p = event.attr.process
        rec = AlertRecord("alert", ts, key[0], key[1], key[2], v.severity, title, body, 1,
                          event.attr.host, p.pid if p else None, p.name if p else None)  # fmt: skip
        self._enqueue(rec)

    def tick(self, now_ts: float) -> None:
        """Close every window that ended by ``now_ts`` (frame or wall time), sending digests."""
        with self._lock:
            self._expire(now_ts)

    def close(self, timeout: float = 10.0) -> None:
        """Send digests for every open window, deliver what is queued, stop the worker."""
        if self._closed:
            return
        with self._lock:
            self._expire(float("inf"))
            self._closed = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("alert queue still full at close; %d alerts not delivered", self._queue.qsize())
        self._worker.join(timeout)

    # -- windows -------------------------------------------------------------
    def _expire(self, ts: float) -> None:
        while self._expiry and self._expiry[0][0] <= ts:
            _, key, start = heapq.heappop(self._expiry)
            w = self._windows.get(key)
            if w is None or w.start != start:
                continue
            del self._windows[key]
            if w.held:
                self._enqueue(self._digest(key, w))

    def _digest(self, key: Key, w: _Window) -> AlertRecord:
        server, dest, reason = (safe(k) for k in key)
        title = f"egresswatch: {w.held} more from MCP server {server} to {dest} ({reason})"
        lines = [
            f"{w.held} more event(s) for server {server}, destination {dest}, reason {reason}"
            f" were held back between {_when(w.start)} and {_when(w.last_ts)}.",
            f"First (alerted): {w.first}",
            "Held back:",
            *(f"  {item}" for item in w.held_items),
        ]
        if w.held > len(w.held_items):
            lines.append(f"  ... and {w.held - len(w.held_items)} more")
        return AlertRecord("digest", w.last_ts, key[0], key[1], key[2], w.severity, title, "\n".join(lines),
                           w.held, w.host)  # fmt: skip

    def _enqueue(self, rec: AlertRecord) -> None:
        try:
            self._queue.put_nowait(rec)
        except queue.Full:
            self.counters["alerts_dropped"] += 1
            self._records.append(self._row((rec.server, rec.destination, rec.reason), rec.ts, rec.kind,
                                           rec.severity, "dropped", error="alert queue full", count=rec.count))  # fmt: skip

    def _row(self, key: Key, ts: float, kind: str, severity: str, result: str, *,
             event: Event | None = None, **extra: Any) -> dict[str, Any]:  # fmt: skip
        p = event.attr.process if event is not None else None
        row: dict[str, Any] = {
            "ts": ts, "recorded": time.time(), "kind": kind, "server": key[0], "destination": key[1],
            "reason": key[2], "severity": severity, "result": result, "targets": self.targets,
            "attempts": 0, "count": 1, "pid": p.pid if p else None, "process": p.name if p else None,
            "host": event.attr.host if event is not None else None,
        }  # fmt: skip
        row.update(extra)
        return row

    # -- worker ----------------------------------------------------------------
    def _apprise_notify(self, title: str, body: str) -> object:
        return self._apprise.notify(body=body, title=title)

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
            row = self._row((rec.server, rec.destination, rec.reason), rec.ts, rec.kind, rec.severity, result,
                            attempts=attempt, error=err, count=rec.count, title=rec.title, body=rec.body,
                            pid=rec.pid, process=rec.process, host=rec.host)  # fmt: skip
            row_id = alog.insert(row)
        elif alog is not None and row_id is not None:
            alog.update(row_id, result=result, attempts=attempt, error=err, recorded=time.time())
        if retry_at is not None:
            heapq.heappush(retries, (retry_at, next(self._seq), rec, attempt + 1, row_id))

    def _run(self) -> None:
        alog = self.store.alert_log() if self.store is not None else None
        retries: list[tuple[float, int, AlertRecord, int, int | None]] = []
        next_tick = time.monotonic() + (self.digest_timer or 0.0)
        stopping = False
        try:
            while True:
                timeout = 0.25
                if retries:
                    timeout = max(0.0, min(timeout, retries[0][0] - time.monotonic()))
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _STOP:
                    stopping = True
                elif isinstance(item, AlertRecord):
                    self._attempt(item, 1, None, alog, retries)
                batch: list[dict[str, Any]] = []
                while self._records and len(batch) < 1000:
                    batch.append(self._records.popleft())
                if batch and alog is not None:
                    alog.insert_many(batch)
                while retries and (retries[0][0] <= time.monotonic()):
                    _, _, rec, attempt, row_id = heapq.heappop(retries)
                    self._attempt(rec, attempt, row_id, alog, retries)
                if self.digest_timer and time.monotonic() >= next_tick:
                    next_tick = time.monotonic() + self.digest_timer
                    self.tick(time.time())
                if stopping and self._queue.empty():
                    break
            for _ in retries:
                self.counters["alerts_failed"] += 1
        except Exception:  # pragma: no cover - keep the daemon alive, say why alerts stopped
            log.exception("alert worker stopped")
        finally:
            if alog is not None:
                alog.close()


__all__ = ["Alerter", "AlertRecord", "format_alert", "destination_of"]
