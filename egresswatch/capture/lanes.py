"""The watched lane: a second, small capture socket for MCP trees' packets.

During a flood the kernel drops what does not fit in the capture ring, and
it cannot tell an MCP server's query from the flood's. The watched lane is a
second packet socket with its own small ring whose eBPF filter (the same
capture.bpf.o, ``settings[1]`` = LANE_WATCHED) passes only the frames the
rules pass *and* that belong to a process of an MCP tree: the owner is read
from the attribution programs' ``flows`` map, whose ``watched`` map holds the
trees' thread groups (the daemon adds what its lineage tracker files; the
kernel adds each child at fork and removes a group when it exits), and, for
a first datagram or a SYN whose record is written after the packet, from
the task sending it where the kernel lets a socket filter ask (Linux 6.10+).

The main socket still takes every frame, so nothing depends on the lane's
choice: :class:`~egresswatch.capture.live.LiveSource` drains the lane before
each block of the main ring, and :class:`LaneCopies` drops the second copy of
a frame that came through both (same interface, same bytes, the same kernel
timestamp: one sk_buff delivered to both sockets). A watched frame the main
ring lost in a flood is still handed over, from the lane.
"""

from __future__ import annotations

from egresswatch.capture.ifaces import l3_offset

#: bytes of the lane's ring, and of its blocks: MCP trees send little, so the ring
#: is many small blocks: each is handed over 50 ms after its first frame, however
#: empty, and 256 blocks hold 12.8 s of sparse frames while the daemon is busy
LANE_BUFFER = 4 << 20
LANE_BLOCK = 16 << 10
#: two copies of one frame carry the same timestamp; allow for a clock read apart
SAME_TS = 0.002
#: a main-ring copy waits this long (frame time) for its lane copy, which comes first
MAIN_WAIT = 0.5
#: a lane copy waits this long for its main-ring copy (a full 64 MiB main ring is ~30 s behind)
LANE_WAIT = 120.0
MAX_WAITING = 1 << 17


class LaneCopies:
    """``copy(...)`` is True for the second copy of a frame seen through both lanes."""

    def __init__(self) -> None:
        self._waiting: tuple[dict[tuple[int, str], float], dict[tuple[int, str], float]] = ({}, {})
        self._now = 0.0
        self._purged = 0.0

    def copy(self, data: bytes, linktype: int, ifname: str, ts: float, lane: int) -> bool:
        try:
            key = (hash(data[l3_offset(linktype, data) :]), ifname)
        except IndexError:
            return False
        other = self._waiting[1 - lane].pop(key, None)
        if other is not None and abs(other - ts) <= SAME_TS:
            return True
        mine = self._waiting[lane]
        mine[key] = ts
        if ts > self._now:
            self._now = ts
        if self._now - self._purged > 1.0 or len(mine) > MAX_WAITING:
            self._purge()
        return False

    def _purge(self) -> None:
        self._purged = self._now
        for lane, wait in ((0, MAIN_WAIT), (1, LANE_WAIT)):
            cutoff = self._now - wait
            waiting = {k: t for k, t in self._waiting[lane].items() if t >= cutoff}
            while len(waiting) > MAX_WAITING // 2:  # a burst within the window: oldest first
                del waiting[next(iter(waiting))]
            self._waiting = (waiting, self._waiting[1]) if lane == 0 else (self._waiting[0], waiting)

    def __len__(self) -> int:
        return len(self._waiting[0]) + len(self._waiting[1])
