#!/usr/bin/env python3
"""Flood evasion: a watched MCP server floods, then exfiltrates. Needs root.

    sudo .venv/bin/python bench/flood_evasion_bench.py [--rate 10000] [--seconds 10] [--json OUT]

A fake MCP server (tests/e2e_data/storm_mcp_server.py, launched by a fake MCP
host) sends --rate distinct random names/s under --domains random registrable
domains (each a first-seen destination) and --syn-rate SYNs/s to 250 addresses
x many ports of a lab namespace (a connection storm) for --seconds, then one
DNS query whose labels carry data and one HTTPS POST to a non-allowlisted
name. The real daemon (defaults but budget_burst 5, digest_seconds 10)
captures the lab's veth and alerts to a local apprise json:// endpoint.
Prints the figures and a summary for bench/README-reliability.md. Traffic
goes only to the lab namespace and loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.netlab import Lab  # noqa: E402
from tests.helpers.stormrun import Storm, lab_for_storm  # noqa: E402


def summary(args: argparse.Namespace, r: dict[str, Any]) -> str:
    c, s, e = r["status"]["counters"], r["sent"], r["exfil"]

    def lat(what: str) -> str:
        x = e[what]
        if not x["stored"]:
            return "not stored"
        if x["alert_s"] is None:
            return f"not alerted on its own within {args.deadline:g} s ({x['reason']})"
        return f"{x['alert_s']:.3f} s ({x['reason']})"

    rows = [
        ("when (UTC)", time.strftime("%Y-%m-%d %H:%M", time.gmtime())),
        ("load average before / after", f"{r['load_before']} / {r['load_after']}"),
        ("flood sent", f"{s['names_sent']:,} names in {s['flood_end'] - s['flood_start']:.1f} s under "
                       f"{args.domains:,} domains, {s['syns_sent']:,} SYNs to 250 addresses"),
        ("events stored for the server", ", ".join(f"{k} {v:,}" for k, v in sorted(r["events_stored"].items()))),
        ("DNS exfiltration: alert after its packet", lat("dns")),
        ("HTTPS POST: alert after its packet", lat("https")),
        ("alerts delivered (before the exfiltration)", f"{r['alerts']} ({r['alerts_before_exfil']})"),
        ("digests delivered", f"{r['digests']}"),
        ("status: kernel_drops / fast_lane / alerts_held / alerts_dropped",
         f"{c['kernel_drops']} / {c['fast_lane']} / {c['alerts_held']:,} / {c['alerts_dropped']}"),
        ("daemon CPU (flood + drain)", f"{r['daemon_cpu_s']} s"),
        ("daemon RSS peak (VmHWM) / at the end", f"{r['rss_peak_mb']} MB / {r['rss_end_mb']} MB"),
        ("healthy at the end", f"{r['status']['healthy']} {r['status']['problems'] or ''}".strip()),
    ]  # fmt: skip
    return "\n".join(f"| {k} | {v} |" for k, v in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=int, default=10000, help="distinct random names per second")
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--domains", type=int, default=5000, help="registrable domains the names fall under")
    ap.add_argument("--syn-rate", type=int, default=2000, help="connects per second (connection storm)")
    ap.add_argument(
        "--deadline", type=float, default=240.0, help="seconds to wait for each exfiltration's alert"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("flood_evasion_bench: needs root")
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="ew-storm-") as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        net = lab_for_storm(lab)
        r = Storm(lab, net, tmp, args.rate, args.seconds, args.domains, args.syn_rate).run(args.deadline)
    print(json.dumps(r, indent=1))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(r, indent=1) + "\n")
    print("\n| flood evasion | figure |\n|---|---|")
    print(summary(args, r))
    ok = all(x.get("alert_s") is not None and x["alert_s"] <= 1.0 for x in r["exfil"].values())
    return 0 if ok and r["status"]["counters"]["kernel_drops"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
