"""Lineage: wrapper-aware command matching, classify() over hand-built chains,
the proc connector decoder, and the tracker following real processes."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from egresswatch.attribute.lineage import LineageTracker
from egresswatch.attribute.procevents import EXEC, EXIT, FORK, decode_events, read_process
from egresswatch.config import DEFAULT_LAUNCHER_PATTERNS
from egresswatch.mcp.hosts import host_app
from egresswatch.mcp.match import INSTALL, RUN, classify
from egresswatch.mcp.matcher import Matcher
from egresswatch.mcp.serverdef import ServerDef
from egresswatch.mcp.signature import signature
from egresswatch.model import ProcessInfo
from tests.helpers.netlab import missing, wait_for

_pid = iter(range(1000, 100000))


def P(*argv: str, name: str | None = None, exe: str | None = None) -> ProcessInfo:
    pid = next(_pid)
    return ProcessInfo(
        pid=pid,
        create_time=1000.0 + pid,
        name=name or os.path.basename(argv[0]),
        exe=exe,
        cmdline=tuple(argv),
    )


def sd(name: str, command: str, *args: str, host: str = "cursor", cwd: str | None = None) -> ServerDef:
    return ServerDef(
        host=host,
        scope="user",
        file=Path("/home/u/.cursor/mcp.json"),
        name=name,
        command=command,
        args=tuple(args),
        cwd=Path(cwd) if cwd else None,
    )


FS = sd("filesystem", "npx", "-y", "@modelcontextprotocol/server-filesystem", "/home/u")
FETCH = sd("fetch", "uvx", "mcp-server-fetch", host="claude-desktop")
PG = sd("pg", "docker", "run", "-i", "--rm", "-e", "PGURL", "mcp/postgres", host="vscode")
LOCAL = sd("local", "node", "/opt/srv/build/index.js", "--stdio", host="windsurf")
SERVERS = [FS, FETCH, PG, LOCAL]

CURSOR = P("/usr/share/cursor/cursor", "--type=utility", name="cursor")
INIT = P("/sbin/init", name="systemd")


def chain(*procs: ProcessInfo) -> list[ProcessInfo]:
    """Processes given outermost first; classify wants the process first."""
    return list(reversed(procs))


@pytest.mark.parametrize(
    ("argv", "kind", "name", "args"),
    [
        (["npx", "-y", "@scope/pkg@1.2.3", "a"], "npm", "@scope/pkg", ("a",)),
        (["npm", "exec", "--yes", "--", "pkg@latest", "a"], "npm", "pkg", ("a",)),
        (["node", "/usr/lib/node_modules/npm/bin/npx-cli.js", "-y", "pkg"], "npm", "pkg", ()),
        (["npx", "--package=@s/p", "bin-name", "x"], "npm", "@s/p", ("x",)),
        (["sh", "-c", "npx -y 'pkg' --flag"], "npm", "pkg", ("--flag",)),
        (["bash", "-lc", "exec uvx mcp-server-fetch"], "py", "mcp-server-fetch", ()),
        (["sh", "-c", "/usr/bin/python3 /tmp/s.py --a; true"], "exe", "/tmp/s.py", ("--a",)),
        (["cmd", "/c", "npx", "-y", "pkg"], "npm", "pkg", ()),
        (["uvx", "--from", "git+https://x/y", "tool", "a"], "py", "git+https://x/y", ("a",)),
        (["uv", "tool", "uvx", "Mcp_Server[extra]==1.0"], "py", "mcp-server", ()),
        (["pipx", "run", "pkg", "a"], "py", "pkg", ("a",)),
        (["uv", "--directory", "/p", "run", "server.py", "x"], "exe", "server.py", ("x",)),
        (
            ["docker", "run", "-i", "--rm", "-e", "K=v", "mcp/postgres:latest", "u"],
            "docker",
            "mcp/postgres",
            ("u",),
        ),
        (["python3.11", "-u", "-m", "mcp_git", "--repo", "."], "pymod", "mcp_git", ("--repo", ".")),
        (["env", "A=1", "node", "--import", "tsx", "srv.ts"], "exe", "srv.ts", ()),
        (["/usr/bin/python3", "/tmp/fake.py"], "exe", "/tmp/fake.py", ()),
    ],
)
def test_signature_sees_through_wrappers(
    argv: list[str], kind: str, name: str, args: tuple[str, ...]
) -> None:
    sig = signature(argv)
    assert sig is not None
    assert (sig.kind, sig.name, sig.args) == (kind, name, args)


def test_signature_of_odd_input_is_none_or_generic() -> None:
    assert signature([]) is None
    assert signature(["sh", "-c", "echo 'unterminated"]) is None
    assert signature(["npx"]) is None
    sig = signature(["node", "-e", "x"])
    assert sig is not None and sig.kind == "exe" and sig.name == "node"


def test_npx_chain_install_then_run() -> None:
    sh = P("sh", "-c", "npx -y @modelcontextprotocol/server-filesystem /home/u")
    npx = P("npm", "exec", "@modelcontextprotocol/server-filesystem", "/home/u", name="npm exec")
    install = P("npm", "install", "--no-save", "esbuild")
    post = P("sh", "-c", "node install.js")
    post_node = P("node", "install.js")
    server = P("node", "/root/.npm/_npx/4f2a/node_modules/.bin/mcp-server-filesystem", "/home/u")
    child = P("git", "status")
    base = (INIT, CURSOR, sh, npx)

    lin = classify(chain(*base), SERVERS)
    assert lin is not None and (lin.server, lin.host, lin.phase, lin.root) == (
        "filesystem",
        "cursor",
        INSTALL,
        sh,
    )
    assert lin.depth == 1 and lin.via == "config"
    for tail in ((install,), (install, post), (install, post, post_node)):
        lin = classify(chain(*base, *tail), SERVERS)
        assert lin is not None and lin.phase == INSTALL and lin.root == sh
    lin = classify(chain(*base, server), SERVERS)
    assert lin is not None and lin.phase == RUN and lin.depth == 2
    lin = classify(chain(*base, server, child), SERVERS)
    assert lin is not None and (lin.server, lin.phase, lin.depth) == ("filesystem", RUN, 3)


def test_lifecycle_env_mark_makes_install() -> None:
    npx = P("npx", "-y", "@modelcontextprotocol/server-filesystem", "/home/u")
    post = P("sh", "-c", "./postinstall.sh")
    curl = P("curl", "https://evil.example")
    assert classify(chain(CURSOR, npx, post, curl), SERVERS).phase == RUN  # type: ignore[union-attr]
    lin = classify(chain(CURSOR, npx, post, curl), SERVERS, install_marks={post.key})
    assert lin is not None and lin.phase == INSTALL


def test_run_phase_server_spawning_npm_install_stays_run() -> None:
    srv = P("node", "/opt/srv/build/index.js", "--stdio")
    npm = P("npm", "install", "left-pad")
    lin = classify(chain(srv, npm), SERVERS)
    assert lin is not None and (lin.server, lin.host, lin.phase) == ("local", "windsurf", RUN)


def test_uvx_final_python_matches_without_runner_parent() -> None:
    py = P("/root/.cache/uv/archive-v0/ab/bin/python", "/root/.cache/uv/archive-v0/ab/bin/mcp-server-fetch")
    lin = classify([py, INIT], SERVERS)
    assert lin is not None and (lin.server, lin.host, lin.phase) == ("fetch", "claude-desktop", RUN)
    uvx, uv = P("uvx", "mcp-server-fetch"), P("uv", "tool", "uvx", "mcp-server-fetch")
    build = P("/root/.cache/uv/builds-v0/.tmpX/bin/python", "-c", "from pep517 import build_wheel")
    assert classify(chain(uvx, uv, build), SERVERS).phase == INSTALL  # type: ignore[union-attr]
    lin = classify(chain(uvx, uv, py), SERVERS)
    assert lin is not None and lin.root == uvx and lin.phase == RUN


def test_docker_and_relative_script_with_cwd() -> None:
    d = P("docker", "run", "-i", "--rm", "-e", "PGURL", "mcp/postgres")
    assert classify([d], SERVERS).server == "pg"  # type: ignore[union-attr]
    rel = sd("rel", "node", "build/index.js", cwd="/srv/app")
    p = P("node", "/srv/app/build/index.js")
    assert classify([p], [rel]).server == "rel"  # type: ignore[union-attr]
    assert classify([P("node", "/other/build/index2.js")], [rel]) is None


def test_args_must_agree_and_generic_defs_never_match() -> None:
    other = P("npx", "-y", "@modelcontextprotocol/server-filesystem", "/etc")
    assert classify([other], [FS]) is None
    generic = sd("bad", "node")
    assert classify([P("node", "/anything.js")], [generic]) is None
    disabled = ServerDef(
        host="cursor",
        scope="user",
        file=Path("/x"),
        name="off",
        command="npx",
        args=("-y", "pkg"),
        disabled=True,
    )
    assert classify([P("npx", "-y", "pkg")], [disabled]) is None


def test_pattern_match_takes_host_from_ancestor_app() -> None:
    claude = P("node", "/usr/local/bin/claude")
    srv = P("npx", "-y", "some-mcp-server")
    child = P("python3", "helper.py")
    lin = classify(chain(INIT, claude, srv, child), [], DEFAULT_LAUNCHER_PATTERNS)
    assert lin is not None
    assert (lin.server, lin.host, lin.via, lin.root, lin.phase) == (
        "some-mcp-server",
        "claude-code",
        "pattern",
        srv,
        RUN,
    )
    assert classify(chain(INIT, claude, P("python3", "helper.py")), [], DEFAULT_LAUNCHER_PATTERNS) is None
    assert host_app(P("/usr/share/code/code", "--type=extensionHost")) == "vscode"


def test_same_server_in_two_hosts_prefers_the_ancestor_host() -> None:
    a = sd("fs", "npx", "-y", "pkg", host="cursor")
    b = sd("fs", "npx", "-y", "pkg", host="windsurf")
    wind = P("/opt/windsurf/windsurf", name="windsurf")
    srv = P("npx", "-y", "pkg")
    assert classify(chain(wind, srv), [a, b]).host == "windsurf"  # type: ignore[union-attr]
    assert classify(chain(CURSOR, srv), [a, b]).host == "cursor"  # type: ignore[union-attr]


def test_bad_pattern_is_ignored() -> None:
    m = Matcher([], ["(unclosed", "mcp"])
    assert len(m.patterns) == 1


# -- proc connector decoding -----------------------------------------------------


def _nl(what: int, data: bytes) -> bytes:
    ev = struct.pack("=IIQ", what, 0, 123) + data
    cn = struct.pack("=IIIIHH", 1, 1, 0, 0, len(ev), 0) + ev
    msg = struct.pack("=IHHII", 16 + len(cn), 3, 0, 0, 0) + cn
    return msg + b"\0" * (-len(msg) % 4)


def test_decode_events() -> None:
    buf = (
        _nl(FORK, struct.pack("=IIII", 10, 10, 11, 11))
        + _nl(EXEC, struct.pack("=II", 11, 11))
        + _nl(EXIT, struct.pack("=IIIIII", 12, 11, 0, 17, 10, 10))
    )
    evs = decode_events(buf)
    assert [(e.what, e.pid, e.tid, e.ppid) for e in evs] == [
        (FORK, 11, 11, 10),
        (EXEC, 11, 11, 0),
        (EXIT, 11, 12, 10),
    ]
    assert decode_events(buf[:-7]) == evs[:2]
    assert decode_events(b"\xff" * 3) == []
    assert decode_events(struct.pack("=IHHII", 8, 3, 0, 0, 0)) == []


# -- live tracking ----------------------------------------------------------------

DAEMON = r"""
import os, sys, time
pid = os.fork()
if pid:
    os._exit(0)            # middle parent exits at once
