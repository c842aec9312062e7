#!/usr/bin/env python3
"""Alerts and capture under a DNS flood from a watched MCP server. Needs root.

    python3 bench/alerts_bench.py [--rates 5000,20000,50000] [--seconds 5] [--json OUT]

For each rate, a fresh daemon (`python -m egresswatch run`) watches a fake MCP
server (tests/e2e_data/flood_mcp_server.py) that sends rate x seconds queries
for random names under flood.test to a lab namespace's DNS server, then one
exfiltration query under exfil.test. Measured: kernel drops (status file),
flood queries sent vs stored for the server (events lost), deliveries at a
local apprise json:// endpoint during the flood and in all, the exfiltration's
alert latency (endpoint arrival - packet time), the digest, daemon CPU and
peak RSS. Traffic goes only to the lab namespace and loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.daemon_bench import cpu_seconds, rss_peak_mb  # noqa: E402
from tests.helpers.alertsink import Receiver  # noqa: E402
from tests.helpers.daemonrun import Daemon, query  # noqa: E402
from tests.helpers.netlab import Lab, wait_for  # noqa: E402

DATA = REPO / "tests" / "e2e_data"
EXFIL = "nbswy3dpeb3w64tmmqqgc3dpnfzhgzlsmvxgizlsnb2gk4tfnzqxi.exfil.test"


def scalar(db: Path, sql: str) -> Any:
    rows = query(db, sql)
    return next(iter(rows[0].values())) if rows else None


def one_rate(lab: Lab, rate: int, seconds: float) -> dict[str, Any]:
    tmp = Path(tempfile.mkdtemp(prefix="ew-alerts-bench-"))
    os.chmod(tmp, 0o700)
    receiver = Receiver()
    config = f"""
[daemon]
database = "{tmp}/events.db"
interfaces = ["{lab.veth_host}"]  # this lab's traffic only, not other tests' floods
[discovery]
extra_homes = ["{tmp}/home"]
[alerts]
urls = ["{receiver.url}"]
digest_seconds = 10
[policy]
learning = false
[servers.flooder]
allow = ["allowed.test"]
"""
    home = tmp / "home" / ".cursor"
    home.mkdir(parents=True)
    report = tmp / "report.json"
    count = int(rate * seconds)
    args = [
        str(DATA / "flood_mcp_server.py"),
        lab.peer4,
        "flood.test",
        str(count),
        str(seconds),
        EXFIL,
        str(report),
    ]
    (home / "mcp.json").write_text(
        json.dumps({"mcpServers": {"flooder": {"command": sys.executable, "args": args}}})
    )
    daemon = Daemon(tmp, config)
    db = tmp / "events.db"
    out: dict[str, Any] = {"rate": rate, "queries": count}
    host = None
    try:
        daemon.start()
        cpu0 = cpu_seconds(daemon.pid)
        host = subprocess.Popen([sys.executable, str(DATA / "fake_mcp_host.py"), str(home / "mcp.json")],
                                cwd=REPO, start_new_session=True)  # fmt: skip
        sent = wait_for(lambda: report.exists() and json.loads(report.read_text()), 120, "flood sent")
        out["send_seconds"] = round(sent["flood_end"] - sent["flood_start"], 2)
        out["exfil_event"] = bool(wait_for(
            lambda: scalar(db, f"SELECT ts FROM events WHERE qname = '{EXFIL}'"), 900, "exfil stored"))  # fmt: skip
        ts = scalar(db, f"SELECT ts FROM events WHERE qname = '{EXFIL}'")
        arrived = wait_for(lambda: [t for t, m in receiver.arrivals() if "under exfil.test" in m["title"]], 30,
                           "exfil alert")  # fmt: skip
        out["exfil_alert_s"] = round(arrived[0] - ts, 3)
        print(json.dumps(out), flush=True)
        # wait for the digest (digest_seconds after the first held event) and a settled store
        wait_for(lambda: any("more from MCP server flooder" in m["title"] for _, m in receiver.arrivals()), 900,
                 "digest")  # fmt: skip
        time.sleep(1.0)  # let the last batch land (measurement only)
        stored = scalar(db, "SELECT count(*) FROM events WHERE server = 'flooder' AND kind = 'dns_query'"
                            " AND qname LIKE '%.flood.test'")  # fmt: skip
        seen = [-1, time.monotonic()]

        def drained() -> bool:  # the stored count has not moved for 5 s (lost queries never come)
            n = scalar(db, "SELECT count(*) FROM events WHERE server = 'flooder'")
            if n != seen[0]:
                seen[:] = [n, time.monotonic()]
            return n >= count + 1 or time.monotonic() - seen[1] > 5

        wait_for(drained, 900, "the flood drained")
        out["daemon_cpu_s"] = round(cpu_seconds(daemon.pid) - cpu0, 1)  # the flood, drained
        counters = daemon.status()["counters"]
        out.update(
            fast_lane=counters.get("fast_lane", 0),
            stored_queries=stored,
            lost_queries=count - stored,
            kernel_drops=counters["kernel_drops"],
            captured=counters["captured"],
            shed_unwatched_dns=counters.get("shed_unwatched_dns", 0),
            deliveries_during_flood=len([t for t, _ in receiver.arrivals() if t < sent["exfil_sent"]]),
            deliveries=len(receiver.arrivals()),
            digest=next(m["title"] for _, m in receiver.arrivals() if "more from MCP server" in m["title"]),
            rss_peak_mb=round(rss_peak_mb(daemon.pid), 1),
        )
    finally:
        if host is not None:
            try:
                os.killpg(host.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            host.wait(timeout=10)
        daemon.stop(timeout=60)
        daemon.close()
        receiver.close()
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rates", default="5000,20000,50000")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    results = []
    with Lab() as lab:
        lab.start_dns()
        for rate in (int(r) for r in args.rates.split(",")):
            res = one_rate(lab, rate, args.seconds)
            print(json.dumps(res), flush=True)
            results.append(res)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
