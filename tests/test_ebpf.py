"""egresswatch.ebpf: the committed object is its source's build, and the real
kernel fills the maps as documented (root; fails in CI when it cannot load)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psutil
import pytest

from egresswatch.attribute.procread import kernel_view
from egresswatch.capture.live import LiveSource
from egresswatch.decode.link import decode
from egresswatch.ebpf import records
from egresswatch.ebpf.loader import OBJECT, KernelFlows
from egresswatch.model import IPPacket, ProcessInfo
from tests.helpers.netlab import missing, wait_for

REPO = Path(__file__).resolve().parents[1]


def test_committed_object_is_rebuilt_byte_for_byte(tmp_path: Path) -> None:
    for tool in ("clang", "llvm-strip"):
        if shutil.which(tool) is None:
            missing(f"{tool} not installed (scripts/setup.sh --test installs clang and llvm)")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        missing("libbpf-dev not installed")
    out = tmp_path / "egress.bpf.o"
    subprocess.run([str(REPO / "scripts" / "build-bpf.sh"), str(out)], check=True)
    assert out.read_bytes() == OBJECT.read_bytes(), (
        "egress.bpf.o is stale: run scripts/build-bpf.sh and commit"
    )


def test_records_round_trip() -> None:
    assert records.pack_ip("198.18.0.1") == b"\0" * 10 + b"\xff\xff" + bytes([198, 18, 0, 1])
    assert (
        records.pack_ip("0.0.0.0") == records.pack_ip("::") == records.pack_ip("::ffff:0.0.0.0") == bytes(16)
    )
    assert records.unpack_ip(records.pack_ip("198.18.0.1")) == "198.18.0.1"
    assert records.unpack_ip(records.pack_ip("fd00::1")) == "fd00::1"
    key = records.flow_key("udp", records.pack_ip("10.0.0.1"), 5353, records.ANY, 0)
    val = records.FLOW_VAL.pack(7, 8, 10**9, 1, 2, 3, 4, 5, b"comm", 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, b"")
    fo = records.parse_flow(key, val)
    assert (fo.proto, fo.local, fo.remote, fo.tgid, fo.pid, fo.bytes_out, fo.comm, fo.ppid) == (
        "udp", ("10.0.0.1", 5353), ("::", 0), 7, 8, 3, "comm", 6)  # fmt: skip
    tick = 1.0 / records.CLK_TCK
    assert [round(k[1] - fo.create_time, 6) for k in fo.near_keys()] == [round(-tick, 6), round(tick, 6)]


def test_kernel_view_prefers_what_was_exec_d() -> None:
    start = 5 * 10**9
    ct = records.create_time(start)
    info = ProcessInfo(10, ct, 1, "sshd", "/opt/evil", ("/usr/sbin/sshd", "-D"), "u")
    raw = records.EXEC_VAL.pack(start, 10, 20, b"evil", b"/opt/evil", b"/opt/evil\0--serve\0")
    rec = records.parse_exec(10, raw)
    seen = kernel_view(info, rec)
    assert (seen.cmdline, seen.name) == (("/opt/evil", "--serve"), "evil")
    same = ProcessInfo(10, ct, 1, "evil", "/opt/evil", ("/opt/evil", "--serve"), "u")
    assert kernel_view(same, rec) is same
    # argv longer than the 512 bytes kept: /proc (complete) wins while it starts the same
    long = ("/opt/evil", "x" * 600)
    raw = records.EXEC_VAL.pack(start, 10, 512, b"evil", b"/opt/evil", "\0".join(long).encode()[:512])
    full = ProcessInfo(10, ct, 1, "evil", "/opt/evil", long, "u")
    assert kernel_view(full, records.parse_exec(10, raw)) is full


@pytest.fixture(scope="module")
def kernel() -> Iterator[KernelFlows]:
    flows, why = KernelFlows.open()
    if flows is None:
        missing(f"eBPF programs did not load: {why}")
    assert flows is not None
    yield flows
    flows.close()


@pytest.fixture(scope="module")
def events(kernel: KernelFlows) -> list[records.FlowOwner]:
    """The first-datagram records (udp_events) of the whole module, in order."""
    got: list[records.FlowOwner] = []
    kernel.start_events(got.append)
    return got


def me() -> tuple[int, float]:
    return os.getpid(), psutil.Process().create_time()


def test_unconnected_udp_closed_at_once_is_owned(
    kernel: KernelFlows, events: list[records.FlowOwner]
) -> None:
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    ports = []
    for fam, dst in ((socket.AF_INET, ("127.0.0.1", sink.getsockname()[1])), (socket.AF_INET6, ("::1", 9))):
        u = socket.socket(fam, socket.SOCK_DGRAM)
        for _ in range(3):
            u.sendto(b"q" * 33, dst)
        ports.append((u.getsockname()[1], dst))
        u.close()  # fire and forget
    for port, dst in ports:
        rec = kernel.owner("udp", ("127.0.0.1" if "." in dst[0] else "::1", port), dst)
        assert rec is not None
        assert (rec.tgid, rec.create_time) == me() and rec.remote == ("::", 0)  # filed under the local end
        assert (rec.bytes_out, rec.sends, rec.ppid) == (99, 3, os.getppid())
    # the first datagram of each (process, destination) flow, once
    wait_for(lambda: len([e for e in events if e.tgid == os.getpid()]) >= 2, 5, "udp_flow events")
    mine = [e for e in events if e.tgid == os.getpid()]
    assert sorted(e.remote for e in mine) == sorted([("127.0.0.1", ports[0][1][1]), ("::1", 9)])
    sink.close()


def test_an_unprivileged_ping_socket_is_recorded_and_made_an_icmp_flow(
    kernel: KernelFlows, events: list[records.FlowOwner], tmp_path: Path
) -> None:
    """ICMP echo ("ping") sockets need no privilege where net.ipv4.ping_group_range
    allows (systemd's default: every group): an echo request carries any payload
    to any address. Sent as nobody from a namespace of the test's own (the range
    opened there only), IPv4 and IPv6: each socket is filed with its sender, and
    its first echo to a destination is an event, which the attributor makes an
    ``icmp_flow`` for a process of an MCP tree."""
    from egresswatch.attribute.attributor import LiveAttributor
    from egresswatch.attribute.kernel import KernelAttributor
    from egresswatch.attribute.lineage import LineageTracker

    ns = f"ewping{os.getpid()}"
    run = ["ip", "netns", "exec", ns]
    subprocess.run(["ip", "netns", "add", ns], check=True)
    code = (
        "import socket, sys\n"
        "if True:\n"
        "    for fam, proto, echo, dst in ((socket.AF_INET, socket.IPPROTO_ICMP, 8, '127.0.0.1'),\n"
        "                                  (socket.AF_INET6, socket.IPPROTO_ICMPV6, 128, '::1')):\n"
        "        s = socket.socket(fam, socket.SOCK_DGRAM, proto)\n"
        "        s.sendto(bytes([echo]) + bytes(7) + b'aws_secret_access_key=' * 4, (dst, 0))\n"
        "        print(s.getsockname()[1])\n"
        "        s.close()\n"
    )
    try:
        subprocess.run([*run, "ip", "link", "set", "lo", "up"], check=True)
        subprocess.run([*run, "sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647"], check=True)
        p = subprocess.run([*run, "setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
                            "/usr/bin/python3", "-c", code], capture_output=True, text=True, timeout=30)  # fmt: skip
        assert p.returncode == 0, p.stderr
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)
    idents = [int(x) for x in p.stdout.split()]
    assert len(idents) == 2
    pinger = wait_for(
        lambda: [e for e in events if e.proto in ("icmp", "icmp6") and e.local[1] in idents] or None, 5,
        "the echo sockets' first-datagram events",
    )  # fmt: skip
    assert sorted((e.proto, e.remote) for e in pinger) == [("icmp", ("127.0.0.1", 0)), ("icmp6", ("::1", 0))]
    assert {e.bytes_out for e in pinger} == {8 + 88}
    assert len({(e.tgid, e.create_time) for e in pinger}) == 1 and pinger[0].comm == "python3"
    # outside every MCP tree: no event (tests/test_netns_live.py has a watched server's)
    kern = KernelAttributor(kernel, LiveAttributor(LineageTracker([])))
    assert [kern.udp_flow(e) for e in pinger] == [None, None]
    assert kern.counters["icmp_flow_outside_mcp"] == 2 and not kern.counters["udp_flow_outside_mcp"]


def test_udp_lite_is_recorded(kernel: KernelFlows, events: list[records.FlowOwner]) -> None:
    """UDP-Lite (IP protocol 136) needs no privilege and passes no capture rule:
    only the kernel's record shows it."""
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)
    u.sendto(b"lite" * 10, ("127.0.0.1", 9))
    port = u.getsockname()[1]
    u.close()
    rec = kernel.owner("udplite", ("127.0.0.1", port), ("127.0.0.1", 9))
    assert rec is not None and rec.proto == "udplite" and (rec.tgid, rec.create_time) == me(), rec
    first = wait_for(lambda: [e for e in events if e.proto == "udplite" and e.local[1] == port] or None, 5,
                     "the UDP-Lite first-datagram event")  # fmt: skip
    assert [(e.remote, e.bytes_out) for e in first] == [(("127.0.0.1", 9), 40)]


