"""LiveAttributor over real loopback sockets of real child processes (no root
needed: our own children's /proc entries are readable), and the pure parts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from egresswatch.attribute.attributor import LiveAttributor
from egresswatch.attribute.lineage import LineageTracker
from egresswatch.attribute.sockets import norm_ip, parse_net_table, read_net_tables
from egresswatch.mcp.match import RUN
from egresswatch.mcp.serverdef import ServerDef
from egresswatch.model import Frame, Observation
from tests.helpers.netlab import wait_for

TABLE4 = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0
   1: 0F02000A:A75A 0E02000A:01BB 06 00000000:00000000 03:0000058D 00000000     0        0 0 3 0
   2: garbage
"""
TABLE6 = """  sl  local_address                         remote_address                        st
   0: 0000000000000000FFFF00000100007F:0035 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 77 2 0
   1: B80D0120000000000000000001000000:1234 00000000000000000000000000000000:0000 07 00000000:00000000 00:00000000 00000000     0        0 78 2 0
"""


def test_parse_net_table() -> None:
    assert parse_net_table(TABLE4, "tcp") == {
        ("tcp", "127.0.0.1", 8080): 4242,
        ("tcp", "10.0.2.15", 42842): 0,
    }
    assert parse_net_table(TABLE6, "udp") == {
        ("udp", "127.0.0.1", 53): 77,
        ("udp", "2001:db8::1", 0x1234): 78,
    }
    assert norm_ip("::FFFF:10.0.0.1") == "10.0.0.1" and norm_ip("2001:DB8:0::1") == "2001:db8::1"
    assert norm_ip("not an ip") == "not an ip"


def test_parse_matches_the_kernel_table() -> None:
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
        s.bind(("::1", 0))
        port = s.getsockname()[1]
        table = read_net_tables(os.getpid(), "udp")
        assert table[("udp", "::1", port)] == os.fstat(s.fileno()).st_ino


CHILD = r"""
import socket, sys, time
kind, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
server = sys.argv[4] if len(sys.argv) > 4 else "127.0.0.1"
if kind == "tcp":
    s = socket.create_connection((server, port))
else:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((server, port))
    s.send(b"q")
print(s.getsockname()[1], flush=True)
time.sleep(wait)
"""


def obs(
    proto: Any,
    local_port: int,
    remote_port: int,
    kind: str = "connect",
    local: str = "127.0.0.1",
    remote: str = "127.0.0.1",
) -> Observation:
    if kind == "dns_answer":
        return Observation(0.0, 1, kind, proto, src=remote, sport=remote_port, dst=local, dport=local_port)
    return Observation(0.0, 1, kind, proto, src=local, sport=local_port, dst=remote, dport=remote_port)


def frame_now() -> Frame:
    return Frame(ts=time.time(), data=b"", linktype=1)


@pytest.fixture
def child_script(tmp_path: Path) -> Path:
    p = tmp_path / "mcp_child.py"
    p.write_text(CHILD)
    return p


