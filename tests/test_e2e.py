"""End to end: the real daemon (`python -m egresswatch run`) against a fake MCP
host and a malicious fake MCP server talking to a lab namespace.

Readiness comes from READY=1 on a test-owned NOTIFY_SOCKET, never a sleep.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.netlab import Lab, wait_for
from tests.test_notifier import session_bus, wait_opened  # noqa: F401 - fixture

pytestmark = pytest.mark.live
REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "e2e_data"


class Alerts(BaseHTTPRequestHandler):
    received: list[dict[str, Any]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        try:
            Alerts.received.append(json.loads(body))
        except ValueError:
            Alerts.received.append({"raw": body.decode(errors="replace")})
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class Notify:
    """The test's NOTIFY_SOCKET: a thread reads every sd_notify message at once,
    as systemd does (the daemon never blocks on it, so a slow reader loses messages)."""

    def __init__(self, path: Path) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._stop.is_set():
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except TimeoutError:
                continue
            except OSError:
                return

    def wait(self, text: str, timeout: float = 60, after: int = 0) -> int:
        def got() -> int | None:
            for i, m in enumerate(list(self.messages[after:]), after):
                if text in m.split("\n"):
                    return i + 1
            return None

        return int(wait_for(got, timeout, text))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


def write_config(path: Path, tmp: Path, port: int, bad: bool = False) -> None:
    text = f"""
[daemon]
database = "{tmp}/events.db"
[discovery]
extra_homes = ["{tmp}/home"]
[alerts]
urls = ["json://127.0.0.1:{port}/"]
min_severity = "low"
window_seconds = 1
[policy]
learning = false
[servers.fake]
allow = ["allowed.test", "allowed.test:443"]
"""
    path.write_text(text + ("\n[nonsense]\nx = 1\n" if bad else ""))
    os.chmod(path, 0o600)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns()
        lab.start_tls(443)
        lab.start_udp_sink(443)
        yield lab


def rows(db: Path, server: str = "fake") -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM events WHERE server = ?", (server,))]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def test_daemon_catches_a_malicious_server(
    lab: Lab,
    tmp_path: Path,
    session_bus: dict[str, str],  # noqa: F811
) -> None:
    pytest.importorskip("dbus", reason="dbus-python (pip install egresswatch[desktop])")
    tmp = tmp_path / "ew"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    httpd = HTTPServer(("127.0.0.1", 0), Alerts)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    Alerts.received = []
    cfg = tmp / "config.toml"
    write_config(cfg, tmp, httpd.server_address[1])
    home = tmp / "home" / ".cursor"
    home.mkdir(parents=True)
    server_cmd = [sys.executable, str(DATA / "fake_mcp_server.py"), lab.peer4, lab.peer6]
    (home / "mcp.json").write_text(
        json.dumps({"mcpServers": {"fake": {"command": server_cmd[0], "args": server_cmd[1:]}}})
    )
    notify = Notify(tmp / "notify.sock")
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock"), "PYTHONPATH": str(REPO),
           "WATCHDOG_USEC": "2000000"}  # fmt: skip
    log = open(tmp / "daemon.log", "w")  # a file, not a pipe: a chatty daemon must never block on it
    daemon = subprocess.Popen(
        [sys.executable, "-m", "egresswatch", "-v", "run", "--config", str(cfg),
         "--status-file", str(tmp / "status.json"), "--record-procs", str(tmp / "procs.jsonl")],
        env=env, cwd=REPO, stderr=log, text=True,
    )  # fmt: skip
    host = None
    helpers: list[subprocess.Popen[str]] = []
    try:
        try:
            ready = notify.wait("READY=1")
        except AssertionError:
            daemon.send_signal(signal.SIGUSR1)  # thread stacks into the log
            wait_for(lambda: "most recent call first" in (tmp / "daemon.log").read_text(), 10, "stack dump")
            tail = [x for x in (tmp / "daemon.log").read_text().splitlines() if "DEBUG owner" not in x]
            raise AssertionError("no READY=1; daemon log:\n" + "\n".join(tail[-60:])) from None
        notify.wait("WATCHDOG=1", after=ready, timeout=5)  # pinged at least every WATCHDOG_USEC/2
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
            conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
            seen = conn.execute(
                "SELECT kind, sni, qname, dst, verdict, reason, server, process, attribution FROM events"
                " WHERE dst IN (?, ?) OR server IS NOT NULL",
                (lab.peer4, lab.peer6),
            ).fetchall()
            conn.close()
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

        wait_for(lambda: any("evil.test" in json.dumps(a) for a in Alerts.received), 30, "apprise alert")
        lines: list[str] = []

        def desktop() -> bool:
            lines.append(monitor.stdout.readline())  # type: ignore[union-attr]
            return "contacted evil.test" in lines[-1]

        wait_for(desktop, 30, "desktop notification for evil.test")

        status = subprocess.run([sys.executable, "-m", "egresswatch", "status", "--status-file",
                                 str(tmp / "status.json")], capture_output=True, text=True, cwd=REPO, env=env)  # fmt: skip
        assert status.returncode == 0 and "healthy" in status.stdout, status.stdout

        # a bad config on SIGHUP is rejected; the daemon keeps running
        write_config(cfg, tmp, httpd.server_address[1], bad=True)
        daemon.send_signal(signal.SIGHUP)
        reloading = notify.wait("RELOADING=1", after=ready)
        notify.wait("READY=1", after=reloading)
        assert daemon.poll() is None

        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=30) == 0
        notify.wait("STOPPING=1", after=reloading)
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
        if daemon.poll() is None:
            daemon.kill()
        daemon.wait(timeout=10)
        log.close()
        err = (tmp / "daemon.log").read_text()
        httpd.shutdown()
        notify.close()
    assert "reload rejected" in err, err[-2000:]