os.setsid()
if os.fork():
    os._exit(0)
sys.stdout.write(f"{os.getpid()}\n"); sys.stdout.flush()
time.sleep(float(sys.argv[1]))
"""


def _run_tree(tmp_path: Path, server_script: Path) -> tuple[subprocess.Popen[str], int]:
    host = subprocess.Popen(
        ["sh", "-c", f"exec {sys.executable} {server_script}"], stdout=subprocess.PIPE, text=True
    )
    assert host.stdout is not None
    return host, int(host.stdout.readline())


def test_tracker_follows_double_fork_setsid(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the proc connector needs root")
    script = tmp_path / "fake_srv.py"
    script.write_text(
        "import subprocess, sys\n"
        f"p = subprocess.Popen([sys.executable, '-c', {DAEMON!r}, '3'], stdout=subprocess.PIPE, text=True)\n"
        "print(p.stdout.readline().strip(), flush=True)\n"
        "import time; time.sleep(3)\n"
    )
    srv = sd("fake-srv", sys.executable, str(script), host="cursor")
    tr = LineageTracker([srv], DEFAULT_LAUNCHER_PATTERNS)
    assert tr.start() == "connector"
    try:
        host, daemon_pid = _run_tree(tmp_path, script)
        try:

            def tied() -> object:
                info, _chain, lin = tr.lookup(daemon_pid)
                return lin if lin is not None and info is not None else None

            lin = wait_for(tied, 5, "daemon tied to fake-srv")
            assert (lin.server, lin.host, lin.phase) == ("fake-srv", "cursor", RUN)
            real = read_process(daemon_pid)
            assert real is not None and real.ppid != lin.root.pid  # reparented away from the tree
            info, chain_, _ = tr.lookup(daemon_pid)
            assert info is not None and info.key == real.key
            assert lin.root.key in [p.key for p in chain_]  # exited middle parents kept
            assert lin.depth >= 3
            trees = [t for t in tr.trees() if t.server == "fake-srv"]
            assert trees and trees[0].host == "cursor"
            other = subprocess.Popen(["sleep", "2"])  # an unrelated process is not tied
            try:
                wait_for(lambda: tr.lookup(other.pid)[0] is not None, 5, "sibling seen")
                assert tr.lookup(other.pid)[2] is None
            finally:
                other.kill()
                other.wait()
        finally:
            host.kill()
            host.wait()
            subprocess.run(["kill", str(daemon_pid)], check=False, capture_output=True)
    finally:
        tr.stop()


def test_tracker_polling_ties_children(tmp_path: Path) -> None:
    script = tmp_path / "poll_srv.py"
    script.write_text(
        "import subprocess, time\n"
        "p = subprocess.Popen(['sleep', '3'])\n"
        "print(p.pid, flush=True)\n"
        "time.sleep(3)\n"
    )
    tr = LineageTracker([sd("poll-srv", sys.executable, str(script), host="zed")], poll_interval=0.02)
    assert tr.start(use_connector=False) == "poll"
    try:
        host, child = _run_tree(tmp_path, script)
        try:
            lin = wait_for(lambda: tr.lookup(child)[2], 5, "child tied by polling")
            assert (lin.server, lin.host, lin.phase, lin.depth) == ("poll-srv", "zed", RUN, 1)
            host.kill()
            host.wait()
            subprocess.run(["kill", str(child)], check=False)
            wait_for(lambda: not tr.alive(lin.root.key), 5, "root retired")
            assert tr.lookup_key(lin.root.key)[0] is not None  # kept after exit
        finally:
            host.kill()
            host.wait()
    finally:
        tr.stop()


def test_tracker_ties_child_that_never_execs(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the proc connector needs root")
    script = tmp_path / "forker.py"
    script.write_text(
        "import os, sys, time\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    time.sleep(0.5); os._exit(0)\n"
        "print(pid, flush=True)\n"
        "os.waitpid(pid, 0); time.sleep(1)\n"
    )
    tr = LineageTracker([sd("forker", sys.executable, str(script))])
    tr.start()
    try:
        p = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True)
        assert p.stdout is not None
        child = int(p.stdout.readline())
        real = read_process(child)
        assert real is not None
        lin = wait_for(lambda: tr.lookup(child)[2], 5, "forked child tied")
        assert lin.server == "forker" and lin.depth == 1
        wait_for(lambda: not tr.alive(real.key), 5, "child exit seen")
        info, chain_, lin2 = tr.lookup_key(real.key)
        assert info is not None and lin2 is not None and lin2.server == "forker"
        assert chain_ and chain_[0].pid == p.pid
        p.wait()
    finally:
        tr.stop()


def test_read_cmdline_of_a_node_process_title() -> None:
    """npm sets process.title ("npm exec pkg"): /proc shows one space-joined string."""
    import shutil

    node = shutil.which("node")
    if node is None:
        pytest.skip("node not installed")
    p = subprocess.Popen(
        [node, "-e", "process.title='npm exec fake-pkg --x'; console.log('ok'); setTimeout(() => {}, 3000)"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert p.stdout is not None and p.stdout.readline().strip() == "ok"
        info = read_process(p.pid)
        assert info is not None and info.cmdline == ("npm", "exec", "fake-pkg", "--x")
        srv = sd("pkg", "npx", "-y", "fake-pkg", "--x")
        lin = classify([info], [srv])
        assert lin is not None and (lin.server, lin.phase) == ("pkg", INSTALL)
    finally:
        p.kill()
        p.wait()


def test_docker_options_with_values_are_skipped_like_the_audit_does() -> None:
    """The lineage matcher and the audit read launch lines with one option table
    (egresswatch.mcp.launchers): a value like ``--network-alias db`` is not the image."""
    from egresswatch.audit.rules import parse_launch

    argv = ["docker", "run", "-i", "--rm", "--network-alias", "db", "--cidfile", "/tmp/c", "mcp/postgres:1.2"]
    sig = signature(argv)
    assert sig is not None and "mcp/postgres" in repr(sig) and "'db'" not in repr(sig)
    launch = parse_launch(argv[0], tuple(argv[1:]))
    assert "mcp/postgres" in repr(launch)


EVICT_SERVER = r"""
import os, sys, time
go_r, go_w = os.pipe()
pid = os.fork()
if pid == 0:                       # middle parent
    if os.fork():
        os._exit(0)
    os.setsid()
    if os.fork():                  # second middle parent
        os._exit(0)
    print(os.getpid(), flush=True)
    os.read(go_r, 1)               # wait until the server ran its children
    os.execv("/bin/sleep", ["sleep", "30"])
