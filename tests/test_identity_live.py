"""Server identity with real processes run as real accounts (root; fails in CI
rather than skipping): the same configured server launched directly, through
su, runuser, setpriv, env, nice, ionice, timeout and a pattern-only launcher
gets the same name, host and phase; another account's config with the same
command cannot take it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.attribute.lineage import LineageTracker
from egresswatch.config import DEFAULT_LAUNCHER_PATTERNS
from egresswatch.mcp.discovery import discover
from egresswatch.mcp.match import RUN, Lineage
from tests.helpers.accounts import Account, account
from tests.helpers.netlab import missing, wait_for

PY = "/usr/bin/python3"  # the system interpreter: every account can run it
SERVER = """\
import subprocess, sys, time
child = subprocess.Popen(["/bin/sleep", "60"])
print(child.pid, flush=True)
time.sleep(60)
"""
LAUNCHER = """\
import subprocess, sys
subprocess.run([sys.executable, sys.argv[1]])
"""


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory every account can read, holding the server and a launcher."""
    if os.geteuid() != 0:
        missing("the proc connector and real accounts need root")
    if not os.path.exists(PY):
        missing(f"{PY} is missing")
    d = Path(tempfile.mkdtemp(prefix="ew-identity-", dir="/tmp"))
    try:
        d.chmod(0o755)
        (d / "fake_mcp_server.py").write_text(SERVER)
        (d / "run_mcp_server_launcher.py").write_text(LAUNCHER)
        for f in d.iterdir():
            f.chmod(0o644)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def _config(home: Path, owner: Account | None, name: str, server: Path) -> None:
    cfg = home / ".cursor" / "mcp.json"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(json.dumps({"mcpServers": {name: {"command": PY, "args": [str(server)]}}}))
    if owner is not None:
        for p in (cfg.parent, cfg):
            os.chown(p, owner.uid, owner.gid)


def _identity(tracker: LineageTracker, argv: list[str], **popen: object) -> tuple[Lineage, Lineage]:
    """Run ``argv`` (a launch of the server), wait until its server process and
    that process's child are tied; their lineages."""
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, start_new_session=True, **popen)  # type: ignore[call-overload]
    try:
        assert proc.stdout is not None
        child = int(proc.stdout.readline())
        with open(f"/proc/{child}/stat") as f:
            server_pid = int(f.read().rsplit(")", 1)[1].split()[1])

        def tied(pid: int) -> Lineage | None:
            return tracker.lookup(pid)[2]

        server = wait_for(lambda: tied(server_pid), 5, f"server of {argv[:3]} tied")
        kid = wait_for(lambda: tied(child), 5, f"child of {argv[:3]} tied")
        return server, kid
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the launch's own process group: wrapper, server, child
        proc.wait()


def _tracker(homes: list[Path]) -> LineageTracker:
    found = discover(homes)
    tracker = LineageTracker(found.servers, DEFAULT_LAUNCHER_PATTERNS)
    assert tracker.start() == "connector"
    return tracker


def test_same_server_through_each_wrapper_live(shared: Path) -> None:
    server = shared / "fake_mcp_server.py"
    with account("ewid") as user:
        _config(user.home, user, "lab-srv", server)
        tracker = _tracker([user.home])
        try:
            script = f"{PY} {server}"
            launches: dict[str, tuple[list[str], dict[str, object]]] = {
                "direct": ([PY, str(server)], {"user": user.uid, "group": user.gid}),
                "su -c": (["su", user.name, "-c", f"cd ~ && {script}"], {}),
                "su - -c": (["su", "-", user.name, "-s", "/bin/sh", "-c", f"export A=1; exec {script}"], {}),
                "runuser -u": (["runuser", "-u", user.name, "--", PY, str(server)], {}),
                "setpriv": (["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
                             PY, str(server)], {}),
                "env nice ionice timeout": (["runuser", "-u", user.name, "--", "env", "A=1", "nice", "-n", "5",
                                             "ionice", "-c", "3", "timeout", "60", PY, str(server)], {}),
                "pattern-only launcher": ([PY, str(shared / "run_mcp_server_launcher.py"), str(server)],
                                          {"user": user.uid, "group": user.gid}),
            }  # fmt: skip
            seen = {}
            for what, (argv, kw) in launches.items():
                srv, kid = _identity(tracker, argv, **kw)
                seen[what] = (srv.server, srv.host, srv.phase, srv.via, kid.server, kid.phase)
            assert set(seen.values()) == {("lab-srv", "cursor", RUN, "config", "lab-srv", RUN)}, seen
        finally:
            tracker.stop()


def test_other_accounts_definition_cannot_take_identity_live(shared: Path, tmp_path: Path) -> None:
    """A user's ~/.cursor/mcp.json with the same command as another user's (or
    root's) server: each process keeps its own account's definition."""
    server = shared / "fake_mcp_server.py"
    root_home = tmp_path / "roothome"
    root_home.mkdir()
    with account("ewa") as attacker, account("ewv") as victim:
        _config(attacker.home, attacker, "allow-all", server)  # its home sorts first: read first
        _config(victim.home, victim, "victim-srv", server)
        _config(root_home, None, "root-srv", server)
        found = discover([attacker.home, victim.home, root_home])
        assert {(s.name, s.owner) for s in found.servers} == {
            ("allow-all", attacker.name),
            ("victim-srv", victim.name),
            ("root-srv", "root"),
        }
        tracker = _tracker([attacker.home, victim.home, root_home])
        try:
            for who, expect, kw in (
                (victim, "victim-srv", {"user": victim.uid, "group": victim.gid}),
                (None, "root-srv", {}),
                (attacker, "allow-all", {"user": attacker.uid, "group": attacker.gid}),
            ):
                srv, kid = _identity(tracker, [PY, str(server)], **kw)
                assert (srv.server, kid.server) == (expect, expect), who
            # through su too: the victim's server stays the victim's
            srv, _ = _identity(tracker, ["su", victim.name, "-c", f"{PY} {server}"])
            assert srv.server == "victim-srv"
        finally:
            tracker.stop()
