"""A small network lab for live tests: a network namespace joined to the root
namespace by a veth pair, with a real DNS server (dnslib), a TLS server
(openssl s_server) and a UDP endpoint inside it.

Traffic only ever goes to the namespace's own addresses (198.18.0.0/15, the
benchmarking range, and fd00:e9e5::/64) or to loopback.
"""

from __future__ import annotations

import itertools
import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import pytest

HERE = Path(__file__).resolve().parent
_counter = itertools.count(1)


def require_live() -> None:
    """Skip outside CI when root or a tool is missing; fail loudly in CI."""
    problems = []
    if os.geteuid() != 0:
        problems.append("not root")
    for tool in ("ip", "openssl", "tc"):
        if shutil.which(tool) is None:
            problems.append(f"{tool} not installed")
    if problems:
        missing("live test prerequisites missing: " + ", ".join(problems))


def missing(msg: str) -> NoReturn:
    """A test prerequisite is missing: fail loudly in CI, skip elsewhere."""
    if os.environ.get("EGRESSWATCH_REQUIRE_LIVE") or os.environ.get("CI"):
        pytest.fail(msg)
    pytest.skip(msg)


def wait_for(pred: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
    """Poll ``pred`` until it returns something truthy; fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 1.5, 0.2)


def run(*cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, check=check, capture_output=True, text=True)


def _free_subnet(start: int) -> int:
    """The first n >= start (wrapping in 1..250) whose 198.18.n.0/24 no interface
    of the root namespace holds: a lab left behind by a killed run (its veth and
    namespace survive the process) would otherwise own the route to the new
    lab's addresses, and its peer answers ping but not the new servers."""
    out = run("ip", "-4", "-o", "addr", "show", check=False).stdout
    used = {int(w.split(".")[2]) for w in out.split() if w.startswith("198.18.") and w.count(".") == 3}
    for i in range(250):
        n = (start - 1 + i) % 250 + 1
        if n not in used:
            return n
    raise RuntimeError("no free 198.18.n.0/24 subnet for a test lab (clean up stale ew* veths)")


class Lab:
    """``with Lab() as lab:`` creates namespace ``lab.ns`` reachable at
    ``lab.peer4`` / ``lab.peer6`` from the root namespace (``lab.host4``)."""

    def __init__(self, netem_delay_ms: int = 0) -> None:
        n = _free_subnet((os.getpid() * 7 + next(_counter)) % 250 + 1)
        self.n = n
        self.ns = f"ewt{os.getpid() % 100000}x{n}"
        self.veth_host = f"ewh{n}p{os.getpid() % 1000}"[:15]
        self.veth_peer = f"ewp{n}p{os.getpid() % 1000}"[:15]
        self.host4 = f"198.18.{n}.1"
        self.peer4 = f"198.18.{n}.2"
        self.host6 = f"fd00:e9e5:0:{n:x}::1"
        self.peer6 = f"fd00:e9e5:0:{n:x}::2"
        self.netem_delay_ms = netem_delay_ms
        self.procs: list[subprocess.Popen[str]] = []
        self.tmp = Path(f"/tmp/{self.ns}")

    # -- lifecycle -------------------------------------------------------
    def __enter__(self) -> Lab:
        require_live()
        self.tmp.mkdir(parents=True, exist_ok=True)
        run("ip", "netns", "add", self.ns)
        try:
            run("ip", "link", "add", self.veth_host, "type", "veth", "peer", "name", self.veth_peer)
            run("ip", "link", "set", self.veth_peer, "netns", self.ns)
            run("ip", "addr", "add", f"{self.host4}/24", "dev", self.veth_host)
            run("ip", "-6", "addr", "add", f"{self.host6}/64", "dev", self.veth_host, "nodad")
            run("ip", "link", "set", self.veth_host, "up")
            self.nsrun("ip", "addr", "add", f"{self.peer4}/24", "dev", self.veth_peer)
            self.nsrun("ip", "-6", "addr", "add", f"{self.peer6}/64", "dev", self.veth_peer, "nodad")
            self.nsrun("ip", "link", "set", self.veth_peer, "up")
            self.nsrun("ip", "link", "set", "lo", "up")
            if self.netem_delay_ms:
                run(
                    "tc",
                    "qdisc",
                    "add",
                    "dev",
                    self.veth_host,
                    "root",
                    "netem",
                    "delay",
                    f"{self.netem_delay_ms}ms",
                )
            wait_for(self._reachable, 5, "veth link up")
        except Exception:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=3)
            except subprocess.TimeoutExpired:
                p.kill()
        run("ip", "link", "del", self.veth_host, check=False)
        run("ip", "netns", "del", self.ns, check=False)
        shutil.rmtree(self.tmp, ignore_errors=True)

    def _reachable(self) -> bool:
        return (
            run("ping", "-c1", "-W1", self.peer4, check=False).returncode == 0
            if shutil.which("ping")
            else self.nsrun("ip", "link", "show", self.veth_peer).returncode == 0
        )

    # -- running things --------------------------------------------------
    def nsrun(self, *cmd: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run("ip", "netns", "exec", self.ns, *cmd, check=check)

    def spawn(self, *cmd: str, **kw: Any) -> subprocess.Popen[str]:
        p = subprocess.Popen(["ip", "netns", "exec", self.ns, *cmd], text=True, **kw)
        self.procs.append(p)
        return p

    def start_dns(
        self, answer4: str | None = None, answer6: str | None = None, nx: str | None = None
    ) -> None:
        """A dnslib server on port 53 (UDP and TCP) of the namespace; every name
        resolves to ``answer4``/``answer6`` (default: the namespace itself)."""
        args = [
            sys.executable,
            str(HERE / "dns_responder.py"),
            "--address",
            "::",
            "--a",
            answer4 or self.peer4,
            "--aaaa",
            answer6 or self.peer6,
        ]
        if nx:
            args += ["--nx", nx]
        p = self.spawn(*args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout is not None
        line = p.stdout.readline()
        if line.strip() != "ready":
            raise RuntimeError("dns responder did not start")
        try:
            wait_for(lambda: self._port_open(self.peer4, 53), 10, "dns server tcp/53")
        except AssertionError as e:
            route = run("ip", "route", "get", self.peer4, check=False).stdout.strip()
            raise AssertionError(f"{e} (responder alive: {p.poll() is None}; route: {route})") from None

    def start_tls(self, port: int = 443) -> None:
        """openssl s_server on ``port`` of the namespace with a throwaway certificate."""
        key, cert = self.tmp / "key.pem", self.tmp / "cert.pem"
        if not cert.exists():
            run(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "1",
                "-subj",
                "/CN=egresswatch-test",
                "-keyout",
                str(key),
                "-out",
                str(cert),
            )
        self.spawn(
            "openssl",
            "s_server",
            "-quiet",
            "-accept",
            str(port),
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-www",
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for(lambda: self._port_open(self.peer4, port), 5, f"tls server :{port}")

    def start_udp_sink(self, port: int = 443) -> None:
        """A UDP endpoint that reads and discards datagrams (stands in for a QUIC server)."""
        code = (
            "import socket,sys;s=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM);"
            "s.setsockopt(socket.IPPROTO_IPV6,socket.IPV6_V6ONLY,0);"
            f"s.bind(('::',{port}));print('ready',flush=True)\n"
            "while True: s.recvfrom(65535)"
        )
        p = self.spawn(sys.executable, "-c", code, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        assert p.stdout is not None
        if p.stdout.readline().strip() != "ready":
            raise RuntimeError("udp sink did not start")

    @staticmethod
    def _port_open(host: str, port: int) -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False
