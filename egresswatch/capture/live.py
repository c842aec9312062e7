"""Live capture: one unbound AF_PACKET socket for every interface -> Frame.

An unbound ``AF_PACKET``/``SOCK_RAW`` socket receives the frames of every
interface, including interfaces created after it was opened (VPNs, docker
bridges, veths), each with its own link layer. ``recvmsg`` names the interface,
the packet type and the hardware type, from which the frame's linktype follows
(Ethernet and loopback: 1; tun/WireGuard/PPP/IP tunnels: raw IP, 101). Frames carry
the kernel's receive timestamp (``SO_TIMESTAMPNS``), the only clock below
capture. The kernel filter (:mod:`egresswatch.capture.filters`: eBPF with
ClientHello state per flow, else classic BPF and
:class:`~egresswatch.capture.gate.HelloGate`) passes only what the decoders
need and drops the second copy of loopback packets.

While ring blocks queue up behind the one being read (a flood), the fast
lane (:mod:`egresswatch.capture.fastlane`) scans them once and hands over
first the frames ``priority`` picks (in the daemon: DNS queries with a label
that carries data), so they do not wait for the backlog. The watched lane
(:mod:`egresswatch.capture.lanes`, :meth:`LiveSource.open_watched`), a second
socket for MCP trees' frames only, is read before each block.

Bridged or stacked interfaces (a container's veth and its bridge, a VLAN device
and its parent) deliver the same IP packet more than once; an identical IP
packet seen on a different interface within ``dedupe_window`` seconds is
dropped and counted (``duplicates``).
"""

from __future__ import annotations

import logging
import select
import socket
import struct
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType
from typing import Any

from egresswatch.capture import bpf, filters
from egresswatch.capture.gate import HelloGate
from egresswatch.capture.ifaces import Dedupe, IfNames
from egresswatch.capture.lanes import LANE_BLOCK, LANE_BUFFER, LaneCopies
from egresswatch.capture.packetsock import PRIVILEGE_HINT, open_packet_socket
from egresswatch.capture.ring import BLOCK_SIZE, SNAPLEN, SOL_PACKET, Ring, recv_frames
from egresswatch.errors import CaptureError
from egresswatch.model import Frame

__all__ = ["PRIVILEGE_HINT", "HelloGate", "LiveSource", "linktype_for"]

log = logging.getLogger(__name__)

PACKET_STATISTICS = 6
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
MIB = 1 << 20
BATCH = 512  # frames read per wakeup before the deadline is checked again


def linktype_for(hatype: int) -> int | None:
    """LINKTYPE_* of frames read with SOCK_RAW from an interface of ``hatype``."""
    if hatype in bpf.ETHERNET_HATYPES:
        return LINKTYPE_ETHERNET
    if hatype in bpf.RAW_IP_HATYPES:
        return LINKTYPE_RAW
    return None


