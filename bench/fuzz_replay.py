#!/usr/bin/env python3
"""The long replay fuzzing campaign: mutated captures through `egresswatch replay`.

    nice -n 19 python3 bench/fuzz_replay.py [--n 20000] [--seed 1] [--every 100] [--json OUT]

Mutants come from tests/helpers/mutants.py (pcaps/ and ../shared/corpus/public;
kinds: bit flips, file cut at every layer, packet cut at every layer, length
fields 0/max, packets spliced between captures, pcapng block lengths). Each
runs in process through the click command (tests/helpers/fuzzrun.py); every
``--every``-th also as ``python -m egresswatch replay`` (exit status, one-line
error, peak RSS) and every 50th with ``--db`` (rows stored == events printed).
Failing mutants are kept in bench/out/fuzz-failures/. Figures:
bench/README-reliability.md.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.fuzzrun import Tally, replay_inprocess, replay_subprocess  # noqa: E402
from tests.helpers.mutants import load_sources, mutants, source_captures  # noqa: E402


def rss_mb() -> tuple[float, float]:
    cur = peak = 0.0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            cur = int(line.split()[1]) / 1024
        elif line.startswith("VmHWM:"):
            peak = int(line.split()[1]) / 1024
    return cur, peak


def stored_vs_printed(path: Path, tmp: Path) -> str | None:
    from click.testing import CliRunner

    from egresswatch.cli.main import cli

    db = tmp / "fuzz.db"
    res = CliRunner().invoke(cli, ["replay", "--db", str(db), str(path)])
    printed = sum(1 for ln in res.stdout.splitlines() if ln.startswith("{"))
    conn = sqlite3.connect(db)
    try:
        rows = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
        ok = conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()
    for p in tmp.glob("fuzz.db*"):
        p.unlink()
    if rows != printed or ok != "ok":
        return f"--db: {rows} rows stored, {printed} events printed, integrity {ok}"
    return None


def write_result(args: argparse.Namespace, sources: list[Any], inproc: Tally, sub: Tally, dbcheck: Tally,
                 kinds: Counter[str], rss_trace: list[float], rss0: float, start: float, total_bytes: int,
                 done: int, quiet: bool = False) -> None:  # fmt: skip
    rss1, hwm = rss_mb()
    result = {
        "mutants": done,
        "of": args.n,
        "seed": args.seed,
        "sources": len(sources),
        "mutant_mb": round(total_bytes / 1e6, 1),
        "seconds": round(time.monotonic() - start, 1),
        "in_process": inproc.as_dict(),
        "subprocess": sub.as_dict(),
        "db_checks": {"runs": dbcheck.runs, "failures": dbcheck.failures[:10]},
        "outcomes": dict(sorted(kinds.items())),
        "rss_mb": {
            "start": round(rss0, 1),
            "end": round(rss1, 1),
            "peak": round(hwm, 1),
            "per_1000": rss_trace,
        },
    }
    text = json.dumps(result, indent=1)
    if not quiet:
        print(text)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(text + "\n")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--every", type=int, default=100)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    keep = REPO / "bench" / "out" / "fuzz-failures"
    sources = load_sources(source_captures())
    inproc, sub, dbcheck = Tally(), Tally(), Tally()
    kinds: Counter[str] = Counter()
    rss_trace: list[float] = []
    rss0, _ = rss_mb()
    start = time.monotonic()
    total_bytes = 0
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        for i, m in enumerate(mutants(args.seed, args.n, sources)):
            path = tmp / f"m{i:06d}{m.suffix}"
            path.write_bytes(m.data)
            total_bytes += len(m.data)
            name = f"#{i} {m.kind} {m.source.name}: {m.detail}"
            out = replay_inprocess(path)
            inproc.add(name, out)
            kinds[f"{m.kind}:exit{out.exit_code}"] += 1
            if out.problem:
                keep.mkdir(parents=True, exist_ok=True)
                (keep / path.name).write_bytes(m.data)
                print(f"FAIL {name}: {out.problem}", flush=True)
            if i % args.every == 0:
                sub.add(name, replay_subprocess(path))
            if i % 50 == 25:
                problem = stored_vs_printed(path, tmp)
                dbcheck.runs += 1
                if problem:
                    dbcheck.failures.append((name, problem))
                    print(f"FAIL {name}: {problem}", flush=True)
            path.unlink()
            if i % 1000 == 999:
                rss_trace.append(round(rss_mb()[0], 1))
                print(
                    f"{i + 1} mutants, {time.monotonic() - start:.0f} s, rss {rss_trace[-1]} MB", flush=True
                )
                if i + 1 < args.n:  # partial figures, should the run be stopped
                    write_result(args, sources, inproc, sub, dbcheck, kinds, rss_trace, rss0, start,
                                 total_bytes, i + 1, quiet=True)  # fmt: skip
    write_result(args, sources, inproc, sub, dbcheck, kinds, rss_trace, rss0, start, total_bytes, args.n)
    return 1 if inproc.failures or sub.failures or dbcheck.failures else 0


if __name__ == "__main__":
    sys.exit(main())
