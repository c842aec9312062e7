#!/usr/bin/env python3
"""kill -9 of the live daemon while it stores a DNS flood, N times on one database.

    sudo .venv/bin/python bench/crash_bench.py [--kills 20] [--qps 8000] [--budget 280] [--json OUT]

Each cycle: start the daemon on the same database (READY=1), flood numbered
DNS queries from the host to a UDP sink in a lab namespace (tests/helpers/
netlab.py), measure rows stored per second over a random 1-3 s, go on until a
0.5 s window in which the daemon stored >= 5,000 rows/s (waiting at most
--patience s, less when the --budget of the whole run is running out), ``kill
-9`` at its end; then PRAGMA integrity_check, and the events of the
line-buffered JSON-lines export that never reached the database (lost). After
the last kill: one more clean start, rows stored again, SIGTERM exit 0.
Prints one line per kill (was it at >= 5,000 rows/s?) and a summary for
bench/README-reliability.md; exit status 0 only if every kill was at >= 5,000
rows/s with the database intact and at most one batch lost.
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
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.flood import count_rows, crash_cycle, flood_daemon, integrity, start_flood, stop  # noqa: E402
from tests.helpers.netlab import Lab, wait_for  # noqa: E402

MIN_RATE = 5000
BATCH = 500  # Store.batch_size: what one kill can catch uncommitted


def spread(values: list[int]) -> str:
    v = sorted(values)
    return f"{v[0]:,} / {v[len(v) // 2]:,} / {v[-1]:,}"


def summary(r: dict[str, Any]) -> str:
    f, c = r["final_restart"], r["cycles"]
    rows = [
        ("when (UTC)", r["when"]),
        ("load average before / after", f"{r['load_before']} / {r['load_after']}"),
        ("kills / offered", f"{r['kills']} / {r['qps_offered']:,} queries/s"),
        ("kills at >= 5,000 rows/s (0.5 s window ending at the kill)",
         f"**{r['kills_at_5000_or_more']} of {r['kills']}**"),
        ("rows/s in the window at the kill (min / median / max)", spread([x["stored_per_s_at_kill"] for x in c])),
        ("rows/s over the measurement (min / median / max)", spread([x["stored_per_s"] for x in c])),
        ("`PRAGMA integrity_check` ok", f"**{r['integrity_ok']} of {r['kills']}**"),
        ("events lost per kill (min / median / max)", spread([x["lost"] for x in c])),
        ("events lost, all kills", f"{sum(x['lost'] for x in c):,} of {sum(x['exported'] for x in c):,} exported"),
        ("rows stored but not in the export (max)", f"{max(x['stored_not_exported'] for x in c)}"),
        ("start after the last kill", f"READY=1 in {f['ready_s']} s, exit {f['exit']}, integrity {f['integrity']}, "
                                      f"{f['tracebacks_in_log']} tracebacks / {f['errors_in_log']} ERROR lines in the"
                                      f" log, database {f['db_mb']} MB"),
        ("wall time of the run", f"{r['wall_s']} s"),
    ]  # fmt: skip
    return "\n".join(f"| {k} | {v} |" for k, v in rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kills", type=int, default=20)
    ap.add_argument("--qps", type=int, default=8000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument(
        "--patience", type=float, default=20.0, help="seconds to wait for a fast window (at most)"
    )
    ap.add_argument(
        "--budget", type=float, default=280.0, help="seconds for the whole run (patience shrinks)"
    )
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    if os.geteuid() != 0:
        sys.exit("crash_bench: needs root")
    rng = random.Random(args.seed)
    cycles: list[dict[str, Any]] = []
    t_run = time.monotonic()
    load_before = [round(x, 1) for x in os.getloadavg()]
    with Lab() as lab, tempfile.TemporaryDirectory(prefix="ew-crash-") as t:
        lab.start_udp_sink(53)
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        d = flood_daemon(tmp, tmp / "events.db", lab.veth_host)
        print("| kill | load | rows/s over the window | rows/s at the kill | >= 5,000 | lost | integrity |")
        print("|---|---|---|---|---|---|---|", flush=True)
        try:
            for i in range(args.kills):
                left = args.budget - (time.monotonic() - t_run) - 30  # 30 s for the final restart
                patience = max(1.0, min(args.patience, left / (args.kills - i) - 8))
                load = round(os.getloadavg()[0], 1)
                r = crash_cycle(d, lab, f"k{i}", args.qps, rng.uniform(1.0, 3.0), MIN_RATE, patience)
                d.jsonl.unlink(missing_ok=True)  # each cycle reads its own export only
                r.update(load=load, patience=round(patience, 1), fast=r["stored_per_s_at_kill"] >= MIN_RATE)
                cycles.append(r)
                print(f"| {i + 1} | {load} | {r['stored_per_s']:,} | {r['stored_per_s_at_kill']:,} | "
                      f"{'yes' if r['fast'] else '**no**'} | {r['lost']} | {r['integrity']} |", flush=True)  # fmt: skip
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
    result = {
        "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_before": load_before,
        "load_after": [round(x, 1) for x in os.getloadavg()],
        "wall_s": round(time.monotonic() - t_run),
        "kills": args.kills,
        "qps_offered": args.qps,
        "integrity_ok": sum(c["integrity"] == "ok" for c in cycles),
        "kills_at_5000_or_more": sum(c["fast"] for c in cycles),
        "lost_max": max(lost),
        "final_restart": final,
        "cycles": cycles,
    }
    text = json.dumps(result, indent=1)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")
    print("\n| kill -9 while storing | figure |\n|---|---|")
    print(summary(result))
    ok = result["integrity_ok"] == args.kills and max(lost) < BATCH and final["integrity"] == "ok"
    ok = ok and final["exit"] == 0 and not final["tracebacks_in_log"]
    return 0 if ok and result["kills_at_5000_or_more"] == args.kills else 1


if __name__ == "__main__":
    sys.exit(main())
