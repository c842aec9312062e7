"""udp_flow events: the kernel's records of the first datagram of each
(process, destination) UDP flow, for MCP tree processes only (eBPF mode).

A record arrives on the kernel's event thread before the packets sent just
before it (a DNS answer that names its destination) have left the capture
ring: the main loop turns it into an observation and holds it until the
capture has passed its time, or ``UDP_FLOW_HOLD`` seconds when the capture is
quiet, then injects it into the pipeline.
"""

from __future__ import annotations

import logging
import queue
import time
from collections import Counter, deque
from typing import Any

from egresswatch.model import Observation
from egresswatch.pipeline import Pipeline

log = logging.getLogger("egresswatch.service")  # the name users see in the log: the stage, not the module

UDP_FLOW_HOLD = 0.2  # a udp_flow waits at most this long for the capture to pass its time
QUEUE_BOUND = 65536  # records waiting for the main loop; more are dropped and counted


class UdpFlows:
    def __init__(self, counters: Counter[str]) -> None:
        self.counters = counters  # the daemon's: udp_flow_dropped, udp_flow_errors
        self._records: queue.SimpleQueue[Any] = queue.SimpleQueue()  # from the kernel's thread
        self._pending: deque[Observation] = deque()  # their observations, waiting for the capture

    def on_record(self, rec: Any) -> None:
        """The kernel's callback (its event thread): queue, bounded and counted."""
        if self._records.qsize() >= QUEUE_BOUND:  # the main loop is behind
            self.counters["udp_flow_dropped"] += 1
            return
        self._records.put(rec)

    def waiting(self) -> bool:
        return bool(self._pending) or not self._records.empty()

    def drain(self, attributor: Any, pipeline: Pipeline, capture_ts: float) -> None:
        """Turn the queued records into observations and inject those the
        capture (at frame time ``capture_ts``) has passed or that waited too long."""
        while True:
            try:
                rec = self._records.get_nowait()
            except queue.Empty:
                break
            try:
                obs = attributor.udp_flow(rec)
            except Exception:
                log.exception("udp_flow event failed")
                self.counters["udp_flow_errors"] += 1
                continue
            if obs is not None:
                self._pending.append(obs)
        now = time.time()
        while self._pending and (
            self._pending[0].ts <= capture_ts or now - self._pending[0].ts > UDP_FLOW_HOLD
        ):
            pipeline.inject(self._pending.popleft())
