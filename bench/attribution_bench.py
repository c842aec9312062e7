#!/usr/bin/env python3
"""Attribution of short-lived processes, measured live.

A fake MCP server (matched through a ServerDef, like a discovered one) forks
short-lived children that each make ONE TCP connection (or one DNS query) to
a lab network namespace behind a veth with 5 ms netem delay, then exit after
a fixed lifetime (10, 50 or 200 ms, counted from the fork). Packets are
captured on the veth with an AF_PACKET socket and attributed as they arrive by
LiveAttributor + LineageTracker (proc connector), as the daemon does.

A child counts as attributed correctly when its SYN (or query) event names
the child's own pid and the fake server.

``--in-process``: no children; the server process itself, once it is older
than 10 s, opens each socket, sends, keeps it for the lifetime and closes it
(the attacker's case: 1 ms sockets inside a long-lived process).
``--kernel``: attribute with the eBPF flow map first (KernelAttributor), as
the daemon does when the programs load; without it, the userspace path only
(the fallback). Run as root::

    python3 bench/attribution_bench.py [--children 200] [--mode tcp|dns|both]
        [--no-harvest] [--gap-ms 10] [--in-process] [--kernel] [--json]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from egresswatch.attribute.attributor import LiveAttributor  # noqa: E402
from egresswatch.attribute.kernel import KernelAttributor  # noqa: E402
from egresswatch.attribute.lineage import LineageTracker  # noqa: E402
from egresswatch.decode.engine import Engine  # noqa: E402
from egresswatch.ebpf.loader import KernelFlows  # noqa: E402
from egresswatch.mcp.serverdef import ServerDef  # noqa: E402
from egresswatch.model import Event  # noqa: E402
from egresswatch.pipeline import Pipeline  # noqa: E402
from tests.helpers.netlab import Lab, wait_for  # noqa: E402
from tests.test_attribution_live import Sniffer  # noqa: E402

SERVER = r"""
import os, socket, sys, time
peer, mode, out = sys.argv[1], sys.argv[2], sys.argv[3]
lifes = [float(x) / 1000 for x in sys.argv[4].split(",")]
n, gap = int(sys.argv[5]), float(sys.argv[6]) / 1000
from dnslib import DNSRecord
fd = os.open(out, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
kids = []
def age():
    start = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
    return float(open("/proc/uptime").read().split()[0]) - start / os.sysconf("SC_CLK_TCK")
if sys.argv[7] == "inproc":
    while age() < 10.0:
        time.sleep(0.1)
    for i in range(n):
        for life in lifes:
            t0 = time.monotonic()
            if mode == "tcp":
                s = socket.socket()
                s.connect((peer, 443))
            else:
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.connect((peer, 53))
                s.send(DNSRecord.question(f"s{i}-{int(life * 1000)}.bench.test").pack())
            os.write(fd, f"{os.getpid()} {s.getsockname()[1]} {int(life * 1000)} {time.time()}\n".encode())
            time.sleep(max(0.0, life - (time.monotonic() - t0)))
            s.close()
            time.sleep(gap)
    n = 0
for i in range(n):
    for life in lifes:
        t0 = time.monotonic()
        pid = os.fork()
        if pid == 0:
            try:
                if mode == "tcp":
                    s = socket.socket()
                    s.connect((peer, 443))
                else:
                    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                    s.connect((peer, 53))
                    s.send(DNSRecord.question(f"c{os.getpid()}.bench.test").pack())
                os.write(fd, f"{os.getpid()} {s.getsockname()[1]} {int(life * 1000)} {time.time()}\n".encode())
                time.sleep(max(0.0, life - (time.monotonic() - t0)))
            finally:
                os._exit(0)
        kids.append(pid)
        time.sleep(gap)
    while kids and len(kids) > 64:
        os.waitpid(kids.pop(0), 0)
for k in kids:
    os.waitpid(k, 0)
"""


def run(
    mode: str, children: int, lifes: list[int], harvest: bool, gap_ms: float, inproc: bool, kernel: bool
) -> dict[str, object]:
    sys.setswitchinterval(0.0005)
    netem = True
    lab = Lab(netem_delay_ms=5)
    try:
        lab.__enter__()
    except subprocess.CalledProcessError:  # kernel without sch_netem: delay the capture instead
        netem = False
        lab = Lab()
        lab.__enter__()
    with contextlib.closing(lab), tempfile.TemporaryDirectory() as tmp:
        lab.start_dns()
        lab.start_tls()
        script = Path(tmp) / "bench_mcp_server.py"
        script.write_text(SERVER)
        truth_file = Path(tmp) / "truth.txt"
        srv = ServerDef(
            host="bench",
            scope="user",
            file=script,
            name="bench-srv",
            command=sys.executable,
            args=(str(script),),
        )
        tracker = LineageTracker([srv])
        mode_used = tracker.start()
        attributor: Any = LiveAttributor(tracker, harvest_interval=0.01 if harvest else 0)
        flows = None
        if kernel:
            flows, why = KernelFlows.open()
            if flows is None:
                sys.exit(f"eBPF programs did not load: {why}")
            tracker.exec_source = flows.exec_record
            attributor = KernelAttributor(flows, attributor)
        attributor.start()
        sniffer = Sniffer(lab.veth_host, Pipeline(Engine(), attributor), hold=0.0 if netem else 0.005)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        t0 = time.monotonic()
        try:
            subprocess.run(
                [
                    sys.executable,
                    str(script),
                    lab.peer4,
                    mode,
                    str(truth_file),
                    ",".join(map(str, lifes)),
                    str(children),
                    str(gap_ms),
                    "inproc" if inproc else "fork",
                ],
                check=True,
            )
            truth = []
            for line in truth_file.read_text().splitlines():
                pid, port, life, sent = line.split()
                truth.append((int(pid), int(port), int(life), float(sent)))
            kind = "connect" if mode == "tcp" else "dns_query"

            def seen_all() -> bool:
                ports = {e.obs.sport for e in sniffer.snapshot() if e.obs.kind == kind}
                return {t[1] for t in truth} <= ports

            try:
                wait_for(seen_all, 10, "every packet")
            except AssertionError:
                pass
        finally:
            sniffer.close()
            attributor.stop()
            tracker.stop()
            if flows is not None:
                flows.close()
        wall = time.monotonic() - t0
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    by_port: dict[int, list[Event]] = {}
    for e in sniffer.snapshot():
        if e.obs.kind == kind:
            by_port.setdefault(e.obs.sport, []).append(e)
    per: dict[int, Counter[str]] = {life: Counter() for life in lifes}
    for pid, port, life, sent in truth:  # ports are reused: the child's packet is the one nearest in time
        c = per[life]
        c["children"] += 1
        near = [e for e in by_port.get(port, []) if abs(e.obs.ts - sent) < 0.1]
        if not near:
            c["not captured"] += 1
            continue
        ev = min(near, key=lambda e: abs(e.obs.ts - sent))
        if ev.attr.process is not None and ev.attr.process.pid == pid and ev.attr.server == "bench-srv":
            c["correct"] += 1
            c[f"via {ev.attr.reason}"] += 1
        elif ev.attr.process is not None:
            c["wrong process or server"] += 1
        else:
            c[f"unattributed: {ev.attr.reason}"] += 1
    lat = sorted(sniffer.delays)
    return {
        "mode": mode,
        "tracker": mode_used,
        "harvest": harvest,
        "in_process": inproc,
        "attribution": "ebpf" if kernel else "fallback",
        "delay": "netem 5 ms" if netem else "capture held 5 ms (no sch_netem in this kernel)",
        "per_lifetime_ms": {str(k): dict(v) for k, v in per.items()},
        "share_correct": {str(k): round(v["correct"] / max(1, v["children"]), 4) for k, v in per.items()},
        "attribution_latency_ms_p50_p99": [
            round(lat[len(lat) // 2] * 1000, 2) if lat else None,
            round(lat[int(len(lat) * 0.99)] * 1000, 2) if lat else None,
        ],
        "cpu_seconds": round((cpu1.ru_utime + cpu1.ru_stime) - (cpu0.ru_utime + cpu0.ru_stime), 2),
        "wall_seconds": round(wall, 2),
        "counters": dict(attributor.counters),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--children", type=int, default=200, help="children per lifetime (default 200)")
    ap.add_argument("--lifetimes", default="10,50,200", help="child lifetimes in ms")
    ap.add_argument("--mode", choices=("tcp", "dns", "both"), default="both")
    ap.add_argument("--gap-ms", type=float, default=10.0, help="pause between forks")
    ap.add_argument("--no-harvest", action="store_true", help="disable the background socket harvester")
    ap.add_argument("--in-process", action="store_true", help="sockets of the long-lived server itself")
    ap.add_argument("--kernel", action="store_true", help="eBPF flow map first (the daemon's ebpf mode)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("run as root (network namespace, proc connector)")
    lifes = [int(x) for x in args.lifetimes.split(",")]
    modes = ("tcp", "dns") if args.mode == "both" else (args.mode,)
    results = [
        run(m, args.children, lifes, not args.no_harvest, args.gap_ms, args.in_process, args.kernel)
        for m in modes
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for r in results:
        print(
            f"mode={r['mode']} attribution={r['attribution']} in_process={r['in_process']} "
            f"tracker={r['tracker']} harvest={r['harvest']} "
            f"cpu={r['cpu_seconds']}s wall={r['wall_seconds']}s "
            f"latency p50/p99 ms={r['attribution_latency_ms_p50_p99']}"
        )
        per = r["per_lifetime_ms"]
        assert isinstance(per, dict)
        for life, c in per.items():
            share = c.get("correct", 0) / max(1, c["children"])
            rest = {k: v for k, v in c.items() if k not in ("children", "correct")}
            print(f"  {life:>4} ms: {c.get('correct', 0)}/{c['children']} correct ({share:.1%})  {rest}")
        print(f"  counters: {r['counters']}")


if __name__ == "__main__":
    main()
