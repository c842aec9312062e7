"""Bytes sent per flow in the kernel (egress.bpf.c + volume.bpf.h), live: the
real programs, real sockets (root; fails in CI when they cannot load).

- unconnected UDP: bytes per destination, from sendto and from each message
  of a sendmmsg(2), whose destinations also reach the udp_flow ring buffer;
- TCP: one count per flow whoever writes (a parent and its forked child take
  turns on one connection), and the flow's end (FIN, or a reset that releases
  the port before the state change);
- MPTCP: counted under its first subflow's 5-tuple.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import threading
from collections.abc import Iterator

import pytest

from egresswatch.ebpf import records
from egresswatch.ebpf.loader import KernelFlows
from tests.helpers.netlab import missing, wait_for

pytestmark = pytest.mark.live
MMSGHDR = 64


class _IOVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class _MsgHdr(ctypes.Structure):
    _fields_ = [("name", ctypes.c_void_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(_IOVec)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]  # fmt: skip


class _MMsgHdr(ctypes.Structure):
    _fields_ = [("hdr", _MsgHdr), ("len", ctypes.c_uint)]


def sendmmsg(sock: socket.socket, msgs: list[tuple[bytes, tuple[str, int] | None]]) -> int:
    """sendmmsg(2) (Python has none): each message with its own destination, or none."""
    libc = ctypes.CDLL(None, use_errno=True)
    vec = (_MMsgHdr * len(msgs))()
    keep: list[object] = []
    for i, (data, dst) in enumerate(msgs):
        buf = ctypes.create_string_buffer(data, len(data))
        iov = _IOVec(ctypes.cast(buf, ctypes.c_void_p), len(data))
        keep += [buf, iov]
        vec[i].hdr.iov = ctypes.pointer(iov)
        vec[i].hdr.iovlen = 1
        if dst is not None:
            sa = (
                struct.pack("<H", socket.AF_INET)
                + struct.pack(">H", dst[1])
                + socket.inet_aton(dst[0])
                + bytes(8)
            )
            name = ctypes.create_string_buffer(sa, len(sa))
            keep.append(name)
            vec[i].hdr.name = ctypes.cast(name, ctypes.c_void_p)
            vec[i].hdr.namelen = len(sa)
    assert ctypes.sizeof(_MMsgHdr) == MMSGHDR
    n = libc.sendmmsg(sock.fileno(), vec, len(msgs), 0)
    if n < 0:
        raise OSError(ctypes.get_errno(), "sendmmsg")
    return int(n)


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFlows]:
    flows, why = KernelFlows.open()
    if flows is None:
        missing(f"eBPF programs did not load: {why}")
    assert flows is not None
    yield flows
    flows.close()


def sinks(n: int) -> list[socket.socket]:
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        out.append(s)
    return out


def test_unconnected_udp_counts_bytes_per_destination(kernel: KernelFlows) -> None:
    a, b = sinks(2)
    da, db = a.getsockname(), b.getsockname()
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    for _ in range(3):
        u.sendto(b"x" * 1000, da)
    u.sendto(b"y" * 10, db)
    local = u.getsockname()
    u.close()
    va, vb = kernel.volume("udp", local, da), kernel.volume("udp", local, db)
    assert va is not None and (va.bytes_out, va.sends, va.end_ns) == (3000, 3, 0)
    assert vb is not None and (vb.bytes_out, vb.sends) == (10, 1)
    # a wildcard bind is filed under the unspecified local address, found from the real one
    w = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    w.bind(("0.0.0.0", 0))
    w.sendto(b"z" * 7, da)
    vw = kernel.volume("udp", ("127.0.0.1", w.getsockname()[1]), da)
    w.close()
    assert vw is not None and vw.bytes_out == 7
    for s in (a, b):
        s.close()


def test_sendmmsg_destinations_are_recorded(kernel: KernelFlows) -> None:
    events: list[records.FlowOwner] = []
    kernel.start_events(events.append)
    a, b, c = sinks(3)
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.bind(("127.0.0.1", 0))
    dests = [s.getsockname() for s in (a, b, c)]
    assert sendmmsg(u, [(b"1" * 100, dests[0]), (b"2" * 200, dests[1]), (b"3" * 300, dests[2]),
                        (b"4" * 400, dests[0])]) == 4  # fmt: skip
    local = u.getsockname()
    u.close()
    got = [kernel.volume("udp", local, d) for d in dests]
    assert [(v.bytes_out, v.sends) if v else None for v in got] == [(500, 2), (200, 1), (300, 1)]
    # the first datagram to each destination is a udp_flow record naming it
    wait_for(lambda: len([e for e in events if e.local == local]) >= 3, 5, "udp_flow records")
    assert sorted(e.remote for e in events if e.local == local) == sorted(dests)
    # glibc's resolver sends its A and AAAA queries with sendmmsg on a connected socket
    v = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    v.connect(dests[1])
    assert sendmmsg(v, [(b"q" * 30, None), (b"r" * 40, None)]) == 2
    vv = kernel.volume("udp", v.getsockname(), dests[1])
    v.close()
    assert vv is not None and (vv.bytes_out, vv.sends) == (70, 2)
    for s in (a, b, c):
        s.close()


def _server() -> tuple[socket.socket, tuple[str, int]]:
    srv = socket.socket(socket.AF_INET)
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    return srv, srv.getsockname()


def test_tcp_one_count_whoever_writes_and_the_flow_end(kernel: KernelFlows) -> None:
    srv, addr = _server()
    c = socket.create_connection(addr)
    peer, _ = srv.accept()
    c.sendall(b"a" * 1000)
    pid = os.fork()
    if pid == 0:  # the child writes on the inherited connection, then the parent again
        try:
            c.sendall(b"b" * 2000)
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    c.sendall(b"c" * 3000)
    local = c.getsockname()
    v = kernel.volume("tcp", local, addr)
    assert v is not None and (v.bytes_out, v.sends, v.end_ns) == (6000, 3, 0)
    owner = kernel.owner("tcp", local, addr)
    assert owner is not None and owner.bytes_out == 3000  # the flow map restarts at each new owner
    r, w = os.pipe()  # sendfile(2) and splice go through the same tracepoint
    os.write(w, b"s" * 500)
    os.close(w)
    assert os.splice(r, c.fileno(), 500) == 500
    os.close(r)
    with open(__file__, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        assert os.sendfile(c.fileno(), fh.fileno(), 0, size) == size
    v = kernel.volume("tcp", local, addr)
    assert v is not None and v.bytes_out == 6500 + size
    c.close()  # FIN: the flow stopped sending
    v = wait_for(lambda: (x := kernel.volume("tcp", local, addr)) is not None and x.end_ns and x, 5, "end")
    assert v.bytes_out == 6500 + size and v.end_ns >= v.last_ns
    peer.close()
    # a reset: the port is released before the state change to CLOSE is traced
    c2 = socket.create_connection(addr)
    peer2, _ = srv.accept()
    c2.sendall(b"d" * 10)
    local2 = c2.getsockname()
    c2.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    c2.close()  # RST, straight from ESTABLISHED to CLOSE
    v2 = wait_for(
        lambda: (x := kernel.volume("tcp", local2, addr)) is not None and x.end_ns and x, 5, "reset"
    )
    assert v2.bytes_out == 10
    peer2.close()
    srv.close()


IPPROTO_MPTCP = 262


def test_an_mptcp_upload_is_counted_under_its_subflow(kernel: KernelFlows) -> None:
    """Any account may open an MPTCP socket (net.mptcp.enabled, on by default):
    its sends are the MPTCP socket's, not its TCP subflow's, and were counted
    nowhere, so an upload through one escaped the upload detector."""
    try:
        srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    except OSError as e:
        missing(f"no MPTCP in this kernel: {e}")
    srv.bind(("127.0.0.1", 0))
    srv.listen()
    addr = srv.getsockname()
    c = socket.socket(socket.AF_INET, socket.SOCK_STREAM, IPPROTO_MPTCP)
    c.connect(addr)
    peer, _ = srv.accept()
    reader = threading.Thread(
        target=lambda: [None for _ in iter(lambda: peer.recv(1 << 20), b"")], daemon=True
    )
    reader.start()
    try:
        for _ in range(20):
            c.sendall(b"u" * 50_000)
        local = c.getsockname()
        v = kernel.volume("tcp", local, addr)
        assert v is not None and (v.bytes_out, v.sends) == (1_000_000, 20), v
        owner = kernel.owner("tcp", local, addr)
        assert owner is not None and owner.tgid == os.getpid()
    finally:
        c.close()
        reader.join(timeout=10)
        peer.close()
        srv.close()
