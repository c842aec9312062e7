"""Keeps the lineage tracker current: kernel proc connector events, else polling.

:class:`ProcessFeed` subscribes to the kernel proc connector when it can
(Linux, root, initial network namespace), then has the tracker walk every
process once (after subscribing, so nothing falls in between), and in a
thread hands each fork, exec and exit to the tracker as it happens. Without
the connector, or when it fails, it has the tracker poll every
``poll_interval`` seconds instead.
"""

from __future__ import annotations

import logging
import sys
import threading
from typing import Protocol

from egresswatch.attribute.procevents import EXEC, EXIT, FORK, ProcConnector

log = logging.getLogger(__name__)


class Tracker(Protocol):
    """What the feed calls: egresswatch.attribute.lineage.LineageTracker."""

    def seed(self) -> None: ...
    def on_fork(self, pid: int, ppid: int, ts_ns: int = 0) -> None: ...
    def on_exec(self, pid: int) -> None: ...
    def on_exit(self, pid: int) -> None: ...
    def poll_once(self) -> None: ...


class ProcessFeed:
    """Process events for a tracker, from the connector ("connector") or polling ("poll")."""

    def __init__(self, tracker: Tracker, poll_interval: float = 0.5) -> None:
        self.tracker = tracker
        self.poll_interval = poll_interval
        self.mode = "none"
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connector: ProcConnector | None = None

    def start(self, use_connector: bool = True) -> str:
        """Subscribe, seed the tracker, start following; returns the mode."""
        if use_connector and sys.platform.startswith("linux"):
            conn = ProcConnector()
            try:
                conn.open()
            except OSError as exc:
                log.info("proc connector unavailable (%s); polling every %.2fs", exc, self.poll_interval)
            else:
                self._connector = conn
        self.tracker.seed()  # after subscribing, so nothing falls in between
        target = self._follow if self._connector else self._poll
        self.mode = "connector" if self._connector else "poll"
        self._thread = threading.Thread(target=target, name=f"lineage-{self.mode}", daemon=True)
        self._thread.start()
        return self.mode

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._connector is not None:
            self._connector.close()

    def _follow(self) -> None:
        conn = self._connector
        assert conn is not None
        tracker = self.tracker
        while not self._stop.is_set():
            try:
                events = conn.read(0.25)
            except OSError as exc:
                log.error("proc connector failed (%s); falling back to polling", exc)
                self.mode = "poll"
                self._poll()
                return
            for ev in events:
                try:
                    if ev.what == FORK and ev.pid == ev.tid:
                        tracker.on_fork(ev.pid, ev.ppid, ev.timestamp_ns)
                    elif ev.what == EXEC:
                        tracker.on_exec(ev.pid)
                    elif ev.what == EXIT and ev.pid == ev.tid:
                        tracker.on_exit(ev.pid)
                except Exception:  # one odd process must not stop tracking
                    log.exception("proc event %r", ev)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.tracker.poll_once()
            except Exception:
                log.exception("process poll failed")
