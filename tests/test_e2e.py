"""End to end: the real daemon (`python -m egresswatch run`) against a fake MCP
host and a malicious fake MCP server talking to a lab namespace.

Readiness comes from READY=1 on a test-owned NOTIFY_SOCKET, never a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.alertsink import Receiver
from tests.helpers.daemonrun import REPO, Daemon, query
from tests.helpers.netlab import Lab, wait_for
from tests.test_notifier import session_bus, wait_opened  # noqa: F401 - fixture

pytestmark = pytest.mark.live
DATA = Path(__file__).resolve().parent / "e2e_data"


def config(tmp: Path, url: str, bad: bool = False) -> str:
    text = f"""
[daemon]
database = "{tmp}/events.db"
[discovery]
extra_homes = ["{tmp}/home"]
[alerts]
urls = ["{url}"]
min_severity = "low"
window_seconds = 1
[policy]
learning = false
[servers.fake]
allow = ["allowed.test", "allowed.test:443"]
"""
    return text + ("\n[nonsense]\nx = 1\n" if bad else "")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns()
        lab.start_tls(443)
        lab.start_udp_sink(443)
        yield lab


def rows(db: Path, server: str = "fake") -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM events WHERE server = ?", (server,))


def test_daemon_catches_a_malicious_server(
    lab: Lab,
    tmp_path: Path,
    session_bus: dict[str, str],  # noqa: F811
) -> None:
    pytest.importorskip("dbus", reason="dbus-python (pip install egresswatch[desktop])")
    tmp = tmp_path / "ew"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    alerts = Receiver()
    home = tmp / "home" / ".cursor"
    home.mkdir(parents=True)
    server_cmd = [sys.executable, str(DATA / "fake_mcp_server.py"), lab.peer4, lab.peer6]
    (home / "mcp.json").write_text(
        json.dumps({"mcpServers": {"fake": {"command": server_cmd[0], "args": server_cmd[1:]}}})
    )
    daemon = Daemon(tmp, config(tmp, alerts.url), args=("--record-procs", str(tmp / "procs.jsonl")),
                    env={"WATCHDOG_USEC": "2000000"}, verbose=True)  # fmt: skip
    host = None
    helpers: list[subprocess.Popen[str]] = []
    try:
        daemon.start()
        ready = daemon.message("READY=1")
        daemon.message("WATCHDOG=1", after=ready, timeout=5)  # pinged at least every WATCHDOG_USEC/2
        db = tmp / "events.db"
        monitor = subprocess.Popen(["dbus-monitor", "--session", "interface='org.freedesktop.Notifications'"],
                                   env=session_bus, stdout=subprocess.PIPE, text=True)  # fmt: skip
        helpers.append(monitor)
        notifier = subprocess.Popen([sys.executable, "-m", "egresswatch", "notifier", "--db", str(db),
                                     "--interval", "0.2"], env={**session_bus, "PYTHONPATH": str(REPO)},
                                    cwd=REPO)  # fmt: skip
        helpers.append(notifier)
        wait_opened(notifier.pid, db)
        host = subprocess.Popen([sys.executable, str(DATA / "fake_mcp_host.py"), str(home / "mcp.json")],
                                stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)  # fmt: skip

        def complete() -> list[dict[str, Any]] | None:
            rs = rows(db)
            names = {r["dst_name"] for r in rs} | {r["sni"] for r in rs} | {r["qname"] for r in rs}
            want = {"allowed.test", "evil.test", "forked.test", "quic.test"}
            has_exfil = any(r["reason"] == "dns_exfil" for r in rs)
            has_direct = any(r["reason"] == "direct_ip" for r in rs)
            return rs if want <= names and has_exfil and has_direct else None

        try:
            events = wait_for(complete, 45, "events of the fake server in the database")
        except AssertionError:
            seen = query(
                db,
                "SELECT kind, sni, qname, dst, verdict, reason, server, process, attribution FROM events"
                " WHERE dst IN (?, ?) OR server IS NOT NULL",
                (lab.peer4, lab.peer6),
                strict=True,
            )
            raise AssertionError(f"incomplete events: {seen[:60]}") from None
        by = {(r["kind"], r["sni"] or r["qname"] or r["dst"]): r for r in events}
        assert by[("tls_sni", "allowed.test")]["verdict"] == "allowed"
        assert by[("dns_query", "allowed.test")]["verdict"] == "allowed"
        evil = by[("tls_sni", "evil.test")]
        assert (evil["verdict"], evil["reason"]) == ("flagged", "not_allowlisted")
        assert by[("quic_sni", "quic.test")]["verdict"] == "flagged"
        forked = by[("tls_sni", "forked.test")]
        assert forked["verdict"] == "flagged" and forked["server"] == "fake"
        exfil = [r for r in events if r["reason"] == "dns_exfil"]
        assert exfil and all(r["qname"].endswith(".exfil.test") for r in exfil)
        direct = [r for r in events if r["reason"] == "direct_ip"]
        assert direct[0]["dst"] == lab.peer6 and direct[0]["verdict"] == "flagged"
        assert all(r["process"] and r["pid"] for r in events if r["kind"] != "dns_answer")

        wait_for(lambda: any("evil.test" in json.dumps(a) for a in alerts.messages), 30, "apprise alert")
        lines: list[str] = []

        def desktop() -> bool:
            lines.append(monitor.stdout.readline())  # type: ignore[union-attr]
            return "contacted evil.test" in lines[-1]

        wait_for(desktop, 30, "desktop notification for evil.test")

        status = daemon.show_status()
        assert status.returncode == 0 and "healthy" in status.stdout, status.stdout

        # a bad config on SIGHUP is rejected; the daemon keeps running
        daemon.write_config(config(tmp, alerts.url, bad=True))
        daemon.send_signal(signal.SIGHUP)
        reloading = daemon.message("RELOADING=1", after=ready)
        daemon.message("READY=1", after=reloading)
        assert daemon.proc is not None and daemon.proc.poll() is None

        assert daemon.stop(timeout=30) == 0
        daemon.message("STOPPING=1", after=reloading)
        stored = len(rows(db))
        assert stored >= len(events)
        recorded = (tmp / "procs.jsonl").read_text()  # replay --procs input, flushed at exit
        assert "forked.test" in recorded or str(lab.peer4) in recorded
    finally:
        if host is not None:  # the host and its server share a process group
            try:
                os.killpg(host.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            host.wait(timeout=10)
        for p in helpers:
            p.terminate()
            p.wait(timeout=10)
        daemon.close()
        err = daemon.log()
        alerts.close()
    assert "reload rejected" in err, err[-2000:]