class LiveSource:
    """``with LiveSource() as src: for frame in src.frames(0.5): ...``

    ``interfaces`` restricts capture to those interface names (empty: all,
    new ones included); with exactly one, the socket is bound to it, so other
    interfaces' traffic never takes room in the ring. ``program`` (a classic
    program) or ``ebpf=False`` forces the classic filter; ``hello_gate=False``
    keeps every frame of the continuation shape, in the kernel and here (tests
    of the filter rules). ``kernel_filter`` says which filter runs and why.
    """

    def __init__(
        self,
        interfaces: Sequence[str] = (),
        program: list[bpf.Insn] | None = None,
        rcvbuf: int = 8 * MIB,
        dedupe_window: float = 0.05,
        hello_gate: bool = True,
        ring: bool = True,
        ebpf: bool = True,
        lane: int = filters.LANE_ALL,
        maps: dict[str, int] | None = None,
    ) -> None:
        self.interfaces = frozenset(interfaces)
        self.program = program
        self.rcvbuf = rcvbuf
        self.dedupe_window = dedupe_window
        self.hello_gate = hello_gate
        self.ebpf = ebpf
        self.lane, self._maps = lane, maps
        self.watched: LiveSource | None = None  # the watched lane
        self._copies = LaneCopies()
        self.lane_of_last = 0  # the lane of the last frame handed over (1: watched)
        self.kernel_filter: filters.ActiveFilter | None = None
        self.gate: HelloGate | None = None
        self.use_ring = ring
        self._ring: Ring | None = None
        self._ifnames = IfNames()
        self.counters: Counter[str] = Counter()
        self._sock: socket.socket | None = None
        self._buf = bytearray(SNAPLEN)
        self._index = 0
        self._dedupe = Dedupe(dedupe_window)
        # the fast lane (egresswatch.capture.fastlane): priority(linktype, data)
        self.priority: Callable[[int, bytes], bool] | None = None
        self._scanned: set[int] = set()  # ring blocks scanned ahead
        self._ahead: dict[int, set[int]] = {}  # ring block -> positions already handed over

    # -- lifecycle -----------------------------------------------------------
    def open(self) -> LiveSource:
        def attach(sock: socket.socket) -> filters.ActiveFilter:
            return filters.attach(sock, self.program, self.hello_gate, self.ebpf, self.lane, self._maps)

        block = BLOCK_SIZE if self.lane == filters.LANE_ALL else LANE_BLOCK
        self._sock, self.kernel_filter, self._ring = open_packet_socket(
            self.interfaces, self.rcvbuf, attach, self.use_ring, block
        )
        self.gate = self.kernel_filter.gate
        self.kernel_stats()  # reset the kernel's counters
        return self

    def open_watched(self, maps: dict[str, int], by_task: bool = True) -> str:
        """Open the watched lane (:mod:`egresswatch.capture.lanes`) with the
        attribution programs' maps; '' when it runs, else why not. ``by_task``
        False: by socket records alone (tests of their order)."""
        lane = LiveSource(sorted(self.interfaces), rcvbuf=LANE_BUFFER, dedupe_window=0,
                          hello_gate=self.hello_gate, lane=filters.LANE_WATCHED if by_task
                          else filters.LANE_WATCHED_BY_SOCKET, maps=maps)  # fmt: skip
        try:
            self.watched = lane.open()
        except CaptureError as exc:
            return str(exc)
        return ""

    def close(self) -> None:
        if self.watched is not None:
            self.watched.close()
            self.watched = None
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.kernel_filter is not None:
            self.kernel_filter.close()

    def __enter__(self) -> LiveSource:
        return self.open() if self._sock is None else self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def fileno(self) -> int:
        if self._sock is None:
            raise CaptureError("capture is not open")
        return self._sock.fileno()

    @property
    def rcvbuf_effective(self) -> int:
        assert self._sock is not None
        return self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)

    # -- reading -------------------------------------------------------------
    def frames(self, timeout: float, wake_fd: int | None = None) -> Iterator[Frame]:
        """Yield frames that arrive within ``timeout`` seconds, on the calling
        thread; return early when ``wake_fd`` becomes readable (signals)."""
        if self._sock is None:
            self.open()
        assert self._sock is not None
        fd = self._sock.fileno()
        watch = [fd] if wake_fd is None else [fd, wake_fd]
        if self.watched is not None:
            watch.append(self.watched.fileno())
            self.watched.priority = self.priority
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select(watch, [], [], remaining)
            if wake_fd is not None and wake_fd in ready:
                return
            if self.watched is not None:
                yield from self._built(self.watched.raw(), 1)
            if fd not in ready:
                continue
            if self._ring is None:
                yield from self._built(self.raw())
                continue
            ring = self._ring
            while ring.ready():
                if self.watched is not None:
                    yield from self._built(self.watched.raw(), 1)
                if self.priority is not None:
                    yield from self._built(self._fast_lane(ring))
                cur = ring.cur
                self._scanned.discard(cur)
                for data, length, ts, ifindex, hatype in ring.block(self._ahead.pop(cur, None)):
                    frame = self._make_frame(data, length, ts, self._ifnames.name(ifindex), hatype)
                    if frame is not None:
                        yield frame
                if time.monotonic() >= deadline:
                    return

    def _fast_lane(self, ring: Ring) -> Iterator[tuple[bytes, int, float, str, int]]:
        """Frames of the blocks queued behind the current one that ``priority``
        picks, handed over first (each block is scanned once)."""
        assert self.priority is not None
        for k in range(1, ring.nr):
            if not ring.ready(k):
                return
            idx = (ring.cur + k) % ring.nr
            if idx in self._scanned:
                continue
            self._scanned.add(idx)
            for pos, data, length, ts, ifindex, hatype in ring.frames_at(idx):
                linktype = linktype_for(hatype)
                if linktype is not None and self.priority(linktype, data):
                    self._ahead.setdefault(idx, set()).add(pos)
                    self.counters["fast_lane"] += 1
                    yield data, length, ts, self._ifnames.name(ifindex), hatype

    def _built(self, raws: Iterator[tuple[bytes, int, float, str, int]], lane: int = 0) -> Iterator[Frame]:
        for data, n, ts, ifname, hatype in raws:
            frame = self._make_frame(data, n, ts, ifname, hatype, lane)
            if frame is not None:
                yield frame

    def raw(self) -> Iterator[tuple[bytes, int, float, str, int]]:
        """(data, orig_len, ts, ifname, hatype) of what is queued now, no frames built."""
        if self._ring is None:
            assert self._sock is not None
            yield from recv_frames(self._sock, self._buf, BATCH, self.counters)
            return
        ring = self._ring
        while ring.ready():  # the fast lane here too: the watched lane's own flood
            if self.priority is not None:
                yield from self._fast_lane(ring)
            self._scanned.discard(ring.cur)
            for data, n, ts, ifindex, hatype in ring.block(self._ahead.pop(ring.cur, None)):
                yield data, n, ts, self._ifnames.name(ifindex), hatype

    def _make_frame(
        self, data: bytes, n: int, ts: float, ifname: str, hatype: int, lane: int = 0
    ) -> Frame | None:
        linktype = linktype_for(hatype)
        if linktype is None:
            self.counters["unknown_link"] += 1
            return None
        if self.interfaces and ifname not in self.interfaces:
            return None
        if self.gate is not None and not self.gate.admit(linktype, data, ts):
            self.counters["not_continuations"] += 1
            return None
        if self.watched is not None:
            if self._copies.copy(data, linktype, ifname, ts, lane):
                self.counters["lane_copies"] += 1
                return None
            self.counters["watched_lane"] += lane
        if self.dedupe_window and self._dedupe.duplicate(data, linktype, ifname, ts):
            self.counters["duplicates"] += 1
            return None
        self._index += 1
        self.counters["captured"] += 1
        self.lane_of_last = lane
        return Frame(ts=ts, data=data, linktype=linktype, index=self._index, orig_len=n, ifname=ifname)

    # -- statistics ----------------------------------------------------------
    def filter_info(self) -> dict[str, Any]:
        """Which kernel filter runs, why, and its counters (status file)."""
        out = self.kernel_filter.info() if self.kernel_filter is not None else {}
        if self.watched is not None:
            lane = self.watched
            out["watched_lane"] = {**lane.filter_info(), "kernel_drops": lane.counters["kernel_drops"]}
        return out

    def kernel_stats(self) -> tuple[int, int]:
        """(packets, drops) since the previous call, from PACKET_STATISTICS;
        also added to ``counters['kernel_packets']``/``['kernel_drops']``."""
        if self._sock is None:
            return (0, 0)
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        if self.watched is not None:
            self.watched.kernel_stats()
        self.counters["kernel_packets"] += packets
        self.counters["kernel_drops"] += drops
        return packets, drops
