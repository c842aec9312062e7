#!/usr/bin/env python3
"""Monitor DoS (#17), the whole daemon: a watched server, run by a real
unprivileged account, holds N TCP sockets, each with half a ClientHello sent.

    sudo .venv/bin/python bench/monitor_dos_bench.py [--sockets 10000] [--runs 3] [--json OUT]

Each run starts the real daemon (`python -m egresswatch -v run`, READY=1
awaited) on a lab veth (tests/helpers/netlab.py), a fake MCP host launching the
server as the account (tests/helpers/accounts.py), and a listener in the lab
namespace that accepts and keeps every connection; then the server opens its N
connections. Measured per run, for the eBPF path and for the fallback
(EGRESSWATCH_NO_BPF=1: every SYN looked up in userspace): the daemon's CPU
seconds (utime + stime, /proc/PID/stat) from the start of the burst to the last
flow stored, that CPU as a share of the elapsed time, packets the kernel
dropped (status `kernel_drops`), and the flows (SYNs) attributed to the server.
Figures: bench/README-reliability.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.dosrun import run_dos  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sockets", type=int, default=10000)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--modes", default="ebpf,fallback")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("monitor_dos_bench: needs root (lab namespaces, accounts, the daemon)", file=sys.stderr)
        return 2
    results = []
    for _ in range(args.runs):
        for mode in args.modes.split(","):
            with tempfile.TemporaryDirectory() as td:
                tmp = Path(td) / "ew"
                tmp.mkdir(mode=0o700)
                r = run_dos(tmp, args.sockets, fallback=mode == "fallback")
            print(json.dumps(r), flush=True)
            results.append(r)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
