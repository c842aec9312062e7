#!/usr/bin/env python3
"""Replay throughput: egresswatch vs tshark on the same large mixed capture, same run.

    python bench/replay_bench.py [--packets 1000000] [--runs 3] [--capture FILE]

Generates the capture with ../shared/corpus/bench/make_mixed.py into bench/out/
when absent, then runs, alternately, `egresswatch replay --format jsonl` and
tshark's field extraction of the same names, each as a separate process, and
reports wall clock, packets/s and peak RSS (from wait4's rusage). It also checks
that egresswatch found every DNS query name and SNI of the generator's truth file.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CORPUS_BENCH = REPO.parent / "shared" / "corpus" / "bench"


def timed(cmd: list[str], out_path: Path) -> tuple[float, float, int]:
    """Run cmd with stdout to out_path; return (wall s, cpu s, peak RSS KiB)."""
    with out_path.open("wb") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.DEVNULL)
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{cmd[0]} failed with status {status}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss


def count_packets(path: Path) -> int:
    sys.path.insert(0, str(REPO))
    from egresswatch.capture.pcapfile import read_frames

    return sum(1 for _ in read_frames(path))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--packets", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--capture", type=Path, default=None)
    args = ap.parse_args()

    out = HERE / "out"
    out.mkdir(exist_ok=True)
    capture = args.capture
    truth = None
    if capture is None:
        name = "mixed-100k" if args.packets == 100_000 else f"mixed-{args.packets}"
        capture = out / f"{name}.pcap"
        truth = out / f"{name}.truth.jsonl"
        if not capture.exists():
            print(f"generating {capture} ...", flush=True)
            subprocess.run(
                [
                    sys.executable,
                    str(CORPUS_BENCH / "make_mixed.py"),
                    str(capture),
                    "--packets",
                    str(args.packets),
                    "--truth",
                    str(truth),
                ],
                check=True,
            )
    packets = count_packets(capture)
    ew = [
        str(Path(sys.executable).parent / "egresswatch"),
        "replay",
        "--format",
        "jsonl",
        "--config",
        "/dev/null",
        str(capture),
    ]
    if not Path(ew[0]).exists():
        ew = [sys.executable, "-m", "egresswatch", *ew[1:]]
    ts = [
        "tshark",
        "-n",
        "-r",
        str(capture),
        "-Y",
        "dns || tls.handshake.type == 1",
        "-T",
        "fields",
        "-e",
        "dns.qry.name",
        "-e",
        "tls.handshake.extensions_server_name",
    ]
    have_tshark = shutil.which("tshark") is not None
    results: dict[str, list[tuple[float, float, int]]] = {"egresswatch": [], "tshark": []}
    for i in range(args.runs):
        results["egresswatch"].append(timed(ew, out / "ew.jsonl"))
        if have_tshark:
            results["tshark"].append(timed(ts, out / "tshark.txt"))
        print(
            f"run {i + 1}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in results.items() if v), flush=True
        )

    if truth is not None and truth.exists():
        want = set()
        for line in truth.read_text().splitlines():
            e = json.loads(line)
            if e["kind"] in ("dns_query", "tls_sni", "quic_sni"):
                want.add((e["kind"], e.get("qname") or e.get("sni")))
        got = set()
        for line in (out / "ew.jsonl").read_text().splitlines():
            e = json.loads(line)
            if e["kind"] in ("dns_query", "tls_sni", "quic_sni"):
                got.add((e["kind"], e.get("qname") or e.get("sni")))
        print(
            f"truth names: {len(want)}; found by egresswatch: {len(want & got)}; missing: {len(want - got)}"
        )

    print(f"\ncapture: {capture} ({packets:,} packets, {capture.stat().st_size:,} bytes)")
    print("| tool | median wall s | median CPU s | packets/s (wall) | peak RSS MiB |")
    print("|---|---|---|---|---|")
    for tool, runs in results.items():
        if not runs:
            continue
        wall = statistics.median(r[0] for r in runs)
        cpu = statistics.median(r[1] for r in runs)
        rss = max(r[2] for r in runs) / 1024
        print(f"| {tool} | {wall:.2f} | {cpu:.2f} | {packets / wall:,.0f} | {rss:.0f} |")
    if results["tshark"]:
        ratio = statistics.median(r[0] for r in results["tshark"]) / statistics.median(
            r[0] for r in results["egresswatch"]
        )
        print(f"\negresswatch is {ratio:.2f}x tshark's packets per second")


if __name__ == "__main__":
    main()
