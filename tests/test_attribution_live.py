"""Acceptance: real processes launched by a fake MCP host from a real config
file, real packets captured on the lab veth, attributed live.

A fake Cursor (``bin/cursor``) reads ~/.cursor/mcp.json from a temporary home
and launches two servers:

- ``fake-pg`` (``sh -c "python3 server.py"``) whose children query the lab's
  DNS server and open TLS connections to its openssl s_server: a plain child,
  a forked child that lives ~20 ms, a double-forked setsid daemon whose
  middle parent exits at once, and a ``sh -c "sh -c '...'"`` chain;
- ``fake-npx`` (``npx -y fake-mcp-pkg``, a fake npx on PATH) that runs a real
  ``npm run postinstall`` whose script connects (phase install) and then the
  package's server binary, which connects too (phase run).

A sibling started by the test itself does the same and must not be tied.
"""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.attribute.attributor import LiveAttributor
from egresswatch.attribute.kernel import KernelAttributor
from egresswatch.attribute.lineage import LineageTracker
from egresswatch.config import DEFAULT_LAUNCHER_PATTERNS
from egresswatch.decode.engine import Engine
from egresswatch.ebpf.loader import KernelFlows
from egresswatch.mcp.discovery import discover
from egresswatch.mcp.match import INSTALL, RUN
from egresswatch.mcp.serverdef import ServerDef
from egresswatch.model import Event, Frame
from egresswatch.pipeline import Pipeline
from tests.helpers.netlab import Lab, missing, wait_for

PY = sys.executable
ETH_P_ALL = 0x0003
SO_TIMESTAMPNS = 35


class Sniffer:
    """Minimal AF_PACKET capture on one interface feeding a Pipeline inline,
    so attribution happens as soon as each packet arrives (as in the daemon)."""

    def __init__(self, ifname: str, pipeline: Pipeline, hold: float = 0.0) -> None:
        self.pipeline = pipeline
        self.hold = hold  # handle each packet this long after the kernel saw it (emulates netem)
        self.events: list[Event] = []
        self.delays: list[float] = []
        self.lock = threading.Lock()
        self.sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self.sock.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.bind((ifname, 0))
        self.sock.settimeout(0.05)
        self.stop_flag = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        n = 0
        while not self.stop_flag.is_set():
            try:
                data, anc, _flags, _addr = self.sock.recvmsg(65535, 64)
            except TimeoutError:
                continue
            n += 1
            ts = time.time()
            for level, typ, raw in anc:
                if level == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS and len(raw) >= 16:
                    sec, nsec = struct.unpack("=qq", raw[:16])
                    ts = sec + nsec / 1e9
            if self.hold:
                time.sleep(max(0.0, ts + self.hold - time.time()))
            evs = self.pipeline.feed(Frame(ts=ts, data=data, linktype=1, index=n))
            if evs:
                self.delays.extend(time.time() - e.obs.ts for e in evs)  # attribution latency
                with self.lock:
                    self.events.extend(evs)

    def snapshot(self) -> list[Event]:
        with self.lock:
            return list(self.events)

    def close(self) -> None:
        self.stop_flag.set()
        self.thread.join(timeout=3)
        self.sock.close()


CLIENT = r"""
import os, socket, ssl, sys, time
from dnslib import DNSRecord

def record(name):
    with open(os.environ["EW_RESULTS"], "a") as f:
        f.write(f"{name} {os.getpid()}\n")

def dns(name):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(3)
    s.connect((os.environ["EW_PEER"], 53))
    s.send(DNSRecord.question(f"{name}.test").pack())
    s.recv(4096)
    s.close()  # at once, as getaddrinfo does

def tls(name, hold=0.0):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection((os.environ["EW_PEER"], 443), timeout=3) as raw:
        with ctx.wrap_socket(raw, server_hostname=f"{name}.test"):
            time.sleep(hold)

def both(name):
    dns(name)
    tls(name)
    record(name)

if __name__ == "__main__":
    both(sys.argv[1])
"""

