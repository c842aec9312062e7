"""The real daemon (`python -m egresswatch run`) as a subprocess, and a numbered
DNS query flood to drive it (crash-safety and disk-full tests and benches).

The daemon gets its own NOTIFY_SOCKET (READY=1 is awaited, as systemd does),
a status file, a log file and a JSON-lines export: the export is line-buffered,
so after a ``kill -9`` it holds every event the pipeline produced, which makes
``export - database`` the events the store lost.
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
import time
from pathlib import Path
from typing import Any

from tests.helpers.netlab import wait_for

REPO = Path(__file__).resolve().parents[2]

FLOOD = r"""
import socket, sys, time
host, tag, qps = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, 53))
start = time.monotonic(); i = 0
while True:
    name = f"q{i}.{tag}.test".encode()
    q = (i & 0xFFFF).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00\x00\x01\x00\x01"
    try:
        s.send(q)
    except OSError:
        pass
    i += 1
    if i % 100 == 0:
        ahead = i / qps - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
        if i % 1000 == 0:
            print(i, flush=True)
"""


class Daemon:
    def __init__(self, tmp: Path, db: Path, iface: str | None, extra_config: str = "") -> None:
        self.tmp, self.db, self.iface = tmp, db, iface
        self.status_path = tmp / "status.json"
        self.jsonl = tmp / "events.jsonl"
        self.log_path = tmp / "daemon.log"
        self.config = tmp / "config.toml"
        self.write_config(extra_config)
        (tmp / "home").mkdir(exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages: list[str] = []
        self._sock: socket.socket | None = None

    def write_config(self, extra: str = "", broken: bool = False) -> None:
        self.config.write_text(
            f'[daemon]\ndatabase = "{self.db}"\njsonl_path = "{self.jsonl}"\n'
            f'[discovery]\nextra_homes = ["{self.tmp}/home"]\n[policy]\nlearning = false\n{extra}'
            + ("\n[servers.broken\n" if broken else "")
        )
        os.chmod(self.config, 0o600)

    def start(self, timeout: float = 60) -> float:
        """Start and wait for READY=1; seconds it took."""
        sock_path = self.tmp / "notify.sock"
        sock_path.unlink(missing_ok=True)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(str(sock_path))
        self._sock.settimeout(0.2)
        self.messages = []
        threading.Thread(target=self._read, args=(self._sock,), daemon=True).start()
        env = {**os.environ, "NOTIFY_SOCKET": str(sock_path), "PYTHONPATH": str(REPO)}
        log = open(self.log_path, "ab")  # noqa: SIM115 - the daemon's stderr, kept across restarts
        t = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "egresswatch", "run", "--config", str(self.config),
             "--status-file", str(self.status_path), *(["--iface", self.iface] if self.iface else [])],
            env=env, cwd=REPO, stderr=log, stdout=subprocess.DEVNULL,
        )  # fmt: skip
        log.close()
        wait_for(lambda: "READY=1" in self.messages or self.proc.poll() is not None, timeout, "READY=1")  # type: ignore[union-attr]
        if self.proc.poll() is not None:
            raise AssertionError(f"daemon exited {self.proc.returncode}: {self.log()[-2000:]}")
        return time.monotonic() - t

    def _read(self, sock: socket.socket) -> None:
        while True:
            try:
                self.messages.extend(sock.recv(4096).decode().split("\n"))
            except TimeoutError:
                continue
            except OSError:
                return

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        self._close_sock()

    def stop(self) -> int:
        if self.proc is None or self.proc.poll() is not None:
            self._close_sock()
            return self.proc.returncode if self.proc else 0
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
        self._close_sock()
        return code

    def _close_sock(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def counter(self, name: str) -> int:
        return int(self.status().get("counters", {}).get(name, 0))


def start_flood(lab: Any, tag: str, qps: int) -> subprocess.Popen[str]:
    """Numbered queries q<i>.<tag>.test to the lab's port 53, from the host."""
    return subprocess.Popen([sys.executable, "-c", FLOOD, lab.peer4, tag, str(qps)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


def stop(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()


def count_rows(db: Path, tag: str) -> int:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return int(
            conn.execute("SELECT COUNT(*) FROM events WHERE qname LIKE ?", (f"%.{tag}.test",)).fetchone()[0]
        )
    finally:
        conn.close()


def integrity(db: Path) -> str:
    """PRAGMA integrity_check through a normal connection (it recovers the WAL
    as the restarted daemon would)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return ";".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def exported(jsonl: Path, tag: str) -> set[str]:
    """qnames of the tag's events in the JSON-lines export."""
    out = set()
    suffix = f".{tag}.test"
    with open(jsonl, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if suffix in line:
                try:
                    out.add(json.loads(line)["qname"])
                except (ValueError, KeyError):
                    pass  # the last line may be cut by the kill
    return out


def stored(db: Path, tag: str) -> set[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        return {r[0] for r in conn.execute("SELECT qname FROM events WHERE qname LIKE ?", (f"%.{tag}.test",))}
    finally:
        conn.close()


def last_id(db: Path) -> int:
    """The newest row's id: rows stored so far, read in O(1) however large the
    database grows (a COUNT with LIKE scans it all, and slows the rate windows)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def crash_cycle(
    d: Daemon, lab: Any, tag: str, qps: int, seconds: float, min_rate: int = 5000, patience: float = 20.0
) -> dict[str, Any]:
    """Start the daemon (on whatever database it has), flood it, and ``kill -9``
    it at least ``seconds`` in, at the end of a 0.5 s window in which it stored
    ``min_rate`` rows/s or more (tried for ``patience`` s); then judge the database:
    integrity, and the events in the export that are not in the database."""
    ready_s = d.start()
    id0 = last_id(d.db)
    flood = start_flood(lab, tag, qps)
    try:
        wait_for(lambda: last_id(d.db) > id0, 30, "first flood rows stored")
        n0, t0 = last_id(d.db), time.monotonic()
        time.sleep(seconds)
        give_up = time.monotonic() + patience
        n, t = last_id(d.db), time.monotonic()
        while True:
            time.sleep(0.5)
            n1, t1 = last_id(d.db), time.monotonic()
            window = (n1 - n) / (t1 - t)
            if window >= min_rate or t1 > give_up:
                break
            n, t = n1, t1
        d.kill9()
    finally:
        stop(flood)
    check = integrity(d.db)
    out, db = exported(d.jsonl, tag), stored(d.db, tag)
    return {
        "ready_s": round(ready_s, 2),
        "stored_per_s": round((n1 - n0) / (t1 - t0)),
        "stored_per_s_at_kill": round(window),
        "integrity": check,
        "exported": len(out),
        "stored": len(db),
        "lost": len(out - db),
        "stored_not_exported": len(db - out),
    }
