"""The whole daemon (`python -m egresswatch -v run`) against servers run by real
unprivileged accounts (tests/helpers/accounts.py): its own config, database,
JSON-lines export, status file, log and a json:// alert receiver, capturing
the lab's veth only (other suites flood their own labs). Hosts (a fake MCP
host launching every server of a Cursor-style mcp.json) run as the account."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from tests.helpers.accounts import Account
from tests.helpers.daemonrun import Notify
from tests.helpers.netlab import Lab, missing, wait_for

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "e2e_data"
PY = "/usr/bin/python3"  # the system interpreter: every account can run it


class Receiver:
    """A json:// alert target: every body posted, in order."""

    def __init__(self) -> None:
        got: list[dict[str, Any]] = []
        self.received = got

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                try:
                    got.append(json.loads(body))
                except ValueError:
                    got.append({"raw": body.decode(errors="replace")})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.httpd = HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"json://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def shared_dir() -> Iterator[Path]:
    """A directory under /tmp every account can read (mode 0755, root's)."""
    d = Path(tempfile.mkdtemp(prefix="ew-hostile-", dir="/tmp"))
    try:
        d.chmod(0o755)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def compile_c(source: Path, out: Path) -> Path:
    if shutil.which("cc") is None:
        missing(f"cc (build-essential) to build {source.name}")
    subprocess.run(["cc", "-O2", "-o", str(out), str(source)], check=True)
    out.chmod(0o755)
    return out


def write_mcp(home: Path, servers: dict[str, list[str]], owner: Account | None) -> Path:
    """``HOME/.cursor/mcp.json`` defining ``servers`` (name -> argv), owned by
    ``owner`` (None: root)."""
    cfg = home / ".cursor" / "mcp.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        json.dumps({"mcpServers": {n: {"command": c[0], "args": c[1:]} for n, c in servers.items()}})
    )
    if owner is not None:
        for p in (cfg.parent, cfg):
            os.chown(p, owner.uid, owner.gid)
    return cfg


def rows(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM events")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


class Daemon:
    """The daemon as root on a root-only directory ``tmp`` (mode 0700)."""

    def __init__(self, tmp: Path, lab: Lab, homes: list[Path], allow: dict[str, list[str]],
                 env: dict[str, str] | None = None, extra: str = "", alert_budget: bool = True) -> None:  # fmt: skip
        self.tmp, self.lab = tmp, lab
        self.alerts = Receiver()
        self.cfg, self.db, self.jsonl = tmp / "config.toml", tmp / "events.db", tmp / "events.jsonl"
        self.status_file, self.log_path = tmp / "status.json", tmp / "daemon.log"
        text = (
            f'[daemon]\ndatabase = "{self.db}"\njsonl_path = "{self.jsonl}"\n'
            f"[discovery]\nextra_homes = {json.dumps([str(h) for h in homes])}\n"
            f'[alerts]\nurls = ["{self.alerts.url}"]\nmin_severity = "low"\nwindow_seconds = 1\n'
            + (
                "budget_burst = 1000\nbudget_per_minute = 6000\n" if alert_budget else ""
            )  # every alert is tested
            + f"[policy]\nlearning = false\n{extra}\n"
        )
        for name, names in allow.items():
            text += f"[servers.{json.dumps(name)}]\nallow = {json.dumps(names)}\n"
        self.cfg.write_text(text)
        os.chmod(self.cfg, 0o600)
        self.notify = Notify(tmp / "notify.sock")
        self.env = {
            **os.environ,
            "NOTIFY_SOCKET": str(tmp / "notify.sock"),
            "PYTHONPATH": str(REPO),
            **(env or {}),
        }
        self.hosts: list[subprocess.Popen[bytes]] = []
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def start(self) -> None:
        after = len(self.notify.messages)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "egresswatch", "-v", "run", "--config", str(self.cfg),
                 "--status-file", str(self.status_file), "--iface", self.lab.veth_host],
                env=self.env, cwd=REPO, stderr=log, stdout=subprocess.DEVNULL,
                preexec_fn=lambda: os.nice(-10),  # the unit's Nice=-10
            )  # fmt: skip
        try:
            self.notify.wait("READY=1", after=after)
        except AssertionError:
            self.close()
            raise AssertionError("no READY=1: " + self.log()[-3000:]) from None

    def restart(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=60) == 0, self.log()[-2000:]
        self.start()

    def launch_host(self, mcp: Path, user: Account | None) -> subprocess.Popen[bytes]:
        """The fake MCP host on ``mcp``, as ``user`` (None: root), in its own session."""
        host = DATA / "fake_mcp_host.py"
        who: dict[str, Any] = {"user": user.uid, "group": user.gid, "extra_groups": []} if user else {}
        p = subprocess.Popen([PY, "-c", host.read_text(), str(mcp)], cwd="/", start_new_session=True, **who)
        self.hosts.append(p)
        return p

    def rows(self) -> list[dict[str, Any]]:
        return rows(self.db)

    def counters(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_file.read_text()).get("counters", {}))
        except (OSError, ValueError):
            return {}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def close(self) -> None:
        for h in self.hosts:
            try:
                os.killpg(h.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            h.wait(timeout=10)
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.alerts.close()
        self.notify.close()


def find_pid(exe: str | None, cmdline: bytes | None = None, uid: int | None = None) -> int | None:
    """A process running ``exe`` (its /proc exe link, " (deleted)" ignored),
    with that raw cmdline (NUL-separated) and real uid, each when given."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if exe is not None and os.readlink(f"/proc/{entry}/exe").removesuffix(" (deleted)") != exe:
                continue
            if cmdline is not None and Path(f"/proc/{entry}/cmdline").read_bytes().rstrip(b"\0") != cmdline:
                continue
            if uid is not None and os.stat(f"/proc/{entry}").st_uid != uid:
                continue
            return int(entry)
        except OSError:
            continue
    return None


def tmp700(tmp_path: Path) -> Path:
    tmp = tmp_path / "ew"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    return tmp


def wait_rows(d: Daemon, prefix: str, n: int, timeout: float = 40) -> list[dict[str, Any]]:
    """The ``dns_query`` rows whose name starts with ``prefix``, once there are ``n``."""

    def got() -> list[dict[str, Any]] | None:
        rs = [r for r in d.rows() if r["kind"] == "dns_query" and (r["qname"] or "").startswith(prefix)]
        return rs if len(rs) >= n else None

    try:
        return list(wait_for(got, timeout, f"{n} queries {prefix}*"))
    except AssertionError:
        seen = [r for r in d.rows() if (r["qname"] or "").startswith(prefix)]
        raise AssertionError(
            f"{len(seen)} of {n} {prefix}* queries stored; counters {d.counters()}"
        ) from None
