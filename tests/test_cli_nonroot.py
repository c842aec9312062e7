"""The laptop case: an ordinary user runs egresswatch next to a root daemon.

A real unprivileged user is made with useradd for this module (removed after)
and every command runs as that user through runuser: permission problems are
one line that says what to do (sudo, or join daemon.db_group), never a
traceback. Needs root (to make the user); fails rather than skips in CI."""

from __future__ import annotations

import grp
import os
import shutil
import subprocess
import sys
import sysconfig
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netlab import missing

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"


@dataclass(frozen=True)
class User:
    name: str
    python: str
    pythonpath: str
    work: Path  # a directory the user can read (not writable by it)

    def run(self, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["runuser", "-u", self.name, "--", "env", f"PYTHONPATH={self.pythonpath}", "HOME=/nonexistent",
             self.python, "-m", "egresswatch", *args],
            capture_output=True, text=True, cwd=cwd or self.work, timeout=120,
        )  # fmt: skip


def _python_for(name: str, pythonpath: str) -> str | None:
    """A Python the user can execute that imports egresswatch and its dependencies."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    for python in (sys.executable, f"/usr/bin/python{version}"):
        probe = subprocess.run(
            ["runuser", "-u", name, "--", "env", f"PYTHONPATH={pythonpath}", python, "-c",
             "import egresswatch.cli.main, click, sqlite_utils, psutil"],
            capture_output=True, text=True, cwd="/",
        )  # fmt: skip
        if probe.returncode == 0:
            return python
    return None


_DEV_ONLY = ("mypy*", "scapy*", "hypothesis*", "_pytest", "pytest*", "ruff*", "pip", "pip-*", "setuptools*",
             "__pycache__", "*.pyc", "*.pth", "__editable__*")  # fmt: skip


def _readable_copy(dest: Path) -> str:
    """egresswatch and its run-time dependencies copied where any user can read them."""
    ignore = shutil.ignore_patterns(*_DEV_ONLY)
    shutil.copytree(REPO / "egresswatch", dest / "egresswatch", ignore=ignore)
    for key in ("purelib", "platlib"):
        shutil.copytree(sysconfig.get_paths()[key], dest, ignore=ignore, dirs_exist_ok=True)
    for root, dirs, files in os.walk(dest):
        for n in dirs:
            os.chmod(os.path.join(root, n), 0o755)
        for n in files:
            os.chmod(os.path.join(root, n), 0o644 | (os.stat(os.path.join(root, n)).st_mode & 0o111))
    os.chmod(dest, 0o755)
    return str(dest)


@pytest.fixture(scope="module")
def user() -> Iterator[User]:
    if os.geteuid() != 0:
        missing("needs root to create an unprivileged user")
    if shutil.which("useradd") is None or shutil.which("runuser") is None:
        missing("useradd/runuser missing (package passwd / util-linux)")
    name = f"ewtest{os.getpid() % 100000}"
    subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                    "--shell", "/usr/sbin/nologin", name], check=True)  # fmt: skip
    work = Path(tempfile.mkdtemp(prefix="ew-nonroot-"))
    try:
        os.chmod(work, 0o755)
        for capture in ("connect.pcap", "dns-answers.pcap"):  # readable by the user wherever REPO is
            shutil.copy(PCAPS / capture, work / capture)
            os.chmod(work / capture, 0o644)
        pythonpath = os.pathsep.join(
            [str(REPO), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]]
        )
        python = _python_for(name, pythonpath)
        if python is None:  # the checkout or the virtualenv is not readable by others (under /root?)
            pythonpath = _readable_copy(work / "py")
            python = _python_for(name, pythonpath)
        if python is None:
            missing(f"no Python that user {name} may run with egresswatch's dependencies")
        yield User(name, python, pythonpath, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        subprocess.run(["userdel", name], check=False)


def _line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    # warnings about the environment (e.g. install-service: a checkout under /tmp) may precede it
    lines = [
        ln for ln in result.stderr.splitlines() if ln.strip() and not ln.startswith("egresswatch: warning: ")
    ]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def root_db(user: User) -> Iterator[Path]:
    """A root-only database, as the daemon makes it without daemon.db_group."""
    d = Path(tempfile.mkdtemp(prefix="lib-", dir=user.work))
    os.chmod(d, 0o750)
    db = d / "events.db"
    subprocess.run([sys.executable, "-m", "egresswatch", "replay", "--config", "/dev/null", "--db", str(db),
                    str(PCAPS / "mcp-verdicts.pcap")], check=True, capture_output=True,
                   env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert (os.stat(db).st_mode & 0o777) == 0o600
    yield db
    shutil.rmtree(d)


HINT = "permission denied (run it with sudo, or have root add you to the database's group, daemon.db_group"


@pytest.mark.parametrize(
    "args",
    [["events"], ["events", "--format", "jsonl"], ["stats"], ["allowlist", "suggest"],
     ["events", "--follow", "--format", "jsonl"]],
    ids=lambda a: " ".join(a),
)  # fmt: skip
def test_reading_a_root_only_database(user: User, root_db: Path, args: list[str]) -> None:
    result = user.run(*args, "--db", str(root_db))
    assert result.returncode == 1
    assert _line(result) == f"egresswatch: error: {root_db}: {HINT} in /etc/egresswatch/config.toml)"


def test_joining_db_group_is_what_the_hint_says(user: User, root_db: Path) -> None:
    group = f"{user.name}g"
    subprocess.run(["groupadd", "--system", group], check=True)
    try:
        gid = grp.getgrnam(group).gr_gid
        for p, mode in ((root_db.parent, 0o750), (root_db, 0o640)):
            os.chown(p, 0, gid)
            os.chmod(p, mode)
        assert user.run("events", "--db", str(root_db)).returncode == 1  # not a member yet
        subprocess.run(["usermod", "-aG", group, user.name], check=True)
        result = user.run("events", "--db", str(root_db), "--format", "jsonl", "--limit", "0")
        assert result.returncode == 0, result.stderr
        assert len(result.stdout.splitlines()) == 31
    finally:
        subprocess.run(["gpasswd", "-d", user.name, group], check=False, capture_output=True)
        subprocess.run(["groupdel", group], check=False)


def test_writing_a_database_the_user_may_only_read(user: User, root_db: Path) -> None:
    os.chmod(root_db.parent, 0o755)
    os.chmod(root_db, 0o644)
    result = user.run("replay", "--db", str(root_db), str(user.work / "connect.pcap"))
    assert result.returncode == 1 and result.stdout == ""
    assert _line(result).startswith(f"egresswatch: error: {root_db}: permission denied (run it with sudo")
    readable = user.run("events", "--db", str(root_db), "--format", "jsonl", "--limit", "2")
    assert readable.returncode == 0 and len(readable.stdout.splitlines()) == 2


def test_doctor_says_what_to_do(user: User, root_db: Path) -> None:
    result = user.run("doctor", "--config", "/dev/null", "--db", str(root_db))
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout
    lines = dict(line[5:].split(": ", 1) for line in result.stdout.splitlines())
    assert lines["database"] == f"{root_db}: {HINT} in /etc/egresswatch/config.toml)"
    assert lines["privileges"].startswith("needs root or CAP_NET_RAW/CAP_NET_ADMIN")


def test_run_needs_root(user: User) -> None:
    result = user.run("run", "--db", str(user.work / "x.db"))
    assert result.returncode == 1
    assert _line(result).startswith("egresswatch: error: run: needs root or CAP_NET_RAW/CAP_NET_ADMIN")
    assert _line(result).endswith("(try sudo)")


def test_install_service_where_the_user_cannot_write(user: User) -> None:
    result = user.run("install-service", "--prefix", str(user.work / "root"))
    assert result.returncode == 1
    assert _line(result).startswith(f"egresswatch: error: {user.work / 'root'}")
    assert "permission denied (run it with sudo" in _line(result)


def test_status_file_the_user_may_not_read(user: User) -> None:
    status = user.work / "status.json"
    status.write_text('{"pid": 1, "updated": 1}')
    os.chmod(status, 0o600)
    result = user.run("status", "--status-file", str(status))
    assert result.returncode == 1
    assert _line(result).startswith(f"egresswatch: error: {status}: permission denied")


def test_replay_needs_no_privileges(user: User) -> None:
    result = user.run("replay", "--config", "/dev/null", str(user.work / "connect.pcap"))
    assert result.returncode == 0 and len(result.stdout.splitlines()) == 3
    piped = subprocess.run(
        ["bash", "-c", f"runuser -u {user.name} -- env PYTHONPATH={user.pythonpath} {user.python} -m egresswatch "
         f"replay --config /dev/null {user.work / 'dns-answers.pcap'} {user.work / 'connect.pcap'} | head -1"],
        capture_output=True, text=True, cwd=user.work, timeout=120,
    )  # fmt: skip
    assert piped.stderr == "" and len(piped.stdout.splitlines()) == 1
