"""Server identity from command lines: an exact match on a discovered
definition beats any launcher-pattern match, privilege and scheduling wrappers
(su, sudo, runuser, setpriv, doas, env, nice, ionice, timeout, flatpak-spawn ...)
are seen through like ``sh -c``, and a definition speaks only for the processes
of the account whose config holds it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from egresswatch.config import DEFAULT_LAUNCHER_PATTERNS
from egresswatch.mcp.match import INSTALL, RUN, classify
from egresswatch.mcp.matcher import Matcher
from egresswatch.mcp.serverdef import ServerDef
from egresswatch.mcp.signature import signature
from egresswatch.model import ProcessInfo

SRV = "/srv/lab/fake_mcp_server.py"
_pid = iter(range(50000, 90000))


def P(*argv: str, user: str | None = "alice", name: str | None = None) -> ProcessInfo:
    pid = next(_pid)
    return ProcessInfo(pid, 1000.0 + pid, name=name or os.path.basename(argv[0]), cmdline=argv, user=user)


def sd(name: str, command: str, *args: str, host: str = "cursor", owner: str | None = "alice") -> ServerDef:
    return ServerDef(
        host, "user", Path("/home/alice/.cursor/mcp.json"), name, command, tuple(args), owner=owner
    )


DEF = sd("lab-srv", "/usr/bin/python3", SRV, "--stdio")
NPX_DEF = sd("fs", "npx", "-y", "@modelcontextprotocol/server-filesystem", "/data")
INIT = P("/sbin/init", user="root", name="systemd")
TERM = P("/bin/bash", user="root")
SERVER = ("/usr/bin/python3", SRV, "--stdio")
SCRIPT = f"/usr/bin/python3 {SRV} --stdio"

# Each wrapper as a real launch: the wrapper's process(es), outermost first, then the server.
WRAPPED: dict[str, list[tuple[str, ...]]] = {
    "su": [("su", "alice", "-c", f"cd ~ && {SCRIPT}"), ("bash", "-c", f"cd ~ && {SCRIPT}")],
    "su -": [("su", "-", "alice", "-s", "/bin/sh", "--command", f"export A=1; exec {SCRIPT}")],
    "sudo": [("sudo", "-u", "alice", "-E", "--", *SERVER)],
    "sudo -i": [("sudo", "-H", "-u", "alice", "A=1", *SERVER), ("sudo", "-H", "-u", "alice", "A=1", *SERVER)],
    "runuser -u": [("runuser", "-u", "alice", "--", *SERVER)],
    "runuser -c": [("runuser", "-l", "alice", "-c", SCRIPT)],
    "setpriv": [("setpriv", "--reuid", "1000", "--regid=1000", "--init-groups", "--reset-env", *SERVER)],
    "doas": [("doas", "-u", "alice", *SERVER)],
    "env": [("env", "-i", "PATH=/usr/bin", "-C", "/tmp", *SERVER)],
    "env -S": [("/usr/bin/env", "-S", SCRIPT)],
    "nice": [("nice", "-n", "5", *SERVER)],
    "nice -N": [("nice", "-10", *SERVER)],
    "ionice": [("ionice", "-c", "3", *SERVER)],
    "timeout": [("timeout", "-k", "5", "--signal=TERM", "1h", *SERVER)],
    "flatpak-spawn": [("flatpak-spawn", "--host", "--env=A=1", *SERVER)],
    "chrt+taskset": [("chrt", "-b", "0", "taskset", "-c", "0", *SERVER)],
    "setsid+stdbuf": [("setsid", "-f", "stdbuf", "-o", "L", *SERVER)],
    "stacked": [("sudo", "-u", "alice", "sh", "-c", f"cd /srv && exec nice -n 5 timeout 1h {SCRIPT}")],
}


def _chain(*procs: ProcessInfo) -> list[ProcessInfo]:
    return list(reversed(procs))


def _launch(wrapper: str | None, host: ProcessInfo | None = None) -> list[ProcessInfo]:
    outer = [P(*argv, user="root") for argv in WRAPPED[wrapper]] if wrapper else []
    return _chain(INIT, *([host] if host else [TERM]), *outer, P(*SERVER))


@pytest.mark.parametrize("wrapper", sorted(WRAPPED))
def test_signature_sees_through_wrapper(wrapper: str) -> None:
    sig = signature(WRAPPED[wrapper][0])
    assert sig is not None and (sig.kind, sig.name, sig.args) == ("exe", SRV, ("--stdio",))


@pytest.mark.parametrize("wrapper", [None, *sorted(WRAPPED)])
def test_same_identity_directly_and_through_each_wrapper(wrapper: str | None) -> None:
    """Definitions beat patterns: su's own command line matches a launcher
    pattern (python3 ...mcp_server), but the configured server keeps its name."""
    lin = classify(_launch(wrapper), [DEF], DEFAULT_LAUNCHER_PATTERNS)
    assert lin is not None
    assert (lin.server, lin.host, lin.phase, lin.via) == ("lab-srv", "cursor", RUN, "config")


@pytest.mark.parametrize("wrapper", [None, *sorted(WRAPPED)])
def test_pattern_only_launch_gets_the_same_name_through_each_wrapper(wrapper: str | None) -> None:
    cursor = P("/usr/share/cursor/cursor", "--type=utility", user="alice", name="cursor")
    lin = classify(_launch(wrapper, cursor), [], DEFAULT_LAUNCHER_PATTERNS)
    assert lin is not None
    assert (lin.server, lin.host, lin.phase, lin.via) == ("fake_mcp_server.py", "cursor", RUN, "pattern")


def test_definition_beats_an_outer_pattern_launcher() -> None:
    """A launcher that only matches a pattern runs the configured server: the
    server is named by its definition, not by the launcher."""
    launcher = P("/usr/bin/python3", "/opt/run_mcp_server_launcher.py")
    for outer in ([launcher], [launcher, P("sh", "-c", SCRIPT)]):
        lin = classify(_chain(INIT, TERM, *outer, P(*SERVER)), [DEF], DEFAULT_LAUNCHER_PATTERNS)
        assert lin is not None and (lin.server, lin.host, lin.phase) == ("lab-srv", "cursor", RUN)
    alone = classify(_chain(INIT, TERM, launcher), [DEF], DEFAULT_LAUNCHER_PATTERNS)
    assert alone is not None and alone.via == "pattern"


def test_install_phase_through_wrappers() -> None:
    """A package runner behind sudo/nice is still installing until the server runs."""
    npx = ("npx", "-y", "@modelcontextprotocol/server-filesystem", "/data")
    server = P("node", "/home/alice/.npm/_npx/1/node_modules/.bin/mcp-server-filesystem", "/data")
    sudo = P("sudo", "-u", "alice", *npx, user="root")  # sudo runs the command in a child as alice
    for procs in ([sudo, P(*npx)], [P("nice", "-n", "1", *npx), P("npm", "exec", *npx[2:])]):
        lin = classify(_chain(INIT, TERM, *procs), [NPX_DEF])
        assert lin is not None and (lin.server, lin.phase) == ("fs", INSTALL)
        lin = classify(_chain(INIT, TERM, *procs, server), [NPX_DEF])
        assert lin is not None and (lin.server, lin.phase) == ("fs", RUN)


def test_wrappers_that_launch_nothing_are_not_servers() -> None:
    for argv in (["sudo", "-l"], ["su", "-", "alice"], ["ionice", "-p", "42"], ["taskset", "-p", "42"],
                 ["sudo", "-i"], ["runuser", "-u", "alice"], ["timeout", "5"]):  # fmt: skip
        sig = signature(argv)
        assert sig is not None and sig.args == ()
        assert Matcher([sd("w", *argv)]).defs == []  # a wrapper alone never defines a server


def test_shell_setup_commands_are_passed_over() -> None:
    for script in (f"cd ~ && {SCRIPT}", f"export A=1; B=2 exec {SCRIPT} | tee log", f"set -e\ncd /x\n{SCRIPT}",
                   f"umask 077; ( {SCRIPT} )"):  # fmt: skip
        sig = signature(["sh", "-c", script])
        assert sig is not None and (sig.name, sig.args) == (SRV, ("--stdio",)), script
    sig = signature(["sh", "-c", f"ls && {SCRIPT}"])
    assert sig is not None and sig.name == "ls"  # a real first command stays the command


def test_definition_speaks_only_for_its_owner() -> None:
    """Another account's config with the same command cannot take the identity."""
    victim = sd("victim-srv", *SERVER, owner="alice")
    attacker = sd("allow-all", *SERVER, host="cursor", owner="mallory")
    system = sd("managed", *SERVER, host="claude-code", owner=None)
    for defs in ([attacker, victim], [victim, attacker]):
        lin = classify([P(*SERVER, user="alice"), TERM, INIT], defs)
        assert lin is not None and lin.server == "victim-srv"
        lin = classify([P(*SERVER, user="mallory"), TERM, INIT], defs)
        assert lin is not None and lin.server == "allow-all"
        assert classify([P(*SERVER, user="bob"), TERM, INIT], defs) is None
        assert classify([P(*SERVER, user=None), TERM, INIT], defs) is None  # unknown account: no claim
    lin = classify([P(*SERVER, user="bob"), TERM, INIT], [attacker, system])
    assert lin is not None and lin.server == "managed"  # system-wide files speak for everyone
    # alice's server through sudo or su by root: root's wrapper process is not the
    # account that runs the server, so root's own definition of the same command
    # does not claim it; alice's process below it matches alice's definition
    root_def = sd("root-srv", *SERVER, owner="root")
    for wrapper in (
        ("sudo", "-u", "alice", *SERVER),
        ("su", "alice", "-c", SCRIPT),
        ("nice", "sudo", "-u", "alice", *SERVER),
    ):
        chain = _chain(INIT, TERM, P(*wrapper, user="root"), P(*SERVER, user="alice"))
        lin = classify(chain, [root_def, victim, attacker])
        assert lin is not None and (lin.server, lin.depth) == ("victim-srv", 0), wrapper
        assert classify(chain[1:], [root_def, victim]) is None  # the wrapper alone claims nothing
    lin = classify(_chain(INIT, TERM, P("nice", *SERVER, user="root")), [root_def, victim])
    assert lin is not None and lin.server == "root-srv"  # a wrapper that keeps the account does
    # a definition that itself launches through sudo speaks for its owner's sudo process
    via_sudo = sd("as-bob", "sudo", "-u", "bob", *SERVER, owner="alice")
    sudo = P("sudo", "-u", "bob", *SERVER, user="alice")  # sudo's real uid is the caller's
    lin = classify(_chain(INIT, TERM, sudo, P(*SERVER, user="bob")), [via_sudo])
    assert lin is not None and (lin.server, lin.depth) == ("as-bob", 1)