os.waitpid(pid, 0)
for i in range(int(sys.argv[1])):   # short-lived children: each exit fills the store of exited processes
    os.waitpid(os.posix_spawn("/bin/true", ["true"], {}), 0)
print("done", flush=True)
os.write(go_w, b"x")
time.sleep(30)
"""


def test_lineage_of_live_descendants_survives_many_exits(tmp_path: Path) -> None:
    """A double fork, then 4,200 short /bin/true children (more than the store of
    exited processes keeps): the grandchild's exited middle parents are still
    needed by a live process, so they are kept, and its exec stays watched."""
    if os.geteuid() != 0:
        missing("the proc connector needs root")
    script = tmp_path / "evict_srv.py"
    script.write_text(EVICT_SERVER)
    tr = LineageTracker([sd("evict-srv", sys.executable, str(script))])
    assert tr.start() == "connector"
    srv = subprocess.Popen([sys.executable, str(script), "4200"], stdout=subprocess.PIPE, text=True)
    grandchild = 0
    try:
        assert srv.stdout is not None
        grandchild = int(srv.stdout.readline())
        assert srv.stdout.readline().strip() == "done"
        wait_for(lambda: tr.counters["exits"] >= 4200, 120, "the children's exits processed")
        assert tr.counters["dead_evicted"] > 0  # the bound on exited processes was reached
        wait_for(
            lambda: (read_process(grandchild) or ProcessInfo(0, 0)).name == "sleep", 5, "grandchild exec"
        )
        lin = wait_for(lambda: (lambda i, c, lin: lin if i and i.name == "sleep" else None)(*tr.lookup(grandchild)),
                       5, "grandchild's exec classified")  # fmt: skip
        assert (lin.server, lin.phase) == ("evict-srv", RUN)
        _info, chain_, _ = tr.lookup(grandchild)
        assert [p.pid for p in chain_][-1:] != [] and srv.pid in [
            p.pid for p in chain_
        ]  # chain reaches the root
        assert tr.counters["held_evicted"] == 0
    finally:
        srv.kill()
        srv.wait()
        if grandchild:
            subprocess.run(["kill", str(grandchild)], check=False, capture_output=True)
        tr.stop()
