"""Live capture: one unbound AF_PACKET socket for every interface -> Frame.

An unbound ``AF_PACKET``/``SOCK_RAW`` socket receives the frames of every
interface, including interfaces created after it was opened (VPNs, docker
bridges, veths), each with its own link layer. ``recvmsg`` names the interface,
the packet type and the hardware type, from which the frame's linktype follows
(Ethernet and loopback: 1; tun/WireGuard/PPP/IP tunnels: raw IP, 101). The
kernel filter (:mod:`egresswatch.capture.bpf`) passes only what the decoders
need and drops the second copy of loopback packets. Frames carry the kernel's
receive timestamp (``SO_TIMESTAMPNS``), the only clock below capture.

The kernel passes every short PSH segment as a possible ClientHello
continuation (rule 4 of the filter); :class:`HelloGate` keeps only those of
flows whose hello start said more bytes were coming, so bulk transfers cost a
header parse per passed segment instead of a trip through the decoders.

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

import errno
import logging
import mmap
import select
import socket
import struct
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Sequence
from types import TracebackType

from egresswatch.capture import bpf
from egresswatch.decode.link import decode
from egresswatch.errors import CaptureError
from egresswatch.model import Frame, IPPacket

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_RCVBUFFORCE = 33
SO_TIMESTAMPNS = 35
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
MIB = 1 << 20
SNAPLEN = bpf.ACCEPT
BATCH = 512  # frames read per wakeup before the deadline is checked again
PRIVILEGE_HINT = "live capture needs root or CAP_NET_RAW/CAP_NET_ADMIN"
# TPACKET_V3 receive ring (linux/if_packet.h)
PACKET_RX_RING = 5
PACKET_VERSION = 10
TPACKET_V3 = 2
TP_STATUS_USER = 1
# The kernel hands a block over when it is full or RETIRE_MS old, whichever
# comes first. Below the rate that fills a block within RETIRE_MS, every block
# holds only RETIRE_MS of traffic, so the ring holds (blocks x RETIRE_MS) of
# backlog: 64 blocks of 1 MiB and 20 ms were 1.3 s (a DNS flood the pipeline
# was 2 s behind was dropped by the kernel with 60 of 64 MiB unused). 256 KiB
# blocks (a 64 MiB ring: 256) and 50 ms hold 12.8 s of a slow flood and about
# 370,000 DNS frames of a fast one; a lone packet waits at most 50 ms.
BLOCK_SIZE = 1 << 18
FRAME_SIZE = 2048
RETIRE_MS = 50  # a partly filled block is handed over after this long (added latency)
_HDR3 = struct.Struct("=IIIIIIHH")  # next_offset, sec, nsec, snaplen, len, status, mac, net
_SLL = struct.Struct("=iH")  # sockaddr_ll ifindex, hatype at frame + 52
_BLOCK = struct.Struct("=III")  # block_status, num_pkts, offset_to_first_pkt at block + 8


def linktype_for(hatype: int) -> int | None:
    """LINKTYPE_* of frames read with SOCK_RAW from an interface of ``hatype``."""
    if hatype in bpf.ETHERNET_HATYPES:
        return LINKTYPE_ETHERNET
    if hatype in bpf.RAW_IP_HATYPES:
        return LINKTYPE_RAW
    return None


def _l3_offset(linktype: int, data: bytes) -> int:
    if linktype != LINKTYPE_ETHERNET:
        return 0
    off, ethertype = 12, data[12:14]
    while ethertype in (b"\x81\x00", b"\x88\xa8") and off < 20:
        off += 4
        ethertype = data[off : off + 2]
    return off + 2


class HelloGate:
    """Userspace half of the continuation rule: a TCP segment that passed the
    kernel filter only for its shape (PSH, short, no TLS record header) is kept
    when an earlier segment of its flow started a ClientHello record longer than
    that segment, until the record's bytes have arrived or ``ttl`` has passed."""

    def __init__(self, max_flows: int = 4096, ttl: float = 5.0) -> None:
        self.max_flows = max_flows
        self.ttl = ttl
        self.pending: OrderedDict[tuple[str, int, str, int], tuple[float, int]] = OrderedDict()

    def admit(self, linktype: int, data: bytes, ts: float) -> bool:
        try:
            pkt = decode(linktype, data)
        except Exception:  # never let a parser bug lose a frame here
            return True
        if not isinstance(pkt, IPPacket) or pkt.proto != "tcp":
            return True
        p = pkt.payload
        if not p or pkt.tcp_flags & 0x02 or 53 in (pkt.sport, pkt.dport):
            return True
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if p[0] == bpf.TLS_HANDSHAKE and len(p) >= 2 and p[1] == 3:
            if len(p) >= 6 and p[5] == 1 and not pkt.truncated:  # a ClientHello record
                missing = 5 + int.from_bytes(p[3:5], "big") - len(p)
                if missing > 0:
                    self.pending[key] = (ts + self.ttl, missing)
                    self.pending.move_to_end(key)
                    while len(self.pending) > self.max_flows:
                        self.pending.popitem(last=False)
            return True
        entry = self.pending.get(key)
        if entry is None or entry[0] < ts:
            return False
        if entry[1] - len(p) <= 0:
            del self.pending[key]
        else:
            self.pending[key] = (entry[0], entry[1] - len(p))
        return True