def test_tcp_from_a_thread_and_a_refused_connect(kernel: KernelFlows) -> None:
    srv = socket.socket(socket.AF_INET6)
    srv.bind(("::1", 0))
    srv.listen()
    got: list[int] = []

    def client() -> None:
        c = socket.create_connection(("::1", srv.getsockname()[1]))
        got.append(c.getsockname()[1])
        c.send(b"hello")
        c.close()

    t = threading.Thread(target=client)
    t.start()
    t.join()
    rec = kernel.owner("tcp", ("::1", got[0]), ("::1", srv.getsockname()[1]))
    assert rec is not None and (rec.tgid, rec.create_time) == me() and rec.pid != os.getpid()
    assert rec.bytes_out == 5
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    port = free.getsockname()[1]
    free.close()
    r = socket.socket()
    assert r.connect_ex(("127.0.0.1", port)) != 0  # reset inside connect(2): no data ever sent
    lport = r.getsockname()[1] if r.getsockname()[1] else None
    r.close()
    found = [f for f in kernel.flows() if f.proto == "tcp" and f.remote == ("127.0.0.1", port)]
    assert found and (found[0].tgid, found[0].create_time) == me()
    assert lport is None or found[0].local[1] == lport
    srv.close()


def test_exec_record_is_what_the_kernel_ran(kernel: KernelFlows) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", "import sys; sys.stdin.read()", "marker-arg"], stdin=subprocess.PIPE
    )
    try:
        # Popen returns once exec closed its pipe, a moment before the exec tracepoint:
        # until then the pid's record may be an earlier process's (told by its start time)
        created = psutil.Process(p.pid).create_time()
        rec = wait_for(lambda: (r := kernel.exec_record(p.pid)) is not None and r.create_time == created and r,
                       5, "this process's exec record")  # fmt: skip
        assert rec.argv == (sys.executable, "-c", "import sys; sys.stdin.read()", "marker-arg")
        assert rec.filename == sys.executable and not rec.truncated
    finally:
        p.communicate(b"")


