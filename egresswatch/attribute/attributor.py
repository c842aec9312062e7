"""Flow -> process -> MCP server, live.

:class:`LiveAttributor` finds the socket that owns an observation's local end
``(proto, local ip, local port)`` (``obs.local()``: the source of queries,
SYNs and hellos, the destination of DNS answers; a query to the loopback stub
resolver 127.0.0.53 is therefore owned by the querying process) and ties it
to a process through the lineage tracker. What is done when, in
``attribute()``, right as the packet is handled:

1. a socket remembered in the last ``recent_seconds`` whose process still
   runs is taken as is (the hello after a SYN, the answer after a query);
2. - 4. the socket's owner now: sock_diag or /proc/net gives the socket's
   inode, the fds of MCP tree, newborn and untracked processes (then of every
   process) its owner, other network namespaces' tables when it is not in
   ours (egresswatch.attribute.owners);
5. a remembered socket of a process that has since exited (kept for
   ``memory_seconds`` of frame time): a DNS answer or ClientHello arriving
   after a short-lived process exited still maps. Ports are reused, so an
   outbound packet only maps to a remembered process that had not exited yet
   when the packet was captured, and an inbound one (a DNS answer) only within
   ``answer_seconds`` of the last sighting; otherwise the entry is dropped.

While the daemon is behind the capture (``hurry(frame)``, set by the
service: more than 0.25 s behind during a flood), steps 2-4 are skipped:
only sockets remembered in steps 1 and 5 (the harvester's among them) are
attributed, so a flood from outside the MCP trees cannot keep the daemon
busy with socket lookups while watched packets wait in the ring.

The memory is filled by these lookups and, in the background, by the socket
harvester (egresswatch.attribute.harvest), which remembers the sockets of MCP
tree processes as they appear, so a child that lives 20-50 ms and makes one
connection is known even when its packets are handled after it exited.
"""

from __future__ import annotations

import sys
import threading
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from egresswatch.attribute.harvest import SocketHarvester
from egresswatch.attribute.lineage import LineageTracker
from egresswatch.attribute.owners import SocketOwners
from egresswatch.attribute.sockets import FdCache, SockKey, norm_ip
from egresswatch.mcp.match import attribution
from egresswatch.model import Attribution, Frame, Observation

ProcKey = tuple[int, float]


@dataclass(slots=True)
class _Seen:
    proc: ProcKey
    ts: float


class LiveAttributor:
    """The pipeline Attributor for live capture (see the module docstring)."""

    def __init__(
        self,
        lineage: LineageTracker,
        memory_seconds: float = 120.0,
        recent_seconds: float = 2.0,
        rescan_seconds: float = 0.05,
        harvest_interval: float = 0.01,
        memory_size: int = 65536,
        newborn_seconds: float = 5.0,
        answer_seconds: float = 10.0,
        newborn_watch: float = 0.1,
        newborn_interval: float = 0.002,
    ) -> None:
        self.lineage = lineage
        self.memory_seconds = memory_seconds
        self.recent_seconds = recent_seconds
        self.memory_size = memory_size
        self.answer_seconds = answer_seconds
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._mem: OrderedDict[SockKey, _Seen] = OrderedDict()
        self._fdc = FdCache()  # one listing per process per budget, whatever it holds
        self._linux = sys.platform.startswith("linux")
        self.owners = SocketOwners(lineage, self._fdc, self.counters, rescan_seconds, newborn_seconds)
        self.harvester = SocketHarvester(lineage, self._fdc, self.owners, self._remember, self.counters,
                                         harvest_interval, newborn_watch, newborn_interval)  # fmt: skip
        self.hurry: Callable[[Frame], bool] | None = None  # set by the daemon: True while behind

    # -- background harvester ---------------------------------------------
    def start(self) -> None:
        if self._linux:
            self.harvester.start()

    def stop(self) -> None:
        self.harvester.stop()
        self.owners.close()

    def harvest(self, pids: list[int] | None = None, prune: bool = True) -> int:
        """Remember every socket of the MCP trees (or of ``pids``) now (see
        egresswatch.attribute.harvest); returns how many were remembered."""
        return self.harvester.harvest(pids, prune)

    # -- Attributor ---------------------------------------------------------
    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        ip, port = obs.local()
        key: SockKey = (obs.proto, norm_ip(ip), port)
        seen = self._recall(key)
        if seen is not None and frame.ts - seen.ts <= self.recent_seconds:
            attr = self._from_key(seen.proc, "live", alive_only=True)
            if attr is not None:
                self._remember(key, seen.proc, frame.ts)
                self.counters["recent"] += 1
                return attr
        if self.hurry is not None and self.hurry(frame):
            # the capture is behind (a flood): no socket lookups, only the sockets
            # the harvester and earlier lookups remember, so the backlog drains
            self.counters["hurried"] += 1
            found, why = None, "capture behind: remembered sockets only"
        else:
            found, why = self.owners.lookup(key, obs.remote())
        if found is not None:
            info, _c, _l = self.lineage.lookup(found)
            if info is not None:
                self._remember(key, info.key, frame.ts)
                attr = self._from_key(info.key, "live")
                if attr is not None:
                    self.counters["live"] += 1
                    return attr
            why = "socket owner exited before lookup"
        if seen is not None and frame.ts - seen.ts <= self.memory_seconds:
            if self._may_own(seen, obs, frame.ts):
                gone = self.lineage.exit_time(seen.proc) is not None
                attr = self._from_key(seen.proc, "remembered socket" + (" (process exited)" if gone else ""))
                if attr is not None:
                    self.counters["remembered"] += 1
                    return attr
            else:  # the port has a new, unknown owner: forget the old one
                with self._lock:
                    self._mem.pop(key, None)
                self.counters["memory_stale"] += 1
        self.counters["unknown"] += 1
        return Attribution(reason=why)

    def _may_own(self, seen: _Seen, obs: Observation, ts: float) -> bool:
        """Can the remembered process own this packet? A process sends only
        while it runs: for outbound packets it must have exited after ``ts``
        (ports are reused). An answer may arrive after its asker exited, so
        inbound packets only need to be within ``answer_seconds`` of the
        last sighting."""
        if not obs.outbound:
            return ts - seen.ts <= self.answer_seconds
        exited = self.lineage.exit_time(seen.proc)
        return exited is None or exited + 0.002 >= ts

    def _from_key(self, proc: ProcKey, how: str, alive_only: bool = False) -> Attribution | None:
        if alive_only and not self.lineage.alive(proc):
            return None
        info, chain, lin = self.lineage.lookup_key(proc)
        if info is None:
            return None
        return attribution(info, chain, lin, how)

    # -- memory ---------------------------------------------------------------
    def remember(self, key: SockKey, proc: ProcKey, ts: float) -> None:
        """File a socket found elsewhere (the kernel's flow map) in the memory."""
        self._remember(key, proc, ts)

    def _remember(self, key: SockKey, proc: ProcKey, ts: float) -> None:
        with self._lock:
            self._mem[key] = _Seen(proc, ts)
            self._mem.move_to_end(key)
            while len(self._mem) > self.memory_size:
                self._mem.popitem(last=False)

    def _recall(self, key: SockKey) -> _Seen | None:
        with self._lock:
            return self._mem.get(key)
