"""Monitor DoS (#17), whole daemon: a watched server run by a real unprivileged
account opens N TCP connections to the lab and keeps every one, each with half
a ClientHello sent (the record header promises more), so it holds N sockets
while each new SYN asks the daemon who sent it. Measured: the daemon's CPU
(utime + stime of its process), the packets the kernel dropped, and how many
of the N flows were attributed to the server. Used by bench/monitor_dos_bench.py
and tests/test_monitor_dos_live.py."""

from __future__ import annotations

import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers.accounts import account
from tests.helpers.hostiled import DATA, PY, Daemon, shared_dir, write_mcp
from tests.helpers.netlab import Lab, wait_for

LISTENER = r"""
import resource, selectors, socket, sys
n = int(sys.argv[1])
resource.setrlimit(resource.RLIMIT_NOFILE, (n + 1000, n + 1000))
ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", 443)); ls.listen(4096)
held = []
print("ready", flush=True)
while True:
    c, _ = ls.accept()
    held.append(c)
"""


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_dos(
    tmp: Path, sockets: int, fallback: bool, settle: float = 10.0, limit: float = 600.0
) -> dict[str, Any]:
    """One run; ``tmp`` a root-only directory. ``fallback``: the daemon without
    its eBPF programs (EGRESSWATCH_NO_BPF=1), where each SYN is looked up in
    userspace. The run ends when all N flows are stored or none came for
    ``settle`` s."""
    need = sockets + 1000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < need:  # inherited by the host and the holder (the account may raise its soft limit to it)
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(soft, need), need))
    env = {"EGRESSWATCH_NO_BPF": "1"} if fallback else {}
    with Lab() as lab, shared_dir() as shared, account("ewdos") as user:
        lab.start_dns()
        listener = lab.spawn(sys.executable, "-c", LISTENER, str(sockets), stdout=subprocess.PIPE)
        assert listener.stdout is not None and listener.stdout.readline().strip() == "ready"
        holder = shared / "holder.py"
        shutil.copy(DATA / "socket_holder.py", holder)
        holder.chmod(0o644)
        go, out = shared / "go", user.home / "holder.out"
        mcp = write_mcp(
            user.home, {"holder": [PY, str(holder), lab.peer4, str(sockets), str(go), str(out)]}, user
        )
        d = Daemon(tmp, lab, [user.home], {"holder": ["nothing.test"]}, env=env, alert_budget=False)
        try:
            d.launch_host(mcp, user)
            wait_for(lambda: out.exists() and "pid" in out.read_text(), 30, "the holder started")
            holder_pid = int(out.read_text().split()[1])
            assert d.proc is not None
            cpu0, drops0, t0 = _cpu_seconds(d.proc.pid), d.counters().get("kernel_drops", 0), time.monotonic()
            go.touch()
            last_n, last_change, n, opened = -1, time.monotonic(), 0, None
            while time.monotonic() - t0 < limit:
                time.sleep(1)
                flows = _flows(d, lab.peer4)
                n = len(flows)
                if n != last_n:
                    last_n, last_change = n, time.monotonic()
                if opened is None and "opened" in out.read_text():
                    opened = float(out.read_text().split("opened")[1].split()[0])
                if n >= sockets or time.monotonic() - last_change > settle:
                    break
            elapsed = last_change - t0
            cpu = _cpu_seconds(d.proc.pid) - cpu0
            c0 = time.process_time()
            listed = _list_sockets(holder_pid)  # what one listing of the holder costs (CPU)
            one_listing = time.process_time() - c0
            counters = d.counters()
            attributed = sum(1 for s, p in flows.values() if s == "holder" and p == holder_pid)
            return {
                "sockets": sockets,
                "mode": "fallback" if fallback else "ebpf",
                "holder_opened_s": opened,
                "flows_stored": n,
                "flows_attributed": attributed,
                "flows_unattributed": sockets - attributed,
                "daemon_cpu_s": round(cpu, 2),
                "until_last_flow_s": round(elapsed, 2),
                "daemon_cpu_share": round(cpu / elapsed, 2) if elapsed > 0 else None,
                "kernel_drops": int(counters.get("kernel_drops", 0)) - int(drops0),
                "holder_sockets_listed": listed,
                "one_listing_cpu_s": round(one_listing, 4),
                "unattributed_counter": counters.get("unattributed"),
            }
        finally:
            d.close()
            listener.kill()


def _list_sockets(pid: int) -> int:
    """List a process's fds as the userspace lookup does (readlink each); its sockets."""
    base = f"/proc/{pid}/fd"
    n = 0
    for fd in os.listdir(base):
        try:
            n += os.readlink(f"{base}/{fd}").startswith("socket:[")
        except OSError:
            pass
    return n


def _flows(d: Daemon, peer: str) -> dict[int, tuple[str | None, int | None]]:
    """source port -> (server, pid) of each TCP flow to the lab's :443, as its SYN was attributed."""
    flows: dict[int, tuple[str | None, int | None]] = {}
    for r in d.rows():
        if r["kind"] == "connect" and r["dst"] == peer and r["dport"] == 443:
            if flows.get(r["sport"], (None,))[0] is None:
                flows[r["sport"]] = (r["server"], r["pid"])
    return flows
