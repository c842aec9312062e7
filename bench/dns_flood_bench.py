#!/usr/bin/env python3
"""A sustained DNS flood with a watched server's queries inside it. Needs root.

    sudo .venv/bin/python bench/dns_flood_bench.py [--qps 50000] [--seconds 60] [--json OUT]

A process outside any MCP tree sends --qps numbered DNS queries/s for
--seconds from the host to a UDP sink on port 53 of a lab namespace (no
answers: one frame per query). From the 5th second on, a watched fake MCP
server (tests/e2e_data/steady_mcp_server.py, launched by a fake MCP host)
sends --watched-qps queries of its own from a long-lived socket. The real
daemon (defaults; capture bound to the lab's veth) runs throughout; its
status file is read every second. Measured: queries offered, frames the
kernel passed and dropped, frames captured, rows stored, every shed/drop
counter, the watched server's queries stored vs sent, health over time,
daemon CPU and RSS, load average. Prints a summary for
bench/README-reliability.md. Traffic goes only to the lab namespace.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.daemonrun import Notify  # noqa: E402
from tests.helpers.netlab import Lab, wait_for  # noqa: E402
from tests.helpers.stormrun import cpu_seconds, proc_status, query  # noqa: E402

DATA = REPO / "tests" / "e2e_data"
SHED_COUNTERS = ("kernel_drops", "shed_unwatched_dns", "events_dropped", "events_pending", "alerts_dropped",
                 "udp_flow_dropped", "sink_errors", "decode_errors", "attribution_errors", "store_errors")  # fmt: skip

FLOOD = r"""
import socket, sys, time
host, tag, qps, secs = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, 53)); s.setblocking(False)
head, tail = b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00", bytes([len(tag)]) + tag.encode() + b"\x04test\x00\x00\x01\x00\x01"
start = time.monotonic(); total = int(qps * secs); i = sent = 0
while i < total:
    label = b"u%d" % i
    try:
        s.send((i & 0xFFFF).to_bytes(2, "big") + head + bytes([len(label)]) + label + tail); sent += 1
    except OSError:
        pass
    i += 1
    if i % 100 == 0:
        ahead = i / qps - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