class _Ring:
    """A TPACKET_V3 memory-mapped receive ring: the kernel fills blocks of
    frames and hands a block over when it is full or ``RETIRE_MS`` old, so one
    wakeup reads many frames without a system call each."""

    def __init__(self, sock: socket.socket, size: int) -> None:
        self.nr = max(4, size // BLOCK_SIZE)
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frames = BLOCK_SIZE // FRAME_SIZE * self.nr
        req = struct.pack("=7I", BLOCK_SIZE, self.nr, FRAME_SIZE, frames, RETIRE_MS, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.mm = mmap.mmap(sock.fileno(), BLOCK_SIZE * self.nr, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
        self.cur = 0

    def ready(self, ahead: int = 0) -> bool:
        """The current block (or the one ``ahead`` of it) is ours to read."""
        idx = (self.cur + ahead) % self.nr
        return bool(_BLOCK.unpack_from(self.mm, idx * BLOCK_SIZE + 8)[0] & TP_STATUS_USER)

    def frames_at(self, idx: int) -> Iterator[tuple[int, bytes, int, float, int, int]]:
        """(position, data, orig_len, ts, ifindex, hatype) of a ready block's frames."""
        base = idx * BLOCK_SIZE
        mm = self.mm
        _, count, off = _BLOCK.unpack_from(mm, base + 8)
        pos = base + off
        for _ in range(count):
            nxt, sec, nsec, snap, length, _st, mac, _net = _HDR3.unpack_from(mm, pos)
            ifindex, hatype = _SLL.unpack_from(mm, pos + 52)
            yield pos, mm[pos + mac : pos + mac + snap], length, sec + nsec / 1e9, ifindex, hatype
            if not nxt:
                break
            pos += nxt

    def block(self, skip: set[int] | None = None) -> Iterator[tuple[bytes, int, float, int, int]]:
        """(data, orig_len, ts, ifindex, hatype) of the current block's frames, but
        those at a position in ``skip`` (already handed over by the fast lane); the
        block goes back to the kernel when the iteration ends (or is abandoned)."""
        try:
            for pos, data, length, ts, ifindex, hatype in self.frames_at(self.cur):
                if skip is None or pos not in skip:
                    yield data, length, ts, ifindex, hatype
        finally:
            struct.pack_into("=I", self.mm, self.cur * BLOCK_SIZE + 8, 0)  # TP_STATUS_KERNEL
            self.cur = (self.cur + 1) % self.nr

    def close(self) -> None:
        self.mm.close()


class LiveSource:
    """``with LiveSource() as src: for frame in src.frames(0.5): ...``

    ``interfaces`` restricts capture to those interface names (empty: all,
    new ones included); with exactly one, the socket is bound to it, so other
    interfaces' traffic never takes room in the ring. ``program`` replaces the built-in BPF filter;
    ``hello_gate=False`` keeps every frame the kernel filter passed (tests).
    """

    def __init__(
        self,
        interfaces: Sequence[str] = (),
        program: list[bpf.Insn] | None = None,
        rcvbuf: int = 8 * MIB,
        dedupe_window: float = 0.05,
        hello_gate: bool = True,
        ring: bool = True,
    ) -> None:
        self.interfaces = frozenset(interfaces)
        self.program = program
        self.rcvbuf = rcvbuf
        self.dedupe_window = dedupe_window
        self.gate = HelloGate() if hello_gate else None
        self.use_ring = ring
        self._ring: _Ring | None = None
        self._ifnames: dict[int, tuple[str, float]] = {}
        self.counters: Counter[str] = Counter()
        self._sock: socket.socket | None = None
        self._buf = bytearray(SNAPLEN)
        self._view = memoryview(self._buf)
        self._anc = socket.CMSG_SPACE(16)
        self._index = 0
        self._seen: dict[int, tuple[int, float]] = {}
        self._seen_purge = 0.0
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
                bpf.attach(sock, self.program)
            except OSError as exc:
                raise CaptureError(f"the kernel rejected the capture filter: {exc.strerror}") from None
            sock.setblocking(False)
            self._sock = sock
            self._drain_unfiltered()
            if self.use_ring:
                try:
                    self._ring = _Ring(sock, self.rcvbuf)
                except OSError as exc:  # old kernel or locked memory limit: plain reads
                    log.warning("no TPACKET_V3 ring (%s); reading frames one by one", exc.strerror)
            self.kernel_stats()  # reset the kernel's counters
        except BaseException:
            sock.close()
            self._sock = None
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
                    frame = self._make_frame(data, length, ts, self._ifname(ifindex), hatype)
                    if frame is not None:
                        yield frame
                if time.monotonic() >= deadline:
                    return

    def _fast_lane(self, ring: _Ring) -> Iterator[Frame]:
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
                frame = self._make_frame(data, length, ts, self._ifname(ifindex), hatype)
                if frame is not None:
                    self.counters["fast_lane"] += 1
                    yield frame

    def _read_batch(self) -> Iterator[Frame]:
        assert self._sock is not None
        recv = self._sock.recvmsg_into
        for _ in range(BATCH):
            try:
                n, anc, flags, addr = recv([self._buf], self._anc, socket.MSG_TRUNC)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno == errno.ENETDOWN:  # an interface went away mid-read
                    self.counters["read_errors"] += 1
                    continue
                raise CaptureError(f"capture read failed: {exc.strerror}") from None
            ts = 0.0
            for level, ctype, cdata in anc:
                if level == socket.SOL_SOCKET and ctype == SO_TIMESTAMPNS and len(cdata) >= 16:
                    sec, nsec = struct.unpack_from("qq", cdata)
                    ts = sec + nsec / 1e9
            data = bytes(self._view[: min(n, SNAPLEN)])
            frame = self._make_frame(data, n, ts or time.time(), addr[0], addr[3])
            if frame is not None:
                yield frame

    def _ifname(self, ifindex: int) -> str:
        """Interface name for an index, cached for a few seconds (indexes of
        deleted interfaces are reused)."""
        now = time.monotonic()
        hit = self._ifnames.get(ifindex)
        if hit is not None and hit[1] > now:
            return hit[0]
        try:
            name = socket.if_indextoname(ifindex)
        except OSError:
            name = f"if{ifindex}"
        if len(self._ifnames) > 4096:
            self._ifnames.clear()
        self._ifnames[ifindex] = (name, now + 5.0)
        return name

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
        if self.dedupe_window and self._duplicate(data, linktype, ifname, ts):
            self.counters["duplicates"] += 1
            return None
        self._index += 1
        self.counters["captured"] += 1
        return Frame(ts=ts, data=data, linktype=linktype, index=self._index, orig_len=n, ifname=ifname)

    def _duplicate(self, data: bytes, linktype: int, ifname: str, ts: float) -> bool:
        try:
            l3 = data[_l3_offset(linktype, data) :]
        except IndexError:
            return False
        key = hash(l3)
        ifkey = hash(ifname)
        prev = self._seen.get(key)
        self._seen[key] = (ifkey, ts)
        if ts - self._seen_purge > 1.0:
            cutoff = ts - self.dedupe_window
            self._seen = {k: v for k, v in self._seen.items() if v[1] >= cutoff}
            self._seen_purge = ts
        return prev is not None and prev[0] != ifkey and ts - prev[1] <= self.dedupe_window

    # -- statistics ----------------------------------------------------------
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
    return (
        True,
        f"packet socket opened, filter of {len(bpf.build_program())} instructions attached, rcvbuf {size}",
    )