SERVER = r"""
import os, subprocess, sys, time
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from client import both, record, tls
here = os.path.dirname(os.path.abspath(__file__))
py = sys.executable
subprocess.run([py, os.path.join(here, "client.py"), "plain"], check=True)
t0 = time.monotonic()
pid = os.fork()
if pid == 0:                      # lives ~20 ms, never execs
    record("short")
    tls("short", hold=max(0.0, 0.02 - (time.monotonic() - t0)))  # the socket dies with the process
    os._exit(0)
os.waitpid(pid, 0)
pid = os.fork()
if pid == 0:                      # double fork + setsid, middle parent exits at once
    os.setsid()
    if os.fork():
        os._exit(0)
    time.sleep(0.05)
    both("daemon")
    os._exit(0)
os.waitpid(pid, 0)
subprocess.run(["sh", "-c", f"sh -c '{py} {here}/client.py shc; true'"], check=True)
"""

FAKE_NPX = r"""#!{py}
import os, subprocess, sys
here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
env = dict(os.environ, npm_config_update_notifier="false", npm_config_offline="true",
           npm_config_audit="false", npm_config_fund="false", npm_config_registry="http://127.0.0.1:9/")
subprocess.run(["npm", "run", "postinstall"], cwd=os.path.join(here, "pkg"), env=env, check=True,
               stdout=subprocess.DEVNULL)
subprocess.run([sys.executable, os.path.join(here, "_npx", "4f2a", "node_modules", ".bin", "fake-mcp-pkg")],
               check=True)
"""

NPX_BIN = r"""
import os, sys
sys.path.insert(0, os.environ["EW_DIR"])
from client import both
both("run")
"""

HOST = r"""#!{py}
import json, os, subprocess, sys
home = os.environ["HOME"]
cfg = json.load(open(os.path.join(home, ".cursor", "mcp.json")))
procs = [subprocess.Popen([s["command"], *s.get("args", [])]) for s in cfg["mcpServers"].values()]
sys.exit(max(p.wait() for p in procs))
"""