def test_a_reused_port_belongs_to_its_latest_sender(kernel: KernelFlows) -> None:
    """A connected socket's record (full 4-tuple) must not shadow a later
    unconnected socket on the same port (filed under the local end only)."""
    dst = ("127.0.0.1", 9)
    threads: list[int] = []

    def first() -> None:
        a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        a.bind(("127.0.0.1", 0))
        a.connect(dst)
        a.send(b"one")
        threads.append(a.getsockname()[1])
        a.close()

    t = threading.Thread(target=first)
    t.start()
    t.join()
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b.bind(("127.0.0.1", threads[0]))
    b.sendto(b"two", dst)
    b.close()
    rec = kernel.owner("udp", ("127.0.0.1", threads[0]), dst)
    assert rec is not None and rec.pid == os.getpid() and rec.remote == ("::", 0)


def test_an_answer_belongs_to_its_query_after_the_port_is_reused(kernel: KernelFlows) -> None:
    """An unrelated process's fire-and-forget query (socket closed at once), then
    another process's lookup from the same port: the first query's answer, handled
    only after the port was reused, is still the first process's."""
    from egresswatch.attribute.attributor import LiveAttributor
    from egresswatch.attribute.kernel import KernelAttributor
    from egresswatch.attribute.lineage import LineageTracker
    from egresswatch.model import DNS_ANSWER, DNS_QUERY, Frame, Observation

    resolver = ("127.0.0.1", 53)
    code = (
        "import socket, sys\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "port = int(sys.argv[1])\n"
        "if port: u.bind(('127.0.0.1', port)); u.connect(('127.0.0.1', 53)); u.send(b'q' * 30)\n"
        "else: u.sendto(b'q' * 30, ('127.0.0.1', 53))\n"
        "print(u.getsockname()[1], flush=True); u.close(); sys.stdin.read()\n"
    )
    first = subprocess.Popen([sys.executable, "-c", code, "0"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             text=True)  # fmt: skip
    assert first.stdout is not None
    port = int(first.stdout.readline())
    sent = time.time()
    gap_end = sent + 0.02  # the answer came 1 ms after the query; the port is reused 20 ms later
    while time.time() < gap_end:
        time.sleep(0.002)
    second = subprocess.Popen([sys.executable, "-c", code, str(port)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert second.stdout is not None and int(second.stdout.readline()) == port
    try:
        kern = KernelAttributor(kernel, LiveAttributor(LineageTracker([])))

        def obs(kind: str, ts: float) -> Observation:
            ends = ("127.0.0.1", port, *resolver) if kind == DNS_QUERY else (*resolver, "127.0.0.1", port)
            return Observation(ts=ts, frame=1, kind=kind, proto="udp", src=ends[0], sport=ends[1], dst=ends[2],
                               dport=ends[3], qname="x.test", qtype=1, dns_id=7)  # fmt: skip

        def pid(kind: str, ts: float) -> int | None:
            attr = kern.attribute(obs(kind, ts), Frame(ts=ts, data=b"", linktype=1))
            return attr.process.pid if attr.process is not None else None

        # the answer alone: the later socket's record came after it, so it is not taken
        assert pid(DNS_ANSWER, sent + 0.001) == first.pid
        # the query filed, its answer takes the query's attribution (counted)
        assert pid(DNS_QUERY, sent) == first.pid
        assert pid(DNS_ANSWER, sent + 0.001) == first.pid
        assert kern.counters["kernel_answer_of_query"] == 1
        # the reused port's own traffic is the second process's
        assert pid(DNS_QUERY, time.time()) == second.pid
    finally:
        for p in (first, second):
            p.communicate("")


@pytest.mark.parametrize("gap", [0.01, 0.0], ids=["10ms", "at-once"])
@pytest.mark.parametrize("later", ["sendto", "connect"])
def test_a_query_is_not_given_to_a_later_datagram_from_its_port(
    kernel: KernelFlows, later: str, gap: float
) -> None:
    """A process's connected lookup (getaddrinfo's shape), then, 10 ms later
    or as soon as its socket is closed (within the slack a record filed after
    its packet is allowed), another process's datagram from the same port:
    handled after both (the daemon reads packets up to seconds late), the
    query is still the first process's. ``sendto``: the later record is filed
    under the port alone, which the query's lookup also tries; ``connect``:
    under the same address, which keeps the first owner as its previous one."""
    from egresswatch.attribute.attributor import LiveAttributor
    from egresswatch.attribute.kernel import KernelAttributor
    from egresswatch.attribute.lineage import LineageTracker
    from egresswatch.model import DNS_QUERY, Frame, Observation

    code = (
        "import socket, sys, time\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "port, how = sys.stdin.readline().split()\n"
        "if int(port): u.bind(('127.0.0.1', int(port)))\n"
        "if how == 'sendto': u.sendto(b'd' * 30, ('127.0.0.1', 9))\n"
        "else: u.connect(('127.0.0.1', 53)); u.send(b'q' * 30)\n"
        "print(u.getsockname()[1], time.time(), flush=True); u.close(); sys.stdin.read()\n"
    )
    first, second = (subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                      text=True) for _ in range(2))  # fmt: skip
    assert first.stdin is not None and first.stdout is not None
    assert second.stdin is not None and second.stdout is not None
    with LiveSource(interfaces=["lo"]) as lo:  # the query's own capture timestamp, as the daemon has it
        first.stdin.write("0 connect\n")
        first.stdin.flush()
        port_text, printed = first.stdout.readline().split()
        port = int(port_text)
        while time.time() < float(printed) + gap:
            time.sleep(0.001)
        second.stdin.write(f"{port} {later}\n")
        second.stdin.flush()
        assert int(second.stdout.readline().split()[0]) == port
        times: list[float] = []

        def captured() -> bool:
            for f in lo.frames(0.05):
                pkt = decode(f.linktype, f.data)
                if isinstance(pkt, IPPacket) and pkt.proto == "udp" and (pkt.sport, pkt.dport) == (port, 53):
                    times.append(f.ts)
            return bool(times)

        wait_for(captured, 5, "the query's frame")
    sent = times[0]
    try:
        kern = KernelAttributor(kernel, LiveAttributor(LineageTracker([])))
        query = Observation(ts=sent, frame=1, kind=DNS_QUERY, proto="udp", src="127.0.0.1", sport=port,
                            dst="127.0.0.1", dport=53, qname="x.test", qtype=1, dns_id=7)  # fmt: skip
        attr = kern.attribute(query, Frame(ts=sent, data=b"", linktype=1))
        assert attr.process is not None and attr.process.pid == first.pid, (attr, first.pid, second.pid)
        if later == "connect":
            assert kernel.counters["previous_owner"] >= 1
    finally:
        for p in (first, second):
            p.stdin.close()  # type: ignore[union-attr]
            p.wait()


def test_a_record_reused_by_its_own_process_keeps_its_first_time(kernel: KernelFlows) -> None:
    """Two sockets of one process on the same port, 0.3 s apart: one record,
    first_ns the first socket's, last_ns the second's (so a udp_flow event of the
    second socket's first datagram takes last_ns: egresswatch.attribute.kernel)."""
    times = []
    for dport in (9, 10):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        u.bind(("127.0.0.1", times[0][0] if times else 0))
        times.append((u.getsockname()[1], time.time()))
        u.sendto(b"x", ("127.0.0.1", dport))
        u.close()
        deadline = time.time() + 0.3
        while dport == 9 and time.time() < deadline:
            time.sleep(0.01)
    rec = kernel.owner("udp", ("127.0.0.1", times[0][0]), ("127.0.0.1", 10))
    assert rec is not None and rec.tgid == os.getpid()
    assert abs(kernel.epoch(rec.first_ns) - times[0][1]) < 0.1
    assert abs(kernel.epoch(rec.last_ns) - times[1][1]) < 0.1


def test_behind_a_flood_only_watched_processes_get_their_ancestry(kernel: KernelFlows) -> None:
    """While the pipeline is behind (hurry), a process outside the MCP trees (not
    in the kernel's watched map) is named from its record alone; a watched one
    still goes through the tracker."""
    from egresswatch.attribute.attributor import LiveAttributor
    from egresswatch.attribute.kernel import KernelAttributor
    from egresswatch.attribute.lineage import LineageTracker
    from egresswatch.model import DNS_QUERY, Frame, Observation

    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.connect(("127.0.0.1", 53))
    u.send(b"q" * 20)
    port = u.getsockname()[1]
    u.close()
    live = LiveAttributor(LineageTracker([]))
    live.hurry = lambda _frame: True
    kern = KernelAttributor(kernel, live)
    now = time.time()
    obs = Observation(ts=now, frame=1, kind=DNS_QUERY, proto="udp", src="127.0.0.1", sport=port,
                      dst="127.0.0.1", dport=53, qname="x.test", qtype=1, dns_id=1)  # fmt: skip
    attr = kern.attribute(obs, Frame(ts=now, data=b"x", linktype=1))
    assert attr.process is not None and attr.process.key == me() and attr.server is None
    assert kern.counters["kernel_hurried"] == 1 and kern.counters["kernel"] == 0
    assert not kernel.is_watched(os.getpid())
    kernel.watch([os.getpid()])
    try:
        assert kernel.is_watched(os.getpid())
        attr = kern.attribute(replace(obs, dns_id=2), Frame(ts=now, data=b"x", linktype=1))
        assert attr.process is not None and attr.process.key == me()
        assert kern.counters["kernel_hurried"] == 1 and kern.counters["kernel"] == 1
    finally:
        assert kernel.unwatch(os.getpid())


@pytest.mark.parametrize("how", ["fork event, exec record", "fork event, /proc", "read before exec"])
def test_a_child_that_sends_right_after_exec_is_named_by_what_it_exec_d(
    kernel: KernelFlows, how: str
) -> None:
    """The tracker files a fork as a copy of its parent until the exec event is
    handled; a child that sends a moment after exec is attributed before that
    (seen in CI: a container's ``nc`` reported as the ``sh`` that forked it).
    The tracker asks the kernel's exec record (or /proc without eBPF) for a
    fork copy; a record read from /proc before the exec is corrected by the
    comm the kernel saw at send time. Either way the attribution says what the
    process runs."""
    from egresswatch.attribute.attributor import LiveAttributor
    from egresswatch.attribute.kernel import KernelAttributor
    from egresswatch.attribute.lineage import LineageTracker
    from egresswatch.model import DNS_QUERY, Frame, Observation

    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    port = sink.getsockname()[1]
    tracker = LineageTracker([])
    if how != "fork event, /proc":
        tracker.exec_source = kernel.exec_record
    go_r, go_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: wait until the tracker filed it, then exec and send
        try:
            os.close(go_w)
            os.close(hold_w)
            os.read(go_r, 1)
            os.dup2(hold_r, 0)
            os.execv("/bin/bash", ["bash", "-c", f"echo x > /dev/udp/127.0.0.1/{port}; read -r _"])
        finally:
            os._exit(127)
    os.close(go_r)
    os.close(hold_r)
    try:
        if how == "read before exec":
            filed, _chain, _lin = tracker.lookup(pid)  # read from /proc: not a fork copy
        else:
            tracker.on_fork(pid, os.getpid())  # the fork event, handled; the exec event is not
            filed, _chain, _lin = tracker.lookup(pid)
        assert filed is not None and list(filed.cmdline) == psutil.Process().cmdline()
        os.write(go_w, b"x")
        sink.settimeout(5)
        assert sink.recv(16) == b"x\n"
        rec = wait_for(
            lambda: next((f for f in kernel.flows() if f.remote == ("127.0.0.1", port) and f.tgid == pid), None),
            5, "the child's record",
        )  # fmt: skip
        kern = KernelAttributor(kernel, LiveAttributor(tracker))
        now = time.time()
        obs = Observation(ts=now, frame=1, kind=DNS_QUERY, proto="udp", src="127.0.0.1", sport=rec.local[1],
                          dst="127.0.0.1", dport=port, qname="x.test", qtype=1, dns_id=1)  # fmt: skip
        attr = kern.attribute(obs, Frame(ts=now, data=b"x", linktype=1))
        assert attr.process is not None and attr.process.pid == pid, attr
        assert attr.process.name == "bash" and attr.process.cmdline[0] == "bash", attr.process
        by_tracker = how != "read before exec"
        assert tracker.counters["exec_before_event"] == int(by_tracker)
        assert kern.counters["kernel_exec_since_filed"] == int(not by_tracker)
    finally:
        os.close(go_w)
        os.close(hold_w)
        os.waitpid(pid, 0)
        sink.close()
