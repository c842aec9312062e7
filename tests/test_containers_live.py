"""An MCP server launched as `docker run`: the real daemon ties the container's
processes, and their traffic, to the server (egresswatch.attribute.containers).

A real dockerd (the machine's, else one the test starts on a private socket),
a scratch image made of busybox-static, a lab namespace with a DNS and a TLS
server; readiness from sd_notify, never a sleep.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egresswatch.attribute.containers import _UnixHTTP
from tests.helpers.daemonrun import Daemon, query
from tests.helpers.netlab import Lab, missing, require_live, wait_for

pytestmark = pytest.mark.live
IMAGE = "egresswatch-test/busybox:1"
BUSYBOX = Path("/bin/busybox")


def _need(what: str) -> None:
    missing(f"container test prerequisite missing: {what} (make test installs docker.io and busybox-static)")


def _api_ok(sock: str) -> bool:
    conn = _UnixHTTP(sock, 2.0)
    try:
        conn.request("GET", "/_ping")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _is_static(path: Path) -> bool:
    out = subprocess.run(["ldd", str(path)], capture_output=True, text=True)
    return "not a dynamic executable" in out.stdout + out.stderr or "statically linked" in out.stdout


@pytest.fixture(scope="module")
def docker() -> Iterator[str]:
    """The API socket of a running dockerd, with the test image imported."""
    require_live()
    for tool in ("dockerd", "docker"):
        if shutil.which(tool) is None:
            _need(tool)
    if not BUSYBOX.exists() or not _is_static(BUSYBOX):
        _need("a static /bin/busybox")
    sock, started, work = "/var/run/docker.sock", None, None
    if not _api_ok(sock):
        work = Path(tempfile.mkdtemp(prefix="ewdock"))
        sock = str(work / "docker.sock")
        log = open(work / "dockerd.log", "w")
        started = subprocess.Popen(
            ["dockerd", "-H", f"unix://{sock}", "--data-root", str(work / "data"),
             "--exec-root", str(work / "exec"), "--pidfile", str(work / "docker.pid")],
            stdout=log, stderr=log,
        )  # fmt: skip
        try:
            wait_for(lambda: _api_ok(sock) or started.poll() is not None, 60, "dockerd API")
        except AssertionError:
            started.kill()
            raise
        if started.poll() is not None:
            raise AssertionError("dockerd exited:\n" + (work / "dockerd.log").read_text()[-3000:])
    env = {**os.environ, "DOCKER_HOST": f"unix://{sock}"}
    blob = io.BytesIO()
    with tarfile.open(fileobj=blob, mode="w") as tar:
        tar.add(BUSYBOX, "bin/busybox")
        for applet in ("sh", "nslookup", "nc", "sleep"):
            link = tarfile.TarInfo(f"bin/{applet}")
            link.type, link.linkname = tarfile.SYMTYPE, "busybox"
            tar.addfile(link)
    subprocess.run(
        ["docker", "import", "-", IMAGE], input=blob.getvalue(), env=env, check=True, capture_output=True
    )
    try:
        yield sock
    finally:
        if started is not None:
            started.send_signal(signal.SIGTERM)
            try:
                started.wait(30)
            except subprocess.TimeoutExpired:
                started.kill()
            shutil.rmtree(work or "", ignore_errors=True)


def test_docker_run_server_traffic_is_tied_to_the_server(docker: str, tmp_path: Path) -> None:
    tmp = tmp_path / "ew"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    with Lab() as lab:
        host_side = lab.host4
        lab.start_dns()
        lab.start_tls(443)
        # inside the container, after the server's start-up: a connection to an
        # address it never resolved (held open a moment, as a client does), and a
        # double-forked child that does the same. Processes that live only a few
        # milliseconds inside a container are not reliably attributed yet (see
        # docs/attribution.md), so none is used here.
        script = (
            f"sleep 0.5; sleep 1 | nc -w 2 {lab.peer4} 443; "
            f"(sh -c 'sleep 1 | nc -w 2 {lab.peer4} 443' &); sleep 2"
        )
        args = ["run", "-i", "--rm", IMAGE, "/bin/sh", "-c", script]
        home = tmp / "home" / ".cursor"
        home.mkdir(parents=True)
        (home / "mcp.json").write_text(
            json.dumps({"mcpServers": {"boxed": {"command": "docker", "args": args}}})
        )
        daemon = Daemon(
            tmp,
            f'[daemon]\ndatabase = "{tmp}/events.db"\ncontainer_sockets = ["{docker}"]\n'
            f'[discovery]\nextra_homes = ["{tmp}/home"]\n[policy]\nlearning = false\n'
            '[servers.boxed]\nallow = ["box.test"]\n',
        )
        try:
            daemon.start()
            # the "host" launches the server as its config says
            cli = subprocess.run(
                ["docker", *args], env={**os.environ, "DOCKER_HOST": f"unix://{docker}"},
                stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            assert cli.returncode == 0, cli.stderr
            db = tmp / "events.db"

            def complete() -> list[dict[str, Any]] | None:
                rs = query(db, "SELECT * FROM events WHERE server = 'boxed' AND kind = 'connect'")
                return rs if len({r["sport"] for r in rs}) >= 2 else None

            try:
                events = wait_for(complete, 30, "the container's events tied to the server")
            except AssertionError:
                seen = query(db, "SELECT kind, src, dst_name, server, process, attribution FROM events")
                daemon_log = daemon.log()[-3000:]
                raise AssertionError(f"events: {seen}\ndaemon log:\n{daemon_log}") from None
        finally:
            daemon.stop(timeout=20)
            attribution = daemon.status().get("attribution", {})  # the last status file
            daemon.close()
    for r in events:
        chain = json.loads(r["chain"])
        # a process inside the container (its own address, before the bridge's NAT),
        # filed under the docker CLI the host launched, judged like any other
        assert r["src"] != host_side, r
        assert any(c.get("name") == "docker" for c in chain), (r["process"], chain)
        seen = {k: r[k] for k in ("pid", "process", "cmdline", "attribution")}
        assert json.loads(r["cmdline"])[0] == "nc", (seen, attribution.get("counters"))
        assert (r["verdict"], r["reason"]) == ("flagged", "direct_ip"), r
