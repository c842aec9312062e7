"""Processes inside another network (and PID) namespace are attributed by their
host pid, live (issue #9): the real daemon with its eBPF programs, a watched
MCP server that starts a client inside a container-like namespace pair
(``ip netns exec`` + ``unshare --pid``), whose packets cross the lab's veth
into the root namespace, where the daemon captures them.

The client's sockets live about a millisecond and it is pid 1 of its own PID
namespace: its DNS query, its SYN, its UDP and UDP-Lite datagrams (``udp_flow``) and its ICMP
echo request from a "ping" socket (an ``icmp_flow``, judged ``direct_ip``)
must name its host pid and the server.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netlab import Lab, wait_for
from tests.test_kernel_attribution_live import Daemon, all_rows, log_lines, tmpdir700

pytestmark = pytest.mark.live
__all__ = ["tmpdir700"]
DATA = Path(__file__).resolve().parent / "e2e_data"


def test_a_client_in_another_namespace_is_attributed_by_host_pid(tmpdir700: Path) -> None:
    tmp = tmpdir700
    log, go = tmp / "client.jsonl", tmp / "go"
    with Lab() as lab:
        cmd = [sys.executable, str(DATA / "netns_server.py"), lab.ns, lab.host4, str(log), str(go)]
        # ping sockets for every group, as systemd's default sysctl has it (this namespace only)
        lab.nsrun("sysctl", "-qw", "net.ipv4.ping_group_range=0 2147483647")
        d = Daemon(tmp, lab, {"fake": cmd}, {"fake": ["nothing.test"]})
        try:
            assert "attribution: ebpf" in d.status(), d.status()
            d.launch_host()
            go.touch()
            acts = wait_for(lambda: (x := log_lines(log) if log.exists() else []) and len(x) == 5 and x, 30,
                            "the client's five actions")  # fmt: skip
            by = {a["what"]: a for a in acts}
            host4 = lab.host4

            def seen() -> dict[str, dict[str, Any]] | None:
                rows = all_rows(d.db)
                found = {
                    "dns": [r for r in rows if r["kind"] == "dns_query" and r["qname"] == "inns.test"],
                    "syn": [r for r in rows if r["kind"] == "connect" and r["dst"] == host4
                            and r["sport"] == by["syn"]["sport"]],
                    "datagram": [r for r in rows if r["kind"] == "udp_flow" and r["dst"] == host4
                                 and r["dport"] == 40000 and r["sport"] == by["datagram"]["sport"]],
                    "udplite": [r for r in rows if r["kind"] == "udp_flow" and r["proto"] == "udplite"
                                and r["dport"] == 40001 and r["sport"] == by["udplite"]["sport"]],
                    "ping": [r for r in rows if r["kind"] == "icmp_flow" and r["dst"] == host4
                             and r["proto"] == "icmp" and r["sport"] == by["ping"]["sport"]],
                }  # fmt: skip
                return {k: v[0] for k, v in found.items()} if all(found.values()) else None

            rows = wait_for(seen, 30, "the client's events")
        finally:
            d.close()
        # the bytes the echo carried: the ping flow's summary, made at shutdown
        summaries = [r for r in all_rows(d.db) if r["kind"] == "flow_summary" and r["proto"] == "icmp"
                     and r["sport"] == by["ping"]["sport"]]  # fmt: skip
    nspid = acts[0]["nspid"]
    assert len(nspid) == 2 and nspid[-1] == 1, nspid  # pid 1 inside, another pid on the host
    for what, r in rows.items():
        assert (r["server"], r["pid"], r["attribution"]) == ("fake", nspid[0], "kernel"), (what, r)
    assert rows["dns"]["sport"] == by["dns"]["sport"] and rows["dns"]["src"] == lab.peer4
    assert (rows["ping"]["verdict"], rows["ping"]["reason"]) == ("flagged", "direct_ip"), rows["ping"]
    assert rows["ping"]["rule"] == f"{lab.host4} (ICMP echo) was never resolved by this server", rows["ping"]
    assert [(r["server"], r["dst"], r["bytes_out"]) for r in summaries] == [("fake", lab.host4, 64)], (
        summaries
    )
