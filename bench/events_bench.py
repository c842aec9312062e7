#!/usr/bin/env python3
"""Event store benchmark: insert N realistic events through Store.write() (the
batched path the daemon uses), then time the `egresswatch events` filters cold
(new connection) and warm, `stats`, and a retention prune.

    python3 bench/events_bench.py [--events 1000000] [--db bench/out/events.db] [--drop-caches]

--drop-caches (root) empties the OS page cache before each cold query; without
it "cold" means a new connection (empty SQLite cache) over a warm OS cache.
Results go to stdout; copy them into bench/README-events.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import random
import shutil
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from egresswatch.config import RetentionConfig  # noqa: E402
from egresswatch.model import (  # noqa: E402
    CONNECT,
    DNS_ANSWER,
    DNS_QUERY,
    QUIC_SNI,
    TLS_INCOMPLETE,
    TLS_SNI,
    Attribution,
    DnsRecord,
    Event,
    Observation,
    ProcessInfo,
    Verdict,
)
from egresswatch.store.db import Store  # noqa: E402
from egresswatch.store.query import query_events  # noqa: E402
from egresswatch.store.stats import stats  # noqa: E402

SERVERS = ["filesystem", "github", "postgres", "slack", "puppeteer", "fetch", "memory", "sentry",
           "notion", "linear", "brave-search", "weather"]  # fmt: skip
KINDS = [(DNS_QUERY, 30), (DNS_ANSWER, 28), (TLS_SNI, 25), (CONNECT, 10), (QUIC_SNI, 5), (TLS_INCOMPLETE, 2)]
PARENTS = ["example.com", "example.org", "github.com", "googleapis.com", "slack.com", "amazonaws.com",
           "cloudfront.net", "npmjs.org", "pypi.org", "sentry.io", "notion.so", "evil-c2.net"]  # fmt: skip


def make_events(n: int, end: float, seed: int = 1) -> list[Event]:
    rnd = random.Random(seed)
    domains = [
        f"{rnd.choice(['api', 'cdn', 'www', 'auth', 'edge', 'x'])}{i}.{rnd.choice(PARENTS)}"
        for i in range(3000)
    ]
    kinds = [k for k, w in KINDS for _ in range(w)]
    procs = []
    for i in range(300):
        name = rnd.choice(["node", "python3", "uvx", "npx", "docker", "firefox", "curl", "systemd-resolved"])
        procs.append(ProcessInfo(pid=1000 + i * 7, create_time=end - 86400 * 8, ppid=1, name=name,
                                 exe=f"/usr/bin/{name}", cmdline=(name, "server.js", "--stdio"), user="dev"))  # fmt: skip
    chain = (
        ProcessInfo(pid=1, create_time=0.0, name="systemd"),
        ProcessInfo(pid=900, create_time=0.0, name="claude"),
    )
    start = end - 7 * 86400
    step = (end - start) / n
    out = []
    for i in range(n):
        ts = start + i * step + rnd.random() * step
        kind = rnd.choice(kinds)
        dom = rnd.choice(domains)
        ip = f"198.18.{rnd.randrange(256)}.{rnd.randrange(1, 255)}"
        p = rnd.choice(procs)
        server = rnd.choice(SERVERS) if rnd.random() < 0.6 else None
        if kind == DNS_QUERY:
            obs = Observation(ts, i, kind, "udp", "10.0.0.2", 30000 + i % 30000, "127.0.0.53", 53, qname=dom,
                              qtype=rnd.choice((1, 28, 65)), rcode=0, dns_id=i & 0xFFFF)  # fmt: skip
        elif kind == DNS_ANSWER:
            obs = Observation(ts, i, kind, "udp", "127.0.0.53", 53, "10.0.0.2", 30000 + i % 30000, qname=dom,
                              qtype=1, rcode=0, dns_id=i & 0xFFFF, answers=(ip,),
                              records=(DnsRecord(dom, 1, 300, ip),))  # fmt: skip
        elif kind in (TLS_SNI, TLS_INCOMPLETE, QUIC_SNI):
            obs = Observation(ts, i, kind, "udp" if kind == QUIC_SNI else "tcp", "10.0.0.2", 40000 + i % 20000,
                              ip, 443, sni=dom, alpn=("h2", "http/1.1"), tls_versions=(0x0304, 0x0303),
                              quic_version=1 if kind == QUIC_SNI else None)  # fmt: skip
        else:
            obs = Observation(
                ts, i, kind, "tcp", "10.0.0.2", 40000 + i % 20000, ip, rnd.choice((443, 80, 8443))
            )
        if server is None:
            verdict = Verdict()
        elif rnd.random() < 0.03:
            verdict = Verdict(
                "flagged", rnd.choice(["not_allowlisted", "direct_ip", "dns_exfil"]), None, "high"
            )
        else:
            verdict = Verdict("allowed", "allowlist", f"servers.{server}.allow", "info")
        attr = Attribution(process=p, chain=chain, server=server, host="claude" if server else None,
                           phase="run" if server else None)  # fmt: skip
        out.append(Event(obs, attr, verdict, dom if kind != CONNECT or rnd.random() < 0.7 else None))
    return out


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t = time.perf_counter()
    r = fn()
    return time.perf_counter() - t, r


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--db", type=Path, default=Path(__file__).resolve().parent / "out" / "events.db")
    ap.add_argument("--drop-caches", action="store_true")
    ap.add_argument("--reuse", action="store_true", help="keep an existing db, skip the insert phase")
    args = ap.parse_args()
    db: Path = args.db
    now = time.time()
    print(f"# {platform.node()} {platform.machine()} {os.cpu_count()} cpus, Python {platform.python_version()},"
          f" {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")  # fmt: skip
    if not (args.reuse and db.exists()):
        if db.parent.exists():
            for side in ("", "-wal", "-shm"):
                Path(f"{db}{side}").unlink(missing_ok=True)
        t, evs = timed(lambda: make_events(args.events, now))
        print(f"generate {len(evs):,} events: {t:.1f} s")
        store = Store(db, batch_size=500, flush_interval=float("inf"))  # flush on batch size only
        t0 = time.perf_counter()
        for e in evs:
            store.write(e)
        store.close()
        t = time.perf_counter() - t0
        print(f"insert via Store.write (batches of 500): {t:.1f} s = {len(evs) / t:,.0f} rows/s")
        del evs
    size = sum(os.path.getsize(f"{db}{s}") for s in ("", "-wal", "-shm") if os.path.exists(f"{db}{s}"))
    print(f"db size: {size / 1e6:.0f} MB")
    probe = Store(db, readonly=True)
    pid = probe.execute("SELECT pid FROM events WHERE pid IS NOT NULL LIMIT 1 OFFSET 5000")[0][0]
    end = probe.execute("SELECT max(ts) FROM events")[0][0]
    probe.close()
    queries: list[tuple[str, dict[str, Any]]] = [
        ("--server github --since 2h", {"server": "github", "since": end - 7200}),
        ("--verdict flagged", {"verdict": "flagged"}),
        ("--domain '*.example.com'", {"domain_glob": "*.example.com"}),
        ("--domain 'API1*' (no suffix: scan)", {"domain_glob": "API1*"}),
        (f"--pid {pid}", {"pid": pid}),
        ("--limit 50 (no filter)", {}),
        ("--process curl --verdict unwatched", {"process": "curl", "verdict": "unwatched"}),
        ("--server slack --limit 0 --since 2h", {"server": "slack", "since": end - 7200, "limit": None}),
    ]
    print(
        "\n| query (limit 50 unless noted) | rows | cold ms | warm ms (median of 5) |\n|---|---:|---:|---:|"
    )
    for label, kw in queries:
        if args.drop_caches:
            drop_caches()
        s = Store(db, readonly=True)
        kw = {"limit": 50, **kw}
        cold, rows = timed(lambda: query_events(s, **kw))  # noqa: B023
        warm = statistics.median(timed(lambda: query_events(s, **kw))[0] for _ in range(5))  # noqa: B023
        s.close()
        print(f"| `{label}` | {len(rows)} | {cold * 1000:.1f} | {warm * 1000:.1f} |")
    s = Store(db, readonly=True)
    t, st = timed(lambda: stats(s, since=end - 7200))
    print(f"\nstats --since 2h: {t * 1000:.0f} ms ({len(st)} servers)")
    t, st = timed(lambda: stats(s))
    print(f"stats (all 7 days): {t * 1000:.0f} ms")
    s.close()
    # Retention: on a copy, prune everything older than 6.5 days (~7% of rows).
    copy = db.parent / "prune-copy.db"
    shutil.copyfile(db, copy)
    w = Store(copy, retention=RetentionConfig(max_age_days=6.5, max_size_mb=100_000))
    res = w.prune(end, max_chunks=10_000)
    print(f"prune by age: {res.deleted_by_age:,} rows in {res.seconds:.1f} s, {res.chunks} chunks "
          f"(longest step holding the write lock: {res.longest_step * 1000:.1f} ms)")  # fmt: skip
    w.close()
    copy.unlink()
    for side in ("-wal", "-shm"):
        Path(f"{copy}{side}").unlink(missing_ok=True)


if __name__ == "__main__":
    main()
