"""After SIGTERM: read what the capture ring still holds (a burst just before
the signal), so that no event the kernel captured is lost at a restart.

Every frame the kernel stamped before the drain began is fed: frames are read
until a later one shows up or none came for ``DRAIN_QUIET`` seconds (the
kernel hands a partly filled block over after 20 ms), at most
``DRAIN_SECONDS`` (the systemd unit's TimeoutStopSec is 30 s). The daemon
flushes the pipeline and the sinks next.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from egresswatch.capture.live import LiveSource
from egresswatch.model import Frame
from egresswatch.service import sdnotify

log = logging.getLogger("egresswatch.service")  # the name users see in the log: the stage, not the module

DRAIN_SECONDS = 20.0
DRAIN_QUIET = 0.2


def drain_ring(source: LiveSource, feed: Callable[[Frame], Any], watchdog: bool) -> int:
    """Feed the frames still in the ring; the number fed."""
    start = time.monotonic()
    cutoff = time.time()  # frames carry the kernel's wall-clock receive time
    deadline = start + DRAIN_SECONDS
    n = 0
    caught_up = False
    while not caught_up and time.monotonic() < deadline:
        if watchdog:
            sdnotify.watchdog_ping()
        before = n
        for frame in source.frames(min(DRAIN_QUIET, max(0.0, deadline - time.monotonic()))):
            feed(frame)
            n += 1
            # the main ring is in arrival order: all earlier frames are read (the
            # watched lane is read first, its frames may be later than the main ring's)
            if frame.ts > cutoff and not source.lane_of_last:
                caught_up = True
                break
        if n == before:
            break
    (log.warning if time.monotonic() >= deadline else log.info)(
        "stopping: %d frames drained from the capture ring in %.2fs", n, time.monotonic() - start
    )
    return n