def test_live_attribution_of_child_sockets(child_script: Path) -> None:
    srv = ServerDef(
        host="cursor",
        scope="user",
        file=Path("/x"),
        name="loop-srv",
        command=sys.executable,
        args=(str(child_script),),
    )
    tracker = LineageTracker([srv])
    tracker.seed()
    attributor = LiveAttributor(tracker, harvest_interval=0)
    with socket.socket() as lst, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        lst.bind(("127.0.0.1", 0))
        lst.listen()
        udp.bind(("127.0.0.53", 0))  # where systemd-resolved's stub listens
        tport, uport = lst.getsockname()[1], udp.getsockname()[1]
        procs = []
        try:
            tcp_child = subprocess.Popen(
                [sys.executable, str(child_script), "tcp", str(tport), "5"], stdout=subprocess.PIPE, text=True
            )
            udp_child = subprocess.Popen(
                [sys.executable, str(child_script), "udp", str(uport), "0.3", "127.0.0.53"],
                stdout=subprocess.PIPE,
                text=True,
            )
            procs = [tcp_child, udp_child]
            assert tcp_child.stdout and udp_child.stdout
            t_local, u_local = int(tcp_child.stdout.readline()), int(udp_child.stdout.readline())

            a = attributor.attribute(obs("tcp", t_local, tport), frame_now())
            assert a.process is not None and a.process.pid == tcp_child.pid, a.reason
            assert (a.server, a.host, a.phase, a.reason) == ("loop-srv", "cursor", RUN, "live")
            assert a.chain and a.chain[0].pid == os.getpid()

            q = attributor.attribute(
                obs("udp", u_local, uport, "dns_query", remote="127.0.0.53"), frame_now()
            )
            assert q.process is not None and q.process.pid == udp_child.pid
            udp_child.wait()
            wait_for(
                lambda: ("udp", "127.0.0.1", u_local) not in read_net_tables("self", "udp"), 5, "socket gone"
            )
            ans = attributor.attribute(
                obs("udp", u_local, uport, "dns_answer", remote="127.0.0.53"), frame_now()
            )
            assert ans.process is not None and ans.process.pid == udp_child.pid
            assert ans.server == "loop-srv"

            # our own (non-MCP) connection: found system-wide, not tied to a server
            with socket.create_connection(("127.0.0.1", tport)) as mine:
                m = attributor.attribute(obs("tcp", mine.getsockname()[1], tport), frame_now())
                assert m.process is not None and m.process.pid == os.getpid() and m.server is None
        finally:
            for p in procs:
                p.kill()
                p.wait()


def test_unknown_sockets_say_why(child_script: Path) -> None:
    tracker = LineageTracker([])
    tracker.seed()
    attributor = LiveAttributor(tracker, harvest_interval=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        free = s.getsockname()[1]
    a = attributor.attribute(obs("udp", free, 53), frame_now())
    assert a.process is None and a.reason == "no socket found (closed before lookup)"
    b = attributor.attribute(obs("tcp", 40000, 443, local="203.0.113.9"), frame_now())
    assert b.process is None and b.reason is not None and b.reason.startswith("not a local address")


def test_harvester_remembers_sockets_of_tree_processes(child_script: Path) -> None:
    srv = ServerDef(
        host="zed",
        scope="user",
        file=Path("/x"),
        name="h-srv",
        command=sys.executable,
        args=(str(child_script),),
    )
    tracker = LineageTracker([srv], poll_interval=0.02)
    tracker.start(use_connector=os.geteuid() == 0)
    attributor = LiveAttributor(tracker, harvest_interval=0)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        udp.bind(("127.0.0.1", 0))
        uport = udp.getsockname()[1]
        child = subprocess.Popen(
            [sys.executable, str(child_script), "udp", str(uport), "0.5"], stdout=subprocess.PIPE, text=True
        )
        try:
            assert child.stdout is not None
            local = int(child.stdout.readline())
            sent = Frame(ts=time.time(), data=b"", linktype=1)  # the query left while the child ran
            info = wait_for(lambda: tracker.lookup(child.pid)[0], 5, "child known")
            assert attributor.harvest() >= 1
            child.wait()
            wait_for(lambda: not tracker.alive(info.key), 5, "exit seen")
            a = attributor.attribute(obs("udp", local, uport, "dns_query"), sent)
            assert a.process is not None and a.process.pid == child.pid
            assert a.server == "h-srv" and a.reason == "remembered socket (process exited)"
            # a packet sent from that port after the child exited is someone else's: not the child
            exited = tracker.exit_time(info.key)
            assert exited is not None
            after_exit = Frame(ts=exited + 0.05, data=b"", linktype=1)  # 50 ms after the exit
            later = attributor.attribute(obs("udp", local, uport, "dns_query"), after_exit)
            assert later.process is None and attributor.counters["memory_stale"] == 1
            again = attributor.attribute(obs("udp", local, uport, "dns_answer"), sent)
            assert again.process is None  # the stale entry was dropped
        finally:
            child.kill()
            child.wait()
            tracker.stop()


def test_behind_the_capture_only_remembered_sockets_count(child_script: Path) -> None:
    """While the daemon is behind (hurry), no socket lookups: a harvested socket
    of an MCP tree process is still attributed, an unknown socket is not."""
    srv = ServerDef(host="zed", scope="user", file=Path("/x"), name="hurry-srv", command=sys.executable,
                    args=(str(child_script),))  # fmt: skip
    tracker = LineageTracker([srv], poll_interval=0.02)
    tracker.start(use_connector=os.geteuid() == 0)
    attributor = LiveAttributor(tracker, harvest_interval=0)
    attributor.hurry = lambda frame: True
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as mine,
    ):
        udp.bind(("127.0.0.1", 0))
        mine.connect(("127.0.0.1", 53))  # a live socket of this (unwatched) process
        uport = udp.getsockname()[1]
        child = subprocess.Popen([sys.executable, str(child_script), "udp", str(uport), "5"], stdout=subprocess.PIPE,
                                 text=True)  # fmt: skip
        try:
            assert child.stdout is not None
            local = int(child.stdout.readline())
            wait_for(lambda: tracker.lookup(child.pid)[0], 5, "child known")
            assert attributor.harvest() >= 1
            a = attributor.attribute(obs("udp", local, uport, "dns_query"), frame_now())
            assert a.process is not None and a.process.pid == child.pid and a.server == "hurry-srv"
            b = attributor.attribute(obs("udp", mine.getsockname()[1], 53, "dns_query"), frame_now())
            assert b.process is None and b.reason == "capture behind: remembered sockets only"
            assert attributor.counters["hurried"] >= 1
            attributor.hurry = None  # caught up: the socket lookup finds this process again
            c = attributor.attribute(obs("udp", mine.getsockname()[1], 53, "dns_query"), frame_now())
            assert c.process is not None and c.process.pid == os.getpid()
        finally:
            child.kill()
            child.wait()
            tracker.stop()