print(sent, round(time.monotonic() - start, 2), flush=True)
"""


def status(tmp: Path) -> dict[str, Any]:
    try:
        return dict(json.loads((tmp / "status.json").read_text()))
    except (OSError, ValueError):
        return {}


def rows(db: Path, pattern: str) -> int:
    r = query(db, "SELECT count(*) FROM events WHERE kind = 'dns_query' AND qname LIKE ?", (pattern,))
    return int(r[0][0]) if r else 0


def run(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"load_before": [round(x, 1) for x in os.getloadavg()], "qps": args.qps,
                           "seconds": args.seconds}  # fmt: skip
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="ew-dnsflood-") as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        lab.start_udp_sink(53)
        db = tmp / "events.db"
        home = tmp / "home" / ".cursor"
        home.mkdir(parents=True)
        watched_n = int(args.watched_qps * (args.seconds - 10))
        report = tmp / "watched.json"
        srv = [str(DATA / "steady_mcp_server.py"), lab.peer4, "watched", str(watched_n), str(args.watched_qps),
               str(report)]  # fmt: skip
        (home / "mcp.json").write_text(json.dumps({"mcpServers": {"watched": {"command": sys.executable,
                                                                               "args": srv}}}))  # fmt: skip
        cfg = tmp / "config.toml"
        cfg.write_text(f'[daemon]\ndatabase = "{db}"\ninterfaces = ["{lab.veth_host}"]\n'
                       f'[discovery]\nextra_homes = ["{tmp}/home"]\n[policy]\nlearning = false\n'
                       '[servers.watched]\nallow = ["watched.test"]\n')  # fmt: skip
        os.chmod(cfg, 0o600)
        notify = Notify(tmp / "notify.sock")
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock"), "PYTHONPATH": str(REPO)}
        log = open(tmp / "daemon.log", "w")  # noqa: SIM115 - the daemon's stderr
        daemon = subprocess.Popen([sys.executable, "-m", "egresswatch", "run", "--config", str(cfg),
                                   "--status-file", str(tmp / "status.json")], env=env, cwd=REPO, stderr=log)  # fmt: skip
        host = None
        timeline: list[dict[str, Any]] = []
        sampling = [True]

        def sample() -> None:
            t0 = time.monotonic()
            while sampling[0]:
                st = status(tmp)
                c = st.get("counters", {})
                timeline.append({"t": round(time.monotonic() - t0, 1), "healthy": st.get("healthy"),
                                 "problems": st.get("problems"), "captured": c.get("captured"),
                                 "kernel_drops": c.get("kernel_drops"), "shed": c.get("shed_unwatched_dns"),
                                 "rss_mb": round(proc_status(daemon.pid, "VmRSS"), 1)})  # fmt: skip
                time.sleep(1.0)  # a sampler, not a wait for a condition

        try:
            notify.wait("READY=1")
            before = status(tmp).get("counters", {})
            cpu0 = cpu_seconds(daemon.pid)
            threading.Thread(target=sample, daemon=True).start()
            t_start = time.monotonic()
            flood = subprocess.Popen([sys.executable, "-c", FLOOD, lab.peer4, "flood", str(args.qps),
                                      str(args.seconds)], stdout=subprocess.PIPE, text=True)  # fmt: skip
            time.sleep(5.0)  # the watched server starts inside the flood (schedule, not a wait)
            host = subprocess.Popen([sys.executable, str(DATA / "fake_mcp_host.py"), str(home / "mcp.json")],
                                    cwd=REPO, start_new_session=True)  # fmt: skip
            sent_text, _ = flood.communicate(timeout=args.seconds * 3 + 60)
            offered, send_s = sent_text.split()
            out["flood_sent_s"] = float(send_s)
            cpu_flood = cpu_seconds(daemon.pid) - cpu0
            out["daemon_cpu_pct_during_flood"] = round(100 * cpu_flood / (time.monotonic() - t_start), 1)
            watched = wait_for(
                lambda: report.exists() and json.loads(report.read_text()), 120, "watched sent"
            )
            last = [-1, time.monotonic()]

            def drained() -> bool:  # captured has not moved for 3 s
                n = status(tmp).get("counters", {}).get("captured", 0)
                if n != last[0]:
                    last[:] = [n, time.monotonic()]
                return time.monotonic() - last[1] > 3

            wait_for(drained, 180, "the backlog drained")
            out["drained_after_flood_s"] = round(time.monotonic() - t_start - float(send_s), 1)
            out["daemon_cpu_s_total"] = round(cpu_seconds(daemon.pid) - cpu0, 1)
            st = status(tmp)
            c = st["counters"]
            out.update(
                offered=int(offered),
                kernel_packets=c["kernel_packets"] - before.get("kernel_packets", 0),
                captured=c["captured"] - before.get("captured", 0),
                stored=rows(db, "u%.flood.test"),
                counters={k: c.get(k, 0) - before.get(k, 0) for k in SHED_COUNTERS},
                fast_lane=c.get("fast_lane", 0),
                watched_lane=c.get("watched_lane", 0),
                lane_copies=c.get("lane_copies", 0),
                lane=st.get("watched_lane", {}),
                lane_kernel_drops=(st.get("capture_filter", {}).get("watched_lane") or {}).get(
                    "kernel_drops"
                ),
                watched_sent=watched["sent"],
                watched_stored=rows(db, "w%.watched.test"),
                watched_attributed=int(
                    (
                        query(
                            db,
                            "SELECT count(*) FROM events WHERE server = 'watched' AND "
                            "qname LIKE 'w%.watched.test'",
                        )
                        or [(0,)]
                    )[0][0]
                ),  # fmt: skip
                healthy_end=st["healthy"],
                problems_end=st["problems"],
                rss_peak_mb=round(proc_status(daemon.pid, "VmHWM"), 1),
            )
        finally:
            sampling[0] = False
            if host is not None:
                try:
                    os.killpg(host.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                host.wait(timeout=10)
            daemon.send_signal(signal.SIGTERM)
            try:
                out["exit"] = daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                out["exit"] = daemon.wait()
            log.close()
            notify.close()
            out["log_unhealthy"] = [line for line in (tmp / "daemon.log").read_text().splitlines()
                                    if "unhealthy" in line or "recovered" in line][:10]  # fmt: skip
    out["timeline"] = timeline
    out["unhealthy_samples"] = sum(1 for s in timeline if s["healthy"] is False)
    out["problems_seen"] = sorted({re.sub(r"\d+", "N", p) for s in timeline for p in (s["problems"] or [])})
    out["load_after"] = [round(x, 1) for x in os.getloadavg()]
    return out


def summary(r: dict[str, Any]) -> str:
    c = r["counters"]
    rows_ = [
        ("when (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("load average before / after", f"{r['load_before']} / {r['load_after']}"),
        ("offered (unwatched process)", f"{r['offered']:,} queries in {r['flood_sent_s']} s"
                                         f" ({r['offered'] / r['flood_sent_s']:,.0f}/s)"),
        ("kernel: passed the filter / dropped", f"{r['kernel_packets']:,} / {c['kernel_drops']:,}"),
        ("captured (read from the ring)", f"{r['captured']:,}"),
        ("stored (unwatched flood rows)", f"{r['stored']:,}"),
        ("shed_unwatched_dns", f"{c['shed_unwatched_dns']:,}"),
        ("other loss counters", ", ".join(f"{k} {v}" for k, v in c.items()
                                          if k not in ("kernel_drops", "shed_unwatched_dns"))),
        ("watched server: stored / sent (attributed)",
         f"{r['watched_stored']:,} / {r['watched_sent']:,} ({r['watched_attributed']:,})"),
        ("watched lane", f"{r['lane'].get('mode')}: {r['watched_lane']:,} frames handed over from it,"
                         f" {r['lane_copies']:,} second copies dropped, {r['lane_kernel_drops']} kernel drops"),
        ("daemon CPU during the flood / total", f"{r['daemon_cpu_pct_during_flood']}% of a core / "
                                                f"{r['daemon_cpu_s_total']} s"),
        ("daemon RSS peak (VmHWM)", f"{r['rss_peak_mb']} MB"),
        ("backlog drained after the flood", f"{r['drained_after_flood_s']} s"),
        ("status unhealthy (samples of 1 s)", f"{r['unhealthy_samples']} of {len(r['timeline'])}: "
                                              f"{'; '.join(r['problems_seen']) or '-'}"),
        ("healthy at the end / exit", f"{r['healthy_end']} / {r['exit']}"),
    ]  # fmt: skip
    return "\n".join(f"| {k} | {v} |" for k, v in rows_)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--qps", type=int, default=50000)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--watched-qps", type=float, default=100.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("dns_flood_bench: needs root")
    r = run(args)
    text = json.dumps(r, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print("\n| DNS flood | figure |\n|---|---|")
    print(summary(r))
    return 0 if r["watched_stored"] == r["watched_sent"] else 1


if __name__ == "__main__":
    sys.exit(main())
