"""Signals for the daemon's main loop, through a self-pipe.

Handlers only set flags (SIGHUP: reload; SIGTERM, SIGINT: stop);
``signal.set_wakeup_fd`` writes to a pipe the capture loop also waits on, so
a signal wakes it at once. SIGUSR1 dumps every thread's stack to the log.
"""

from __future__ import annotations

import faulthandler
import os
import signal
from types import FrameType


class Signals:
    def __init__(self) -> None:
        self.stop = False
        self.reload = False
        self.wake_fd = -1  # readable when a signal came: wake the capture loop
        self._wake_w = -1

    def install(self) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: stacks to the log
        self.wake_fd, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # only flags here; the main loop does the work
        if signum == signal.SIGHUP:
            self.reload = True
        else:
            self.stop = True

    def drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_fd, 512):
                pass
        except BlockingIOError:
            pass
