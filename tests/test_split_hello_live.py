"""A ClientHello cut into segments the way an attacker chooses, live.

The client owns its segmentation: with TCP_NODELAY every write is a segment
of its own once the previous one is acknowledged. A hello whose first
segment is the record's first byte alone, or its 5-byte header alone, does
not start with a whole ``16 03 .. .. .. 01``; a hello padded past two
segments has a full-size middle segment, which is not of the continuation
shape; a hello split into two TLS records may start its second record in the
middle of a segment. Each must still give its SNI, with the eBPF capture
filter (flow state in the kernel) and, but for the middle segments longer
than the classic filter can pass without state (docs/capture.md), with the
classic filter and the userspace gate. So must a hello sent in a TCP Fast
Open SYN (a client's second connection to a server that gave it a cookie),
its continuation after the handshake.
"""

from __future__ import annotations

import fcntl
import socket
import struct
import subprocess
import sys
import termios
from collections.abc import Callable, Iterator
from functools import partial

import pytest

from egresswatch.capture.filters import CLASSIC, EBPF
from egresswatch.capture.live import LiveSource
from egresswatch.decode.engine import Engine
from egresswatch.decode.link import decode
from egresswatch.model import IPPacket
from pcaps.make_tls_dns import client_hello, tls_record
from tests.helpers.netlab import Lab, missing, run, wait_for
from tests.test_capture_ebpf import DISCARD_SERVER

pytestmark = pytest.mark.live
PORT = 9000
FAST_OPEN_PORT = 9001
TCP_FASTOPEN_CONNECT = 30  # linux/tcp.h; not in the socket module
FAST_OPEN_SERVER = DISCARD_SERVER.replace(
    "s.listen(8)", "s.setsockopt(socket.IPPROTO_TCP,socket.TCP_FASTOPEN,16);s.listen(8)"
)


def pq(sni: str) -> bytes:
    return tls_record(client_hello(sni, pq=True, sni_last=True))


def padded(sni: str) -> bytes:
    """A hello of three full segments and more: SNI after a 2 KB padding extension."""
    return tls_record(client_hello(sni, pq=True, sni_last=True, padding=2000))


def two_records(sni: str) -> bytes:
    """One hello in two TLS records, the first holding its first 100 bytes."""
    msg = client_hello(sni, pq=True, sni_last=True)
    return tls_record(msg[:100]) + tls_record(msg[100:])


# name -> (the record(s), where the writes are cut, does the classic filter keep it)
CASES: dict[str, tuple[Callable[[str], bytes], list[int], bool]] = {
    "first-byte-alone": (pq, [1, 1201], True),
    "three-bytes": (pq, [3, 1203], True),
    "header-alone": (pq, [5, 1205], True),
    "header-byte-by-byte": (pq, [1, 2, 3, 4, 5, 1005], True),
    "last-byte-alone": (pq, [1000, -1], True),
    "full-size-middle": (padded, [600, 2048], False),
    "second-record-mid-segment": (two_records, [50, 200, 1100], True),
    "second-record-in-full-segment": (two_records, [50, 1450], False),
}


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.nsrun("sysctl", "-qw", "net.ipv4.tcp_fastopen=3")  # the lab's server side
        for server, port in ((DISCARD_SERVER, PORT), (FAST_OPEN_SERVER, FAST_OPEN_PORT)):
            p = lab.spawn(sys.executable, "-c", server, str(port), stdout=subprocess.PIPE)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        run("ethtool", "-K", lab.veth_host, "tso", "off", "gso", "off", "gro", "off")
        yield lab


