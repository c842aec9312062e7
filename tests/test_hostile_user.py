"""Issue #17, as a real unprivileged account (created here, removed after)
would attack the root daemon: symlinks planted where the daemon writes, a
config or database reached through a user's symlink or a sticky directory,
and escape codes in a project path of the user's ~/.claude.json."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.safefiles import trust_problems
from tests.helpers.daemonrun import Notify
from tests.helpers.netlab import missing, require_live, run, wait_for

pytestmark = pytest.mark.live
REPO = Path(__file__).resolve().parents[1]
FORGED = "INFO egresswatch.service: all clear"


class User:
    def __init__(self, name: str) -> None:
        pw = pwd.getpwnam(name)
        self.name, self.uid, self.gid = name, pw.pw_uid, pw.pw_gid

    def run(self, *cmd: str) -> None:
        subprocess.run(cmd, check=True, user=self.uid, group=self.gid, extra_groups=[])


@pytest.fixture
def user() -> Iterator[User]:
    require_live()
    if shutil.which("useradd") is None:
        missing("useradd not installed")
    name = f"ewatk{os.getpid() % 100000}"
    run("useradd", "--no-create-home", "--no-user-group", "--shell", "/usr/sbin/nologin", name)
    try:
        yield User(name)
    finally:
        run("userdel", "--force", name, check=False)


@pytest.fixture
def dirs(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """(root-only directory, sticky world-writable directory the user can reach)."""
    private = tmp_path / "root"
    private.mkdir(mode=0o700)
    public = Path(tempfile.mkdtemp(prefix="ew-sticky-", dir="/tmp"))
    os.chmod(public, 0o1777)
    try:
        yield private, public
    finally:
        shutil.rmtree(public, ignore_errors=True)


def config(private: Path, extra: str = "", home: Path | None = None) -> Path:
    cfg = private / "config.toml"
    homes = f'extra_homes = ["{home}"]\n' if home else ""
    cfg.write_text(f'[daemon]\ndatabase = "{private}/events.db"\n{extra}\n[discovery]\n{homes}')
    os.chmod(cfg, 0o600)
    return cfg


def ew_run(*args: str, gate: bool = False, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    cmd = [sys.executable, "-m", "egresswatch", "run", *args]
    if gate:  # wait for a line on stdin first, so the test knows the pid before the daemon runs
        cmd = ["sh", "-c", 'read go && exec "$0" "$@"', *cmd]
    return subprocess.Popen(cmd, cwd=REPO, text=True, stdin=subprocess.PIPE, stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})})  # fmt: skip


def refused(proc: subprocess.Popen[str], what: str) -> str:
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError(f"the daemon accepted {what}") from None
    lines = err.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1 and lines[0].startswith("egresswatch: error: "), err
    return lines[0]


def test_planted_status_temp_symlink_is_refused(user: User, dirs: tuple[Path, Path]) -> None:
    private, public = dirs
    victim = private / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    proc = ew_run("--config", str(config(private)), "--status-file", str(public / "status.json"), gate=True)
    try:
        user.run("ln", "-s", str(victim), str(public / f".status.json.{proc.pid}.tmp"))
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
        wait_for(
            lambda: proc.poll() is not None or victim.read_text() != "precious\n", 60, "exit or overwrite"
        )
        line = refused(proc, "a status file in a sticky world-writable directory")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "refusing to use status file" in line and "sticky directory writable" in line, line
    assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o600
    assert not (public / "status.json").exists()


def test_files_in_sticky_or_user_symlinked_directories_are_refused(
    user: User, dirs: tuple[Path, Path]
) -> None:
    private, public = dirs
    (private / "conf").mkdir(mode=0o700)
    cfg = config(private)
    shutil.copy(cfg, private / "conf" / "config.toml")
    (private / "dbdir").mkdir(mode=0o700)
    sticky_cfg = public / "config.toml"  # root's own file, but the user can plant names beside it
    shutil.copy(cfg, sticky_cfg)
    user.run("ln", "-s", str(private / "conf"), str(public / "conflink"))  # the user can repoint these
    user.run("ln", "-s", str(private / "dbdir"), str(public / "dblink"))
    cases = [
        ("a config through a user's symlink", ("--config", str(public / "conflink" / "config.toml")),
         "symbolic link owned by uid"),
        ("a config in a sticky directory", ("--config", str(sticky_cfg)), "refusing to use config"),
        ("a database in a sticky directory", ("--config", str(cfg), "--db", str(public / "events.db")),
         "refusing to use database"),
        ("a database through a user's symlink", ("--config", str(cfg), "--db", str(public / "dblink" / "e.db")),
         "symbolic link owned by uid"),
        ("--record-procs in a sticky directory",
         ("--config", str(cfg), "--record-procs", str(public / "procs.jsonl")), "--record-procs file"),
        ("daemon.jsonl_path in a sticky directory",
         ("--config", str(config(private, f'jsonl_path = "{public}/events.jsonl"'))), "daemon.jsonl_path"),
    ]  # fmt: skip
    for what, args, words in cases:
        proc = ew_run(*args, "--status-file", str(private / "status.json"))
        line = refused(proc, what)
        assert words in line, (what, line)
    assert sorted(p.name for p in public.iterdir()) == [
        "config.toml",
        "conflink",
        "dblink",
    ]  # nothing written
    assert list((private / "dbdir").iterdir()) == []


def test_trust_problems_of_paths(user: User, dirs: tuple[Path, Path]) -> None:
    private, public = dirs
    assert trust_problems(private / "x.db") == []
    assert any("sticky directory writable" in p for p in trust_problems(public / "x.db"))
    link = public / "link"
    os.symlink(private, link)
    assert (
        trust_problems(link / "x.db") == []
    )  # root's own symlink in a sticky directory: only root can change it
    os.lchown(link, user.uid, user.gid)
    assert any(f"symbolic link owned by uid {user.uid}" in p for p in trust_problems(link / "x.db"))


def test_escape_codes_in_a_users_project_path_do_not_reach_the_log(
    user: User, dirs: tuple[Path, Path]
) -> None:
    private, public = dirs
    home = public / "home"
    project = public / f"proj\x1b[31mX\n{FORGED}"
    for d in (home, project):
        d.mkdir()
    (project / ".mcp.json").write_text("{not json")  # a discovery warning that names the path
    (home / ".claude.json").write_text(json.dumps({"projects": {str(project): {"mcpServers": {}}}}))
    for p in (home, project, project / ".mcp.json", home / ".claude.json"):
        os.chown(p, user.uid, user.gid)
    cfg = config(private, home=home)
    notify = Notify(private / "notify.sock")
    proc = ew_run("--config", str(cfg), "--status-file", str(private / "status.json"),
                  env={"NOTIFY_SOCKET": str(private / "notify.sock")})  # fmt: skip
    try:
        ready = notify.wait("READY=1")
        proc.send_signal(signal.SIGHUP)  # discovery runs again
        notify.wait("READY=1", after=notify.wait("RELOADING=1", after=ready))
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=40)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        notify.close()
    assert proc.returncode == 0, err[-2000:]
    assert "\x1b" not in err
    assert not any(line.startswith(FORGED) for line in err.splitlines()), err
    assert err.count("proj\\x1b[31mX\\x0aINFO egresswatch.service: all clear") >= 2, (
        err
    )  # at start and on SIGHUP
