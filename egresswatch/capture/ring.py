"""The TPACKET_V3 memory-mapped receive ring of the capture socket.

The kernel fills blocks of frames and hands a block over when it is full or
``RETIRE_MS`` old, so one wakeup reads many frames without a system call each.
"""

from __future__ import annotations

import errno
import mmap
import socket
import struct
import time
from collections import Counter
from collections.abc import Iterator

from egresswatch.capture.bpf import ACCEPT
from egresswatch.errors import CaptureError

SOL_PACKET = 263
SO_TIMESTAMPNS = 35
SNAPLEN = ACCEPT
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


class Ring:
    """A TPACKET_V3 memory-mapped receive ring: the kernel fills blocks of
    frames and hands a block over when it is full or ``RETIRE_MS`` old, so one
    wakeup reads many frames without a system call each."""

    def __init__(self, sock: socket.socket, size: int, block: int = BLOCK_SIZE) -> None:
        """``block``: bytes per block; small blocks for sparse traffic (each block
        is handed over ``RETIRE_MS`` after its first frame, however empty)."""
        self.nr = max(4, size // block)
        self.bs = block
        sock.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
        frames = block // FRAME_SIZE * self.nr
        req = struct.pack("=7I", block, self.nr, FRAME_SIZE, frames, RETIRE_MS, 0, 0)
        sock.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
        self.mm = mmap.mmap(sock.fileno(), block * self.nr, mmap.MAP_SHARED,
                            mmap.PROT_READ | mmap.PROT_WRITE)  # fmt: skip
        self.cur = 0

    def ready(self, ahead: int = 0) -> bool:
        """The current block (or the one ``ahead`` of it) is ours to read."""
        idx = (self.cur + ahead) % self.nr
        return bool(_BLOCK.unpack_from(self.mm, idx * self.bs + 8)[0] & TP_STATUS_USER)

    def frames_at(self, idx: int) -> Iterator[tuple[int, bytes, int, float, int, int]]:
        """(position, data, orig_len, ts, ifindex, hatype) of a ready block's frames."""
        base = idx * self.bs
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
            struct.pack_into("=I", self.mm, self.cur * self.bs + 8, 0)  # TP_STATUS_KERNEL
            self.cur = (self.cur + 1) % self.nr

    def close(self) -> None:
        self.mm.close()


def recv_frames(
    sock: socket.socket, buf: bytearray, batch: int, counters: Counter[str]
) -> Iterator[tuple[bytes, int, float, str, int]]:
    """Without a ring: (data, orig_len, ts, ifname, hatype) of up to ``batch``
    frames queued on ``sock`` (non-blocking, SO_TIMESTAMPNS set), one
    ``recvmsg`` each."""
    view = memoryview(buf)
    anc_size = socket.CMSG_SPACE(16)
    for _ in range(batch):
        try:
            n, anc, _flags, addr = sock.recvmsg_into([buf], anc_size, socket.MSG_TRUNC)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            if exc.errno == errno.ENETDOWN:  # an interface went away mid-read
                counters["read_errors"] += 1
                continue
            raise CaptureError(f"capture read failed: {exc.strerror}") from None
        ts = 0.0
        for level, ctype, cdata in anc:
            if level == socket.SOL_SOCKET and ctype == SO_TIMESTAMPNS and len(cdata) >= 16:
                sec, nsec = struct.unpack_from("qq", cdata)
                ts = sec + nsec / 1e9
        yield bytes(view[: min(n, SNAPLEN)]), n, ts or time.time(), addr[0], addr[3]