def unacked(s: socket.socket) -> int:
    return int(struct.unpack("i", fcntl.ioctl(s.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0])


def send_in_writes(lab: Lab, record: bytes, cuts: list[int]) -> None:
    """``record`` in one write per piece, each acknowledged before the next is
    written, so no two pieces share a segment."""
    ends = [c % len(record) for c in cuts] + [len(record)]
    s = socket.create_connection((lab.peer4, PORT), timeout=5)
    try:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = 0
        for end in ends:
            s.sendall(record[start:end])
            wait_for(lambda: unacked(s) == 0, 5, "the peer's acknowledgement")
            start = end
    finally:
        s.close()


@pytest.mark.parametrize("mode", [EBPF, CLASSIC])
def test_a_hello_cut_anywhere_gives_its_sni(lab: Lab, mode: str) -> None:
    engine = Engine()
    seen: set[str | None] = set()
    lost = []
    with LiveSource(interfaces=[lab.veth_host], ebpf=mode == EBPF) as src:
        if src.kernel_filter is None or src.kernel_filter.mode != mode:
            missing(f"the {mode} capture filter did not load: {src.filter_info()}")

        def arrived(sni: str) -> bool:
            for f in src.frames(0.05):
                seen.update(o.sni for o in engine.feed(f) if o.kind in ("tls_sni", "tls_incomplete"))
            return sni in seen

        for name, (build, cuts, classic) in CASES.items():
            if mode == CLASSIC and not classic:
                continue
            sni = f"{name}.split.example"
            record = build(sni)
            assert sni.encode() not in record[: cuts[0]]  # the first write never holds it
            send_in_writes(lab, record, cuts)
            try:
                wait_for(partial(arrived, sni), 3, f"the SNI of {name}")
            except AssertionError:
                lost.append(name)
        counters = src.filter_info().get("counters")
    assert not lost, f"{mode}: no SNI from {lost}; filter counters {counters}"


def fast_open(lab: Lab, data: bytes) -> None:
    s = socket.socket()
    try:
        s.setsockopt(socket.IPPROTO_TCP, TCP_FASTOPEN_CONNECT, 1)
        s.settimeout(5)
        s.connect((lab.peer4, FAST_OPEN_PORT))  # no SYN yet: it leaves with the first write
        s.sendall(data)
        wait_for(lambda: unacked(s) == 0, 5, "the peer's acknowledgement")
    finally:
        s.close()


@pytest.mark.parametrize("mode", [EBPF, CLASSIC])
def test_a_hello_in_a_fast_open_syn_gives_its_sni(lab: Lab, mode: str) -> None:
    with open("/proc/sys/net/ipv4/tcp_fastopen") as f:
        if not int(f.read()) & 1:
            missing("TCP Fast Open is off for clients here (net.ipv4.tcp_fastopen)")
    sni = f"fast-open-{mode}.split.example"
    record = pq(sni)
    assert sni.encode() not in record[:1400]  # after what a SYN can carry
    engine = Engine()
    seen: set[str | None] = set()
    syn_data: list[bytes] = []
    with LiveSource(interfaces=[lab.veth_host], ebpf=mode == EBPF) as src:
        if src.kernel_filter is None or src.kernel_filter.mode != mode:
            missing(f"the {mode} capture filter did not load: {src.filter_info()}")
        fast_open(lab, b"cookie, please")  # the first connection gets the server's cookie
        fast_open(lab, record)  # the second sends data in its SYN

        def arrived() -> bool:
            for f in src.frames(0.05):
                pkt = decode(f.linktype, f.data)
                if isinstance(pkt, IPPacket) and pkt.proto == "tcp" and pkt.tcp_flags & 0x12 == 0x02:
                    syn_data.append(pkt.payload)
                seen.update(o.sni for o in engine.feed(f) if o.kind in ("tls_sni", "tls_incomplete"))
            return sni in seen

        try:
            wait_for(arrived, 3, "the SNI")
        except AssertionError:
            pass
        counters = src.filter_info().get("counters")
    assert any(d.startswith(b"\x16\x03") for d in syn_data), f"no hello in a SYN: {syn_data}"
    assert sni in seen, f"{mode}: no SNI from a hello in a Fast Open SYN ({seen}); filter counters {counters}"
