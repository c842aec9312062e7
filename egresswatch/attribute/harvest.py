"""The socket harvester: remembers the sockets of MCP tree processes as they appear.

In the background (``start()``), :class:`SocketHarvester` looks at the fds of
MCP tree processes every ``harvest_interval`` seconds, and at those of a tree
process that just forked or exec'd every ``newborn_interval`` seconds for its
first ``newborn_watch`` seconds (the lineage tracker tells it); each new
socket is duplicated for an instant with pidfd_getfd(2) to read its local
address (getsockname) and handed to ``remember`` with its process. So a child
that lives 20-50 ms and makes one connection is known even when its packets
are handled after it exited; processes themselves are known from fork/exec
(proc connector) before they open a socket, so the chain and lineage of an
exited process are kept.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable

from egresswatch.attribute.lineage import LineageTracker
from egresswatch.attribute.owners import SocketOwners
from egresswatch.attribute.sockets import FdCache, SockKey, fd_local_address

log = logging.getLogger(__name__)

ProcKey = tuple[int, float]


class SocketHarvester:
    """Background socket harvest of the MCP trees (see the module docstring)."""

    def __init__(
        self,
        lineage: LineageTracker,
        fdc: FdCache,
        owners: SocketOwners,
        remember: Callable[[SockKey, ProcKey, float], None],
        counters: Counter[str],
        harvest_interval: float = 0.01,
        newborn_watch: float = 0.1,
        newborn_interval: float = 0.002,
    ) -> None:
        self.lineage = lineage
        self.owners = owners
        self.remember = remember
        self.counters = counters
        self.harvest_interval = harvest_interval
        self.newborn_watch = newborn_watch
        self.newborn_interval = newborn_interval
        self._fdc = fdc
        self._fds: dict[int, dict[int, int]] = {}  # tree pid -> {inode: fd} resolved here
        self._watch: dict[int, float] = {}  # pid -> watch closely until (monotonic)
        self._wake = threading.Event()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.harvest_interval > 0 and self._thread is None:
            self.lineage.add_listener(self._newborn)
            self._thread = threading.Thread(target=self._harvest_loop, name="socket-harvest", daemon=True)
            self._thread.start()

    def _newborn(self, pid: int) -> None:
        with self._lock:
            self._watch[pid] = time.monotonic() + self.newborn_watch
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=3)

    def _harvest_loop(self) -> None:
        last_full = 0.0
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                self._watch = {p: t for p, t in self._watch.items() if t > now}
                watched = list(self._watch)
            busy = True
            try:
                if now - last_full >= self.harvest_interval:
                    last_full = now
                    busy = self.harvest() > 0 or bool(self._fds)
                elif watched:
                    self.harvest(watched, prune=False)
            except Exception:
                log.exception("socket harvest failed")
            # With no MCP tree process alive there is nothing to poll: sleep until
            # the tracker reports a newborn tree process (it sets _wake), or 1 s.
            self._wake.wait(self.newborn_interval if watched else self.harvest_interval if busy else 1.0)
            self._wake.clear()

    def harvest(self, pids: list[int] | None = None, prune: bool = True) -> int:
        """Remember every socket of the MCP trees (or of ``pids``) that appeared
        since the last call (a socket not bound yet is retried next time);
        returns how many were remembered."""
        if pids is None:
            pids = self.lineage.tree_pids()
        now = time.time()
        count = 0
        for pid in pids:
            fds = self._fdc.get(pid)
            done = self._fds.setdefault(pid, {})
            fresh = [(inode, fd) for inode, fd in fds.items() if inode not in done]
            if not fresh:
                continue
            info, _chain, _lin = self.lineage.lookup(pid)
            for inode, fd in fresh:
                key = fd_local_address(pid, fd)
                if key is None or info is None:
                    continue
                done[inode] = fd
                self.owners.note(inode, pid)
                self.remember(key, info.key, now)
                count += 1
        if prune:
            for gone in set(self._fds) - set(pids):
                del self._fds[gone]
        self.counters["harvested"] += count
        return count
