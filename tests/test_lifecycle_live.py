"""Daemon lifecycle: SIGHUP with a broken config keeps the running config (seen in
the verdicts of a live MCP server's traffic) and logs why; an interface created
after READY=1 is captured."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.flood import count_rows, flood_config, flood_daemon, start_flood, stop
from tests.helpers.netlab import Lab, require_live, wait_for

pytestmark = pytest.mark.live
HOST = Path(__file__).resolve().parent / "e2e_data" / "fake_mcp_host.py"

# an MCP server that asks for good.test and other.test every 0.1 s (the same names:
# many distinct ones would be flagged by the DNS exfiltration detector, whatever the allowlist)
PROBE = r"""
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((sys.argv[1], 53))
n = 0
while True:
    for dom in ("good", "other"):
        name = f"{dom}.test".encode()
        q = (n & 0xFFFF).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
        s.send(q + b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00\x00\x01\x00\x01")
    n += 1
    time.sleep(0.1)
"""


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_live()
    with Lab() as lab:
        lab.start_udp_sink(53)
        yield lab


def _verdicts_after(db: Path, ts: float) -> list[str]:
    """Verdicts (with the reason when flagged) of the probe's other.test queries after ts."""
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT verdict, reason FROM events WHERE server = 'probe' AND kind = 'dns_query'"
            " AND qname = 'other.test' AND ts > ?", (ts,)
        ).fetchall()  # fmt: skip
    finally:
        conn.close()
    return [r[0] if r[0] != "flagged" else f"flagged:{r[1]}" for r in rows]


def test_sighup_with_a_broken_config_keeps_the_running_one(lab: Lab) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        (tmp / "home" / ".cursor").mkdir(parents=True)
        (tmp / "probe.py").write_text(PROBE)
        mcp = tmp / "home" / ".cursor" / "mcp.json"
        mcp.write_text(json.dumps({"mcpServers": {"probe": {"command": sys.executable,
                                                            "args": [str(tmp / "probe.py"), lab.peer4]}}}))  # fmt: skip
        good = '[servers.probe]\nallow = ["good.test"]\n'
        both = '[servers.probe]\nallow = ["good.test", "other.test"]\n'
        d = flood_daemon(tmp, tmp / "events.db", lab.veth_host, extra=good)
        d.start()
        host = subprocess.Popen([sys.executable, str(HOST), str(mcp)], start_new_session=True)
        try:
            wait_for(
                lambda: set(_verdicts_after(d.db, 0)) == {"flagged:not_allowlisted"}, 30, "other.test flagged"
            )
            assert d.proc is not None
            for broken, why in (
                (dict(extra=both, broken=True), "TOML syntax error"),
                (dict(extra='[servers.probe]\nallow = ["other.test", "bad entry"]\n'), "invalid entry"),
            ):
                rejected = d.log().count("reload rejected")
                d.write_config(flood_config(tmp, d.db, **broken))  # type: ignore[arg-type]
                d.send_signal(signal.SIGHUP)
                wait_for(lambda: d.log().count("reload rejected") > rejected, 20, f"rejection ({why})")  # noqa: B023
                line = [x for x in d.log().splitlines() if "reload rejected" in x][-1]
                assert str(d.config) in line, line  # says which file and why
                after = time.time()
                wait_for(lambda: len(_verdicts_after(d.db, after)) >= 5, 20, "events after the reload")  # noqa: B023
                verdicts = set(_verdicts_after(d.db, after))
                assert verdicts == {"flagged:not_allowlisted"}, (why, verdicts)  # the running allowlist
                assert d.proc.poll() is None
            assert "bad entry" in d.log()
            # the probe is sensitive to the config: a good one changes the verdict
            d.write_config(flood_config(tmp, d.db, extra=both))
            d.send_signal(signal.SIGHUP)
            wait_for(lambda: "configuration reloaded" in d.log(), 20, "reload")
            after = time.time()
            wait_for(lambda: len(_verdicts_after(d.db, after)) >= 5, 20, "events after the good reload")
            assert set(_verdicts_after(d.db, after)) == {"allowed"}
            assert d.counter("reloads_rejected") == 2 and d.counter("reloads") == 1
            assert d.stop() == 0
        finally:
            os.killpg(host.pid, signal.SIGKILL)
            host.wait()
            d.stop()
            d.close()


def test_interface_created_after_ready_is_captured() -> None:
    require_live()
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        d = flood_daemon(tmp, tmp / "events.db", None)  # every interface, as configured by default
        d.start()
        try:
            with Lab() as lab:  # its veth pair is created after READY=1
                lab.start_udp_sink(53)
                flood = start_flood(lab, "newveth", 200)
                try:
                    wait_for(
                        lambda: count_rows(d.db, "newveth") >= 20, 30, "queries over the new veth stored"
                    )
                finally:
                    stop(flood)
            assert d.stop() == 0
        finally:
            d.stop()
            d.close()