def test_query_owners_match_an_answer_to_its_query_only() -> None:
    from egresswatch.attribute.answers import QueryOwners
    from egresswatch.model import DNS_ANSWER, DNS_QUERY, Attribution, ProcessInfo

    me = Attribution(process=ProcessInfo(10, 1.0, 1, "srv", "/bin/srv", ("srv",), "u"), reason="kernel")

    def dns(kind: str, ts: float, dns_id: int = 7, qname: str = "a.test", port: int = 5000) -> Observation:
        ends = ("10.0.0.2", port, "10.0.0.1", 53) if kind == DNS_QUERY else ("10.0.0.1", 53, "10.0.0.2", port)
        return Observation(ts=ts, frame=1, kind=kind, proto="udp", src=ends[0], sport=ends[1], dst=ends[2],
                           dport=ends[3], qname=qname, dns_id=dns_id)  # fmt: skip

    q = QueryOwners(window=5.0, capacity=3)
    q.remember(dns(DNS_QUERY, 100.0), me)
    q.remember(dns(DNS_QUERY, 100.0, port=5001), Attribution(reason="no owner"))  # unattributed: not filed
    q.remember(dns(DNS_ANSWER, 100.0), me)  # answers are not queries
    assert len(q) == 1
    assert q.answer(dns(DNS_ANSWER, 100.01, qname="A.TEST")) is me  # names compare case-blind
    assert q.answer(dns(DNS_QUERY, 100.01)) is None
    assert q.answer(dns(DNS_ANSWER, 100.01, dns_id=8)) is None
    assert q.answer(dns(DNS_ANSWER, 100.01, qname="b.test")) is None
    assert q.answer(dns(DNS_ANSWER, 100.01, port=5001)) is None
    assert q.answer(dns(DNS_ANSWER, 105.5)) is None and len(q) == 0  # out of the window, and forgotten
    for port in range(4):
        q.remember(dns(DNS_QUERY, 200.0, port=port), me)
    assert len(q) == 3 and q.answer(dns(DNS_ANSWER, 200.0, port=0)) is None  # the oldest went first
