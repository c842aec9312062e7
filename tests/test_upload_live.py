"""Bytes sent per flow and the upload detector, live (issue #9): the real
daemon with its eBPF programs, a fake MCP host, a real TLS server in a lab
namespace.

The attacker's case: a watched server's long-lived process (older than 10 s)
resolves an allowlisted name and uploads 5 MB over TLS to it, then keeps the
connection open (no flow end). Its ``flow_summary`` is flagged ``upload`` with
the bytes it sent and alerted; an unrelated process uploading the same beside
it gets no summary and no flag; ``egresswatch stats`` shows the volume.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netlab import Lab, wait_for
from tests.test_kernel_attribution_live import REPO, Daemon, all_rows, log_lines, tmpdir700

pytestmark = pytest.mark.live
__all__ = ["tmpdir700"]  # the fixture, shared
DATA = Path(__file__).resolve().parent / "e2e_data"
SIZE = 5_000_000
LIMIT = 4_000_000
PORT = 8443
UDP_PORT = 40000
SINK = r"""
import socket, ssl, sys, threading
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(sys.argv[1], sys.argv[2])
s = socket.create_server(("::", int(sys.argv[3])), family=socket.AF_INET6, dualstack_ipv6=True)
print("ready", flush=True)
def drain(c):
    try:
        t = ctx.wrap_socket(c, server_side=True)
        while t.recv(1 << 16):
            pass
    except (OSError, ssl.SSLError):
        pass
    finally:
        c.close()
while True:
    c, _ = s.accept()
    threading.Thread(target=drain, args=(c,), daemon=True).start()
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns()
        lab.start_tls(443)  # makes the lab's certificate
        p = lab.spawn(sys.executable, "-c", SINK, str(lab.tmp / "cert.pem"), str(lab.tmp / "key.pem"), str(PORT),
                      stdout=subprocess.PIPE)  # fmt: skip
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield lab


def test_an_upload_to_an_allowlisted_name_is_flagged(lab: Lab, tmpdir700: Path) -> None:
    tmp = tmpdir700
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {lab.peer4}\noptions timeout:2 attempts:2\n")
    srv_log, other_log, go = tmp / "server.jsonl", tmp / "other.jsonl", tmp / "go"

    def cmd(mode: str, log: Path) -> list[str]:
        return [sys.executable, str(DATA / "upload_server.py"), mode, str(resolv), str(log), str(go), str(SIZE),
                str(PORT), lab.peer6, str(UDP_PORT)]  # fmt: skip

    d = Daemon(tmp, lab, {"fake": cmd("server", srv_log)}, {"fake": ["allowed.test", f"allowed.test:{PORT}"]},
               daemon="flow_summary_seconds = 1.0", policy=f"upload_max_bytes = {LIMIT}")  # fmt: skip
    other = None
    try:
        assert "attribution: ebpf" in d.status(), d.status()
        d.launch_host()
        other = subprocess.Popen(cmd("other", other_log))
        go.touch()
        wait_for(
            lambda: Path(f"{go}.server").exists() and Path(f"{go}.other").exists(), 60, "both uploads done"
        )
        srv = next(x for x in log_lines(srv_log) if x["what"] == "uploaded")
        oth = next(x for x in log_lines(other_log) if x["what"] == "uploaded")
        srv_udp = next(x for x in log_lines(srv_log) if x["what"] == "datagrams")
        oth_udp = next(x for x in log_lines(other_log) if x["what"] == "datagrams")
        assert next(x for x in log_lines(srv_log) if x["what"] == "start")["age"] >= 10.0

        def flagged() -> list[dict[str, Any]]:
            return [r for r in all_rows(d.db) if r["kind"] == "flow_summary" and r["reason"] == "upload"]

        rows = wait_for(flagged, 30, "the upload flagged")
        udp = wait_for(lambda: [r for r in flagged() if r["proto"] == "udp" and r["sport"] == srv_udp["sport"]
                                and r["bytes_out"] == srv_udp["bytes"]], 30, "the UDP upload flagged")  # fmt: skip
        wait_for(
            lambda: any("upload" in json.dumps(a) for _, a in d.alerts.arrivals()), 30, "the upload alert"
        )
        stats = subprocess.run([sys.executable, "-m", "egresswatch", "stats", "--db", str(d.db)],
                               capture_output=True, text=True, cwd=REPO, env=d.env)  # fmt: skip
        stats_json = subprocess.run([sys.executable, "-m", "egresswatch", "stats", "--db", str(d.db), "--format",
                                     "json"], capture_output=True, text=True, cwd=REPO, env=d.env)  # fmt: skip
    finally:
        if other is not None:
            other.kill()
            other.wait()
        d.close()
    everything = all_rows(d.db)
    summaries = [r for r in everything if r["kind"] == "flow_summary"]
    r = next(x for x in rows if x["proto"] == "tcp")
    assert (r["server"], r["pid"], r["dst_name"], r["dst"], r["sport"], r["dport"]) == (
        "fake", srv["pid"], "allowed.test", srv["dst"], srv["sport"], PORT)  # fmt: skip
    assert (r["verdict"], r["severity"], r["decides"]) == ("flagged", "high", 1)
    # the bytes the process handed to TLS, plus its records' overhead and the handshake (< 1%)
    assert SIZE <= r["bytes_out"] < SIZE * 1.01, r["bytes_out"]
    assert "allowed.test" in r["rule"] and f"{LIMIT:,}" in r["rule"]
    # the hello to the allowlisted name was allowed: the upload is what was flagged
    hello = [x for x in everything if x["kind"] == "tls_sni" and x["sport"] == srv["sport"]]
    assert hello and hello[0]["reason"] == "allowlist" and hello[0]["flow_id"] == r["flow_id"]
    mine = [x for x in summaries if x["sport"] == srv["sport"]]
    assert sum(x["bytes_new"] for x in mine) == max(x["bytes_out"] for x in mine)
    # datagrams of an unconnected socket: the exact payload bytes, to the address (never resolved)
    u = udp[-1]
    assert (u["server"], u["pid"], u["dst"], u["dport"], u["dst_name"]) == (
        "fake", srv["pid"], lab.peer6, UDP_PORT, None)  # fmt: skip
    assert lab.peer6 in u["rule"] and u["bytes_out"] == srv_udp["bytes"] >= SIZE
    # the unrelated process: its flows were never summarized, nothing flagged upload but the server's
    assert not [x for x in summaries if x["sport"] in (oth["sport"], oth_udp["sport"])]
    assert {(x["server"], x["sport"]) for x in summaries} == {
        ("fake", srv["sport"]),
        ("fake", srv_udp["sport"]),
    }
    # stats: the volume per server and destination
    assert stats.returncode == 0, stats.stderr
    sent = max(x["bytes_out"] for x in mine)
    assert f"uploaded {sent + srv_udp['bytes']:,} bytes" in stats.stdout, stats.stdout
    line = next(
        x for x in stats.stdout.splitlines() if x.strip().startswith("allowed.test") and f"{sent:,}" in x
    )
    assert line.split()[-1] == str(len([x for x in mine if x["reason"] == "upload"])), line
    fake = next(s for s in json.loads(stats_json.stdout) if s["server"] == "fake")
    ups = {x["destination"]: x["bytes_out"] for x in fake["uploads"]}
    assert ups == {"allowed.test": sent, lab.peer6: srv_udp["bytes"]}
    assert fake["bytes_out"] == sent + srv_udp["bytes"]
    assert os.path.exists(d.db)