@pytest.fixture
def world(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    d = tmp_path / "w"
    (d / "bin").mkdir(parents=True)
    (d / "client.py").write_text(CLIENT)
    (d / "server.py").write_text(SERVER)
    for name, text in (("npx", FAKE_NPX), ("cursor", HOST)):
        p = d / "bin" / name
        p.write_text(text.replace("{py}", PY))
        p.chmod(0o755)
    binp = d / "_npx" / "4f2a" / "node_modules" / ".bin" / "fake-mcp-pkg"
    binp.parent.mkdir(parents=True)
    binp.write_text(NPX_BIN)
    (d / "pkg").mkdir()
    (d / "pkg" / "package.json").write_text(
        json.dumps(
            {
                "name": "fake-mcp-pkg",
                "version": "1.0.0",
                "scripts": {"postinstall": f"{PY} {d}/client.py install"},
            }
        )
    )
    home = tmp_path / "home"
    (home / ".cursor").mkdir(parents=True)
    (home / ".cursor" / "mcp.json").write_text(
        json.dumps(
            {
                "mcpServers": {
                    "fake-pg": {"command": "sh", "args": ["-c", f"{PY} {d}/server.py"]},
                    "fake-npx": {"command": "npx", "args": ["-y", "fake-mcp-pkg"]},
                }
            }
        )
    )
    yield d, home


def _results(path: Path) -> dict[str, int]:
    if not path.exists():
        return {}
    return {n: int(p) for n, p in (line.split() for line in path.read_text().splitlines() if line.strip())}


@pytest.mark.live
def test_flows_are_tied_to_server_host_and_phase(world: tuple[Path, Path]) -> None:
    d, home = world
    if os.geteuid() != 0:
        pytest.skip("needs root")
    found = discover(homes=[home])
    names = sorted(s.name for s in found.servers)
    assert names == ["fake-npx", "fake-pg"], found.warnings
    _run_world(d, home, found.servers)


def _run_world(d: Path, home: Path, servers: tuple[ServerDef, ...]) -> None:
    with Lab() as lab:
        lab.start_dns()
        lab.start_tls()
        tracker = LineageTracker(servers, DEFAULT_LAUNCHER_PATTERNS)
        # the daemon's stack: the kernel's send-time records first, socket lookups behind
        kernel, why = KernelFlows.open()
        if kernel is None:
            missing(f"the eBPF programs did not load: {why}")
        tracker.exec_source = kernel.exec_record
        assert tracker.start() == "connector"
        attributor = KernelAttributor(kernel, LiveAttributor(tracker))
        attributor.start()
        sniffer = Sniffer(lab.veth_host, Pipeline(Engine(), attributor))
        results = d / "results.txt"
        env = dict(
            os.environ,
            HOME=str(home),
            EW_PEER=lab.peer4,
            EW_RESULTS=str(results),
            EW_DIR=str(d),
            PATH=f"{d / 'bin'}:{os.environ['PATH']}",
        )
        try:
            host = subprocess.Popen([str(d / "bin" / "cursor")], env=env)
            sibling = subprocess.run([PY, str(d / "client.py"), "sibling"], env=env, check=True)
            assert sibling.returncode == 0
            assert host.wait(timeout=60) == 0
            expect = {"plain", "short", "daemon", "shc", "install", "run", "sibling"}
            pids = wait_for(lambda: (r := _results(results)).keys() >= expect and r, 20, "all clients")

            def complete() -> list[Event] | None:
                evs = sniffer.snapshot()
                got = {(e.obs.sni or e.obs.qname or "").split(".")[0] for e in evs}
                return evs if got >= expect else None

            events = wait_for(complete, 10, "events for every client")
        finally:
            sniffer.close()
            attributor.stop()
            tracker.stop()
            kernel.close()

    want = {
        "plain": ("fake-pg", "cursor", RUN),
        "short": ("fake-pg", "cursor", RUN),
        "daemon": ("fake-pg", "cursor", RUN),
        "shc": ("fake-pg", "cursor", RUN),
        "install": ("fake-npx", "cursor", INSTALL),
        "run": ("fake-npx", "cursor", RUN),
        "sibling": (None, None, None),
    }
    ports: dict[int, str] = {}
    for ev in events:
        name = (ev.obs.sni or ev.obs.qname or "").split(".")[0]
        if name not in want:
            continue
        a = ev.attr
        assert a.process is not None, (name, ev.obs.kind, a.reason, attributor.counters, max(sniffer.delays))
        assert a.process.pid == pids[name], (name, ev.obs.kind, a)
        assert (a.server, a.host, a.phase) == want[name], (name, ev.obs.kind, a)
        if ev.obs.kind == "tls_sni":
            ports[ev.obs.sport] = name
    kinds: dict[str, set[str]] = {}
    for ev in events:
        kinds.setdefault((ev.obs.sni or ev.obs.qname or "").split(".")[0], set()).add(ev.obs.kind)
    for name in want:
        assert "tls_sni" in kinds[name]
        if name != "short":
            assert {"dns_query", "dns_answer"} <= kinds[name]
    connects = [ev for ev in events if ev.obs.kind == "connect" and ev.obs.sport in ports]
    assert len(connects) == len(ports)
    for ev in connects:
        name = ports[ev.obs.sport]
        assert ev.attr.process is not None and ev.attr.process.pid == pids[name]
        assert (ev.attr.server, ev.attr.host, ev.attr.phase) == want[name]
    daemon = next(ev.attr for ev in events if ev.obs.sni == "daemon.test")
    assert any(p.cmdline[:2] == ("sh", "-c") for p in daemon.chain)  # the exited launch chain is kept
