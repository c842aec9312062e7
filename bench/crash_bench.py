#!/usr/bin/env python3
"""kill -9 of the live daemon while it stores a DNS flood, N times on one database.

    sudo python3 bench/crash_bench.py [--kills 20] [--qps 8000] [--json OUT]

Each cycle: start the daemon on the same database (READY=1), flood numbered
DNS queries from the host to a UDP sink in a lab namespace (tests/helpers/
netlab.py), measure rows stored per second over a random 1-3 s, go on until a
0.5 s window in which the daemon stored >= 5,000 rows/s (waiting at most
--patience s), ``kill -9`` at its end; then PRAGMA integrity_check, and the
events of the line-buffered JSON-lines export that never reached the database
(lost). After the last
kill: one more clean start, rows stored again, SIGTERM exit 0.
Figures: bench/README-reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.flood import count_rows, crash_cycle, flood_daemon, integrity, start_flood, stop  # noqa: E402
from tests.helpers.netlab import Lab, wait_for  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--qps", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--patience", type=float, default=60.0, help="seconds to wait for a fast window")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    cycles = []
    with Lab() as lab, tempfile.TemporaryDirectory() as t:
        lab.start_udp_sink(53)
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        d = flood_daemon(tmp, tmp / "events.db", lab.veth_host)
        try:
            for i in range(args.kills):
                r = crash_cycle(d, lab, f"k{i}", args.qps, rng.uniform(1.0, 3.0), patience=args.patience)
                cycles.append(r)
                print(i, r, flush=True)
            ready = d.start()
            flood = start_flood(lab, "final", 2000)
            try:
                wait_for(lambda: count_rows(d.db, "final") >= 500, 30, "rows after the last restart")
            finally:
                stop(flood)
            code = d.stop()
            log = d.log()
        finally:
            d.stop()
            d.close()
        final = {"ready_s": round(ready, 2), "exit": code, "integrity": integrity(d.db),
                 "tracebacks_in_log": log.count("Traceback"), "errors_in_log": log.count("ERROR"),
                 "db_mb": round((tmp / "events.db").stat().st_size / 1e6, 1)}  # fmt: skip
    lost = [c["lost"] for c in cycles]
    rates = [c["stored_per_s"] for c in cycles]
    at_kill = [c["stored_per_s_at_kill"] for c in cycles]
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "kills": args.kills,
        "qps_offered": args.qps,
        "integrity_ok": sum(c["integrity"] == "ok" for c in cycles),
        "stored_per_s": {"min": min(rates), "median": sorted(rates)[len(rates) // 2], "max": max(rates)},
        "stored_per_s_at_kill": {
            "min": min(at_kill),
            "median": sorted(at_kill)[len(at_kill) // 2],
            "max": max(at_kill),
            "kills_at_5000_or_more": sum(r >= 5000 for r in at_kill),
        },
        "lost": {
            "min": min(lost),
            "median": sorted(lost)[len(lost) // 2],
            "max": max(lost),
            "total": sum(lost),
        },
        "stored_not_exported_max": max(c["stored_not_exported"] for c in cycles),
        "events_exported_total": sum(c["exported"] for c in cycles),
        "final_restart": final,
        "cycles": cycles,
    }
    text = json.dumps(result, indent=1)
    print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    ok = result["integrity_ok"] == args.kills and max(lost) <= 500 and final["integrity"] == "ok"
    return 0 if ok and final["exit"] == 0 and not final["tracebacks_in_log"] else 1


if __name__ == "__main__":
    sys.exit(main())
