"""Real unprivileged accounts for live tests (useradd/userdel, as root): the
attacks of a watched user are tested as that user, not simulated."""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import subprocess
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
    """A new account ``PREFIX<random>`` with its own home (removed afterwards;
    the test ends the processes it started as that account). Fails in CI, skips elsewhere, when
    not root or useradd is missing."""
    if os.geteuid() != 0:
        missing("real accounts need root")
    if shutil.which("useradd") is None:
        missing("useradd is missing (install the passwd package)")
    name = f"{prefix}{secrets.token_hex(3)}"[:31]
    subprocess.run(["useradd", "-m", "-s", "/bin/sh", name], check=True, capture_output=True)
    try:
        pw = pwd.getpwnam(name)
        yield Account(name, pw.pw_uid, pw.pw_gid, Path(pw.pw_dir))
    finally:
        subprocess.run(["userdel", "-r", "-f", name], check=False, capture_output=True)
