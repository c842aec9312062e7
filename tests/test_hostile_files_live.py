"""A watched user against the files of the root daemon (#10), as a real
unprivileged account (tests/helpers/accounts.py):

- the running daemon's config, database (and its -wal, -shm, lock), its
  directory, the status file, the runtime directory and the JSON-lines export,
  laid out as installed (a root-owned tree the user can traverse, the
  database readable by ``daemon.db_group``, of which the user is a member, as
  the desktop notifier's reader must be): the user can neither write, truncate,
  replace, remove, rename nor chmod any of them, nor create a file or plant a
  symlink where the daemon writes, nor write into the alerts table the
  desktop notifier follows (reading it is allowed: the test is not vacuous);
- files and directories the user owns are refused at start (config, its
  directory, the database's directory, the runtime directory, the JSON-lines
  export's directory): one line, exit 1, nothing written.

Symlinks the user plants in a sticky directory or owns on the way to a file:
tests/test_hostile_user.py."""

from __future__ import annotations

import grp
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.accounts import Account, account
from tests.helpers.daemonrun import Notify
from tests.helpers.hostiled import DATA, PY, REPO, shared_dir
from tests.helpers.netlab import Lab, wait_for
from tests.test_hostile_user import ew_run, refused

pytestmark = pytest.mark.live


@pytest.fixture
def user() -> Iterator[tuple[Account, int]]:
    """An account in a new group that reads the database (daemon.db_group)."""
    with account("ewfile") as acct:
        group = f"{acct.name}g"[:31]
        subprocess.run(["groupadd", group], check=True, capture_output=True)
        try:
            subprocess.run(["usermod", "-aG", group, acct.name], check=True, capture_output=True)
            yield acct, grp.getgrnam(group).gr_gid
        finally:
            subprocess.run(["groupdel", "-f", group], check=False, capture_output=True)


def digest(paths: list[Path]) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}


def test_the_daemons_files_are_out_of_a_users_reach(user: tuple[Account, int], tmp_path: Path) -> None:
    acct, gid = user
    with shared_dir() as root, Lab() as lab:
        etc, lib, run, log = (
            root / "etc/egresswatch",
            root / "var/lib/egresswatch",
            root / "run/egresswatch",
            root / "var/log",
        )
        for d in (
            etc,
            log,
            lib.parent,
            run.parent,
        ):  # the daemon makes the database's and the runtime directory
            d.mkdir(parents=True, exist_ok=True)
        for d in (root / "etc", root / "var", root / "var/lib", root / "run", etc, log):
            d.chmod(0o755)
        db, export, status = lib / "events.db", log / "egresswatch.jsonl", run / "status.json"
        cfg = etc / "config.toml"
        cfg.write_text(f'[daemon]\ndatabase = "{db}"\njsonl_path = "{export}"\n'
                       f'db_group = "{grp.getgrgid(gid).gr_name}"\n[policy]\nlearning = false\n')  # fmt: skip
        cfg.chmod(0o644)
        notify = Notify(tmp_path / "notify.sock")
        daemon = subprocess.Popen(
            [sys.executable, "-m", "egresswatch", "run", "--config", str(cfg), "--status-file", str(status),
             "--iface", lab.veth_host],
            cwd=REPO, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": str(REPO), "NOTIFY_SOCKET": str(tmp_path / "notify.sock")},
        )  # fmt: skip
        try:
            notify.wait("READY=1")
            lab.start_udp_sink(53)
            q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x04file\x04test\x00\x00\x01\x00\x01"
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                wait_for(lambda: s.sendto(q, (lab.peer4, 53)) and export.exists() and export.stat().st_size > 0
                         and status.exists(), 20, "an event exported and the status written")  # fmt: skip
            files = [cfg, db, Path(f"{db}-wal"), Path(f"{db}-shm"), Path(f"{db}.lock"), status, export]
            files = [f for f in files if f.exists()]
            assert {db, status, export, cfg} <= set(files)
            before = digest([cfg, status])
            script = root / "file_attacks.py"
            shutil.copy(DATA / "file_attacks.py", script)
            script.chmod(0o644)
            out = subprocess.run(
                [PY, str(script), str(daemon.pid), str(db), *map(str, files), "--", str(etc), str(lib), str(run),
                 str(log)],
                user=acct.uid, group=acct.gid, extra_groups=[gid], capture_output=True, text=True, timeout=60,
                env={"HOME": str(acct.home), "PATH": "/usr/bin:/bin"}, cwd=str(acct.home),
            )  # fmt: skip
            assert out.returncode == 0, out.stderr
            results = json.loads(out.stdout)
            assert daemon.poll() is None
            alive = json.loads(status.read_text())["pid"] == daemon.pid
        finally:
            daemon.terminate()
            _, err = daemon.communicate(timeout=60)
            notify.close()
        assert (
            results.pop("read the alerts table") == "OK"
        )  # a db_group member reads: the files are reachable
        got = {k: v for k, v in results.items() if v == "OK" or "denied" not in v and "not permitted" not in v
               and "readonly" not in v}  # fmt: skip
        assert not got, got
        assert "readonly" in results["insert into the alerts table"], results["insert into the alerts table"]
        assert digest([cfg]) == {str(cfg): before[str(cfg)]} and alive
        assert sorted(p.name for p in etc.iterdir()) == ["config.toml"]
        assert not any(p.name in ("planted", "link") or p.name.endswith(".moved") for p in root.rglob("*"))
        assert daemon.returncode == 0, err[-2000:]


@pytest.mark.parametrize("what", ["config file", "config directory", "database directory", "runtime directory",
                                  "JSON-lines directory"])  # fmt: skip
def test_files_a_user_owns_are_refused(what: str) -> None:
    with shared_dir() as root, account("ewown") as acct:
        own = root / "own"
        own.mkdir(mode=0o755)
        os.chown(own, acct.uid, acct.gid)  # a directory the user owns (not writable by others)
        safe = root / "safe"
        safe.mkdir(mode=0o700)
        cfg_dir = own if what == "config directory" else safe
        db = (own if what == "database directory" else safe) / "events.db"
        status = (own if what == "runtime directory" else safe) / "status.json"
        extra = f'jsonl_path = "{own / "events.jsonl"}"\n' if what == "JSON-lines directory" else ""
        cfg = cfg_dir / "config.toml"
        cfg.write_text(f'[daemon]\ndatabase = "{db}"\n{extra}')
        cfg.chmod(0o600)
        if what == "config file":
            os.chown(cfg, acct.uid, acct.gid)
        line = refused(ew_run("--config", str(cfg), "--status-file", str(status)), f"a {what} the user owns")
        kind = {"config file": "config", "config directory": "config", "database directory": "database",
                "runtime directory": "status file", "JSON-lines directory": "daemon.jsonl_path"}[what]  # fmt: skip
        owned = (
            f"owned by uid {acct.uid}, not root"
            if what == "config file"
            else f"{own}: directory owned by uid {acct.uid}, not root"
        )
        assert line.startswith(f"egresswatch: error: refusing to use {kind} ") and line.endswith(owned), line
        assert [p.name for p in own.iterdir()] == (["config.toml"] if cfg_dir == own else [])
        assert not db.exists() and not status.exists()  # nothing written
