"""The watched capture lane (egresswatch.capture.lanes), live: real kernel,
real processes, a veth into a namespace the test made.

- the lane's filter passes an MCP tree's first datagram and SYN by the socket
  records alone: the kernel files a socket before its packet reaches the
  capture taps (a sender preempted between its packet and the end of its
  send cannot leave the packet to another process's record);
- nothing of an unwatched process reaches the lane;
- a watched process's queries survive an unwatched flood that overflows the
  main ring, each handed over once.
"""

from __future__ import annotations

import struct
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from egresswatch.capture.live import LiveSource
from egresswatch.ebpf.loader import KernelFlows
from tests.helpers.netlab import Lab, missing, require_live, wait_for

pytestmark = pytest.mark.live

SENDER = r"""
import socket, sys
dst = sys.argv[1]
print("ready", flush=True)
for line in sys.stdin:
    what, arg = line.split()
    if what == "dns":  # a fire-and-forget query: unconnected, closed at once
        name = arg.encode()
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + bytes([len(name)]) + name + b"\x04test\x00\x00\x01\x00\x01"
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.sendto(q, (dst, 53))
        port = u.getsockname()[1]
        u.close()
    elif what == "flood":  # one socket, many queries
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for i in range(int(arg)):
            name = b"flood%d" % i
            u.sendto(b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00" + bytes([len(name)]) + name
                     + b"\x04test\x00\x00\x01\x00\x01", (dst, 53))
        port = u.getsockname()[1]
        u.close()
    else:  # a connection refused at once: its SYN is all it sends
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.connect((dst, 9))
        except OSError:
            pass
        port = t.getsockname()[1]
        t.close()
    print(port, flush=True)
"""


class Sender:
    def __init__(self, dst: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", SENDER, dst], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.pid = self.proc.pid

    def do(self, what: str, arg: str = "-") -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(f"{what} {arg}\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        self.proc.communicate("")


def ports(data: bytes) -> tuple[int, int, int] | None:
    """(IP protocol, source port, destination port) of an Ethernet IPv4 frame."""
    if len(data) < 38 or data[12:14] != b"\x08\x00":
        return None
    ihl = (data[14] & 15) * 4
    sp, dp = struct.unpack_from("!HH", data, 14 + ihl)
    return data[23], sp, dp


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFlows]:
    require_live()
    flows, why = KernelFlows.open()
    if flows is None:
        missing(f"eBPF attribution cannot load here: {why}")
    yield flows
    flows.close()


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def test_the_lane_takes_a_watched_process_s_first_packets_by_socket_record(
    kernel: KernelFlows, lab: Lab
) -> None:
    src = LiveSource(interfaces=[lab.veth_host]).open()
    try:
        why = src.open_watched(kernel.shared_maps(), by_task=False)  # socket records alone
        assert why == "", why
        assert src.watched is not None
        watched, other = Sender(lab.peer4), Sender(lab.peer4)
        kernel.watch([watched.pid])
        mine: set[int] = set()
        theirs: set[int] = set()
        for i in range(20):
            watched.do("dns", f"watched{i}")
            other.do("dns", f"other{i}")
            mine.add(watched.do("syn"))
            theirs.add(other.do("syn"))
        got: list[bytes] = []

        def all_there() -> bool:
            got.extend(data for data, *_ in src.watched.raw())  # type: ignore[union-attr]
            names = sum(1 for d in got if b"watched" in d)
            syns = {p[1] for d in got if (p := ports(d)) and p[0] == 6 and p[1] in mine}
            return names == 20 and syns == mine

        wait_for(all_there, 10, "the watched process's 20 queries and 20 SYNs in the lane")
        assert not [d for d in got if b"other" in d], "an unwatched process's query in the watched lane"
        assert not [d for d in got if (p := ports(d)) and p[0] == 6 and p[1] in theirs]
        stats = src.watched.kernel_filter.kernel.stats()  # type: ignore[union-attr]
        assert stats["watched"] >= 40 and stats["watched_by_current"] == 0
        watched.close()
        other.close()
    finally:
        src.close()


def test_a_watched_process_s_queries_survive_a_flood_that_overflows_the_ring(
    kernel: KernelFlows, lab: Lab
) -> None:
    """The main ring is 1 MiB and not read while an unwatched process floods;
    the watched process's queries, sent during the flood, all come out, once."""
    src = LiveSource(interfaces=[lab.veth_host], rcvbuf=1 << 20).open()
    try:
        assert src.open_watched(kernel.shared_maps()) == ""
        watched, flooder = Sender(lab.peer4), Sender(lab.peer4)
        kernel.watch([watched.pid])
        for i in range(50):
            flooder.do("flood", "2000")
            watched.do("dns", f"watched{i}")
        names: list[bytes] = []
        end = time.monotonic() + 2.0
        last = time.monotonic()
        while time.monotonic() < end and time.monotonic() - last < 1.0:
            for frame in src.frames(0.2):
                last = time.monotonic()
                if b"watched" in frame.data:
                    names.append(frame.data)
            if len(names) == 50:
                break
        src.kernel_stats()
        assert src.counters["kernel_drops"] > 0, "the flood did not overflow the main ring"
        got = sorted(int(d.split(b"watched")[1][:2].rstrip(b"\x04")) for d in names)
        assert got == list(range(50)), (
            f"{len(got)} of 50 watched queries, duplicates or gaps: {got}; {src.counters} {src.filter_info()}"
        )
        assert src.counters["watched_lane"] >= 1
        watched.close()
        flooder.close()
    finally:
        src.close()


def test_no_lane_without_the_attribution_maps(lab: Lab) -> None:
    require_live()
    src = LiveSource(interfaces=[lab.veth_host]).open()
    try:
        why = src.open_watched({})
        assert "needs the attribution programs' maps" in why and src.watched is None
    finally:
        src.close()


def test_one_packet_through_both_lanes_is_handed_over_once() -> None:
    from egresswatch.capture.lanes import LaneCopies

    copies = LaneCopies()
    pkt = b"\x00" * 12 + b"\x08\x00" + b"\x45" + b"\x00" * 40
    other = pkt[:-1] + b"\x01"
    assert not copies.copy(pkt, 1, "eth0", 100.0, 1)  # the lane's copy first
    assert copies.copy(pkt, 1, "eth0", 100.0, 0)  # the main ring's: a copy
    assert not copies.copy(pkt, 1, "eth0", 100.0, 0)  # a third one is a new packet
    assert not copies.copy(other, 1, "eth0", 100.5, 0)  # main first this time
    assert copies.copy(other, 1, "eth0", 100.5, 1)
    assert not copies.copy(pkt, 1, "eth1", 101.0, 1)  # another interface: not a copy
    assert not copies.copy(pkt, 1, "eth1", 101.5, 0)  # another time: not a copy
