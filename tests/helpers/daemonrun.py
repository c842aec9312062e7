"""The real daemon (`python -m egresswatch run`, as root) as a subprocess: the
one harness of the live daemon tests and the daemon benches.

- :class:`Notify`: the test's NOTIFY_SOCKET, read by a thread as systemd does;
- :class:`Daemon`: writes the config (root-only, 0600), starts the daemon with
  its own NOTIFY_SOCKET, status file and log file (stderr into a file, never a
  pipe: a chatty daemon must never block on it), waits for READY=1 (never a
  sleep), and reads back the log, the status file and the sd_notify messages;
- :func:`query`: rows of the daemon's database, read-only.

Readiness, reload and stop are the daemon's own sd_notify messages; every
wait polls with a deadline (netlab.wait_for).
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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from tests.helpers.netlab import wait_for

REPO = Path(__file__).resolve().parents[2]


class Notify:
    """The test's NOTIFY_SOCKET: a thread reads every sd_notify message at once,
    as systemd does (the daemon never blocks on it, so a slow reader loses messages)."""

    def __init__(self, path: Path) -> None:
        path.unlink(missing_ok=True)
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

    def find(self, text: str, after: int = 0) -> int | None:
        """1 + the index of the first message from ``after`` on with a line ``text``."""
        for i, m in enumerate(list(self.messages[after:]), after):
            if text in m.split("\n"):
                return i + 1
        return None

    def wait(self, text: str, timeout: float = 60, after: int = 0) -> int:
        return int(wait_for(lambda: self.find(text, after), timeout, text))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.sock.close()


class Daemon:
    """`egresswatch run` with the config ``config`` (TOML text) in ``tmp``, a
    directory only root can write. Files: ``config.toml``, ``daemon.log``,
    ``status.json``, ``notify.sock``; with a ``name``, ``NAME.toml``,
    ``NAME.log``, ``NAME.status.json``, ``NAME.notify.sock`` (several daemons in
    one directory). ``netns``: run it in that network namespace; ``args``: more
    ``run`` options; ``env``: more environment (``WATCHDOG_USEC``);
    ``verbose``: ``-v``. The log is appended to across restarts."""

    def __init__(
        self,
        tmp: Path,
        config: str,
        *,
        name: str | None = None,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        netns: str | None = None,
        verbose: bool = False,
        status: Path | None = None,
        db: Path | None = None,
    ) -> None:
        self.tmp = tmp
        self.db = db or tmp / "events.db"  # where the config sends the events (for the test's queries)
        self.jsonl = tmp / "events.jsonl"  # the export, when the config has daemon.jsonl_path = this
        dot = f"{name}." if name else ""
        self.config = tmp / (f"{name}.toml" if name else "config.toml")
        self.log_path = tmp / f"{name or 'daemon'}.log"
        self.status_path = status or tmp / f"{dot}status.json"
        self.notify_path = tmp / f"{dot}notify.sock"
        self.args, self.env, self.netns, self.verbose = tuple(args), dict(env or {}), netns, verbose
        (tmp / "home").mkdir(exist_ok=True)  # discovery.extra_homes of base_config
        self.write_config(config)
        self.proc: subprocess.Popen[bytes] | None = None
        self.notify: Notify | None = None

    def write_config(self, text: str) -> None:
        self.config.write_text(text)
        os.chmod(self.config, 0o600)

    # -- start -----------------------------------------------------------------------
    def launch(self) -> Daemon:
        """Start the process (a fresh NOTIFY_SOCKET); :meth:`ready` waits for it."""
        if self.notify is not None:
            self.notify.close()
        self.notify = Notify(self.notify_path)
        env = {**os.environ, "NOTIFY_SOCKET": str(self.notify_path), "PYTHONPATH": str(REPO), **self.env}
        cmd = [sys.executable, "-m", "egresswatch", *(["-v"] if self.verbose else []), "run",
               "--config", str(self.config), "--status-file", str(self.status_path), *self.args]  # fmt: skip
        if self.netns is not None:
            cmd = ["ip", "netns", "exec", self.netns, *cmd]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=env, cwd=REPO, stderr=log, stdout=subprocess.DEVNULL)
        return self

    def ready(self, timeout: float = 60) -> Daemon:
        """Wait for READY=1. If the daemon exits first: its exit code and log; if
        it hangs: every thread's stack (SIGUSR1) and the log."""
        assert self.proc is not None and self.notify is not None
        proc, notify = self.proc, self.notify
        try:
            wait_for(lambda: notify.find("READY=1") or proc.poll() is not None, timeout, "READY=1")
        except AssertionError:
            proc.send_signal(signal.SIGUSR1)  # faulthandler: thread stacks into the log
            try:
                wait_for(lambda: "most recent call first" in self.log(), 10, "stack dump")
            except AssertionError:
                pass
            tail = [x for x in self.log().splitlines() if "DEBUG owner" not in x]
            raise AssertionError("no READY=1; daemon log:\n" + "\n".join(tail[-60:])) from None
        if proc.poll() is not None and not notify.find("READY=1"):
            raise AssertionError(f"daemon exited {proc.returncode}: {self.log()[-2000:]}")
        return self

    def start(self, timeout: float = 60) -> float:
        """Launch and wait for READY=1; seconds it took."""
        t = time.monotonic()
        self.launch().ready(timeout)
        return time.monotonic() - t

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def message(self, text: str, after: int = 0, timeout: float = 60) -> int:
        """Wait for the sd_notify line ``text`` after message ``after``; 1 + its index."""
        assert self.notify is not None
        return self.notify.wait(text, timeout, after)

    # -- stop ------------------------------------------------------------------------
    def send_signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 60) -> int:
        """SIGTERM and the exit code (killed when not gone within ``timeout`` s)."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)

    def close(self) -> None:
        """Kill a daemon still running and stop reading its messages (``finally:``)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self.notify is not None:
            self.notify.close()

    # -- what it said ----------------------------------------------------------------
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def status(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.status_path.read_text()))
        except (OSError, ValueError):
            return {}

    def counter(self, name: str) -> int:
        return int(self.status().get("counters", {}).get(name, 0))

    def show_status(self, *more: str) -> subprocess.CompletedProcess[str]:
        """``egresswatch status`` on this daemon's status file."""
        cmd = [sys.executable, "-m", "egresswatch", "status", "--status-file", str(self.status_path), *more]
        return subprocess.run(
            cmd, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}
        )


def base_config(tmp: Path, db: Path, *, jsonl: Path | None = None, daemon: str = "", extra: str = "") -> str:
    """A config for the daemon under test: its database, optionally the JSON-lines
    export, more ``[daemon]`` keys, MCP servers discovered only in ``tmp/home``,
    learning off (verdicts do not drift), then ``extra`` sections."""
    export = f'jsonl_path = "{jsonl}"\n' if jsonl is not None else ""
    return (
        f'[daemon]\ndatabase = "{db}"\n{export}{daemon}\n'
        f'[discovery]\nextra_homes = ["{tmp}/home"]\n[policy]\nlearning = false\n{extra}'
    )


def query(db: Path, sql: str, params: Sequence[Any] = (), strict: bool = False) -> list[dict[str, Any]]:
    """Rows of the daemon's database, read-only (it may be writing). A
    database not there yet, or not readable yet, has no rows unless ``strict``."""
    if not strict and not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute(sql, tuple(params))]
    except sqlite3.Error:
        if strict:
            raise
        return []
    finally:
        conn.close()
