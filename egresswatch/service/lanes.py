"""The daemon's watched lane: MCP trees' frames first when the ring overflows.

:class:`WatchedLane` opens the capture's second socket
(:mod:`egresswatch.capture.lanes`) when the eBPF attribution programs are
loaded, and keeps their ``watched`` map filled with the thread groups of MCP
trees: every live tree process the lineage tracker knows at start and at each
housekeeping tick, and each one as the tracker files it (a listener). The
kernel adds a watched process's children at fork and forgets a group when it
exits (the map is kept even when the lane's socket cannot open: the kernel
attributor reads it while the pipeline is behind). Without eBPF, or when the
lane's filter is refused, the daemon runs with the main socket alone and
``status`` says why.
"""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


class WatchedLane:
    def __init__(self, source: Any, kernel: Any, lineage: Any) -> None:
        self.source = source  # egresswatch.capture.live.LiveSource
        self.kernel = kernel  # egresswatch.ebpf.loader.KernelFlows, or None
        self.lineage = lineage
        self.mode, self.reason = "off", "not started"
        self.marked = 0
        self._tree: set[int] = set()

    def start(self) -> None:
        if self.kernel is None:
            self.reason = "needs the eBPF attribution programs (see attribution in status)"
        else:
            # the map is kept even without the lane: hurried attribution reads it too
            self.lineage.add_listener(self._filed)
            self.sync()
            if why := self.source.open_watched(self.kernel.shared_maps()):
                self.reason = why
            else:
                self.mode = "on"
                info = self.source.watched.kernel_filter
                self.reason = info.reason if info is not None else ""
        (log.info if self.mode == "on" else log.warning)(
            "watched capture lane: %s (%s)", self.mode, self.reason
        )

    def _filed(self, pid: int) -> None:
        self.marked += self.kernel.watch((pid,))

    def sync(self) -> None:
        """Mark the live tree processes not marked at the previous tick
        (housekeeping: the listener may have missed some)."""
        if self.kernel is not None:
            tree = set(self.lineage.tree_pids())
            self.marked += self.kernel.watch(tree - self._tree)
            self._tree = tree

    def info(self) -> dict[str, Any]:
        return {"mode": self.mode, "reason": self.reason, "marked": self.marked}
