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
that carries data), so they do not wait for the backlog.

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
from egresswatch.capture.ring import SNAPLEN, SO_TIMESTAMPNS, SOL_PACKET, Ring, recv_frames
from egresswatch.errors import CaptureError
from egresswatch.model import Frame

__all__ = ["PRIVILEGE_HINT", "HelloGate", "LiveSource", "can_capture", "linktype_for"]

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
MIB = 1 << 20
BATCH = 512  # frames read per wakeup before the deadline is checked again
PRIVILEGE_HINT = "live capture needs root or CAP_NET_RAW/CAP_NET_ADMIN"


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
    ) -> None:
        self.interfaces = frozenset(interfaces)
        self.program = program
        self.rcvbuf = rcvbuf
        self.dedupe_window = dedupe_window
        self.hello_gate = hello_gate
        self.ebpf = ebpf
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
        try:
            sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        except PermissionError:
            raise CaptureError(PRIVILEGE_HINT) from None
        except OSError as exc:
            raise CaptureError(f"cannot open a packet socket: {exc.strerror}") from None
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, self.rcvbuf)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rcvbuf)
            sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
            if len(self.interfaces) == 1:  # one interface: the kernel queues only its frames
                (name,) = self.interfaces
                try:
                    sock.bind((name, 0))
                except OSError as exc:
                    raise CaptureError(f"interface {name}: {exc.strerror}") from None
            try:
                self.kernel_filter = filters.attach(sock, self.program, self.hello_gate, self.ebpf)
            except OSError as exc:
                raise CaptureError(f"the kernel rejected the capture filter: {exc.strerror}") from None
            self.gate = self.kernel_filter.gate
            sock.setblocking(False)
            self._sock = sock
            self._drain_unfiltered()
            if self.use_ring:
                try:
                    self._ring = Ring(sock, self.rcvbuf)
                except OSError as exc:  # old kernel or locked memory limit: plain reads
                    log.warning("no TPACKET_V3 ring (%s); reading frames one by one", exc.strerror)
            self.kernel_stats()  # reset the kernel's counters
        except BaseException:
            sock.close()
            self._sock = None
            if self.kernel_filter is not None:
                self.kernel_filter.close()
            raise
        return self

    def _drain_unfiltered(self) -> None:
        """Frames queued between socket() and SO_ATTACH_FILTER bypassed the filter."""
        assert self._sock is not None
        while True:
            try:
                self._sock.recv_into(self._buf)
            except (BlockingIOError, InterruptedError):
                return

    def close(self) -> None:
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
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            ready, _, _ = select.select(watch, [], [], remaining)
            if wake_fd is not None and wake_fd in ready:
                return
            if fd not in ready:
                continue
            if self._ring is None:
                yield from self._read_batch()
                continue
            ring = self._ring
            while ring.ready():
                if self.priority is not None:
                    yield from self._fast_lane(ring)
                cur = ring.cur
                self._scanned.discard(cur)
                for data, length, ts, ifindex, hatype in ring.block(self._ahead.pop(cur, None)):
                    frame = self._make_frame(data, length, ts, self._ifnames.name(ifindex), hatype)
                    if frame is not None:
                        yield frame
                if time.monotonic() >= deadline:
                    return

    def _fast_lane(self, ring: Ring) -> Iterator[Frame]:
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
                if linktype is None or not self.priority(linktype, data):
                    continue
                self._ahead.setdefault(idx, set()).add(pos)
                frame = self._make_frame(data, length, ts, self._ifnames.name(ifindex), hatype)
                if frame is not None:
                    self.counters["fast_lane"] += 1
                    yield frame

    def _read_batch(self) -> Iterator[Frame]:
        assert self._sock is not None
        for data, n, ts, ifname, hatype in recv_frames(self._sock, self._buf, BATCH, self.counters):
            frame = self._make_frame(data, n, ts, ifname, hatype)
            if frame is not None:
                yield frame

    def _make_frame(self, data: bytes, n: int, ts: float, ifname: str, hatype: int) -> Frame | None:
        linktype = linktype_for(hatype)
        if linktype is None:
            self.counters["unknown_link"] += 1
            return None
        if self.interfaces and ifname not in self.interfaces:
            return None
        if self.gate is not None and not self.gate.admit(linktype, data, ts):
            self.counters["not_continuations"] += 1
            return None
        if self.dedupe_window and self._dedupe.duplicate(data, linktype, ifname, ts):
            self.counters["duplicates"] += 1
            return None
        self._index += 1
        self.counters["captured"] += 1
        return Frame(ts=ts, data=data, linktype=linktype, index=self._index, orig_len=n, ifname=ifname)

    # -- statistics ----------------------------------------------------------
    def filter_info(self) -> dict[str, Any]:
        """Which kernel filter runs, why, and its counters (status file)."""
        return self.kernel_filter.info() if self.kernel_filter is not None else {}

    def kernel_stats(self) -> tuple[int, int]:
        """(packets, drops) since the previous call, from PACKET_STATISTICS;
        also added to ``counters['kernel_packets']``/``['kernel_drops']``."""
        if self._sock is None:
            return (0, 0)
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        packets, drops = struct.unpack("II", raw)
        self.counters["kernel_packets"] += packets
        self.counters["kernel_drops"] += drops
        return packets, drops


def can_capture() -> tuple[bool, str]:
    """Whether a packet socket can be opened and the filter attached (doctor)."""
    try:
        with LiveSource(rcvbuf=64 * 1024) as src:
            size = src.rcvbuf_effective
    except CaptureError as exc:
        return False, str(exc)
    active = src.kernel_filter
    assert active is not None
    return True, f"packet socket opened, rcvbuf {size}; filter: {active.mode}: {active.reason}"
