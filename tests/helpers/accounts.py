"""Real unprivileged accounts for live tests (useradd/userdel, as root): the
attacks of a watched user are tested as that user, not simulated."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.helpers.netlab import missing


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: Path


@contextmanager
def account(prefix: str) -> Iterator[Account]:
    """A new account ``PREFIX<random>`` with its own home, removed afterwards with
    every process still running as it (all started by the test: wrappers such as
    su and timeout put them in their own sessions or groups). Fails in CI, skips elsewhere, when
    not root or useradd is missing."""
    if os.geteuid() != 0:
        missing("real accounts need root")
    if shutil.which("useradd") is None:
        missing("useradd is missing (install the passwd package)")
    name = f"{prefix}{secrets.token_hex(3)}"[:31]
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    pw = pwd.getpwnam(name)
    try:
        yield Account(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    finally:
        _kill_uid(pw.pw_uid)
        subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)


def _kill_uid(uid: int) -> None:
    for _ in range(50):
        pids = []
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    if os.stat(f"/proc/{entry}").st_uid == uid:
                        pids.append(int(entry))
                except OSError:
                    continue
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.02)
