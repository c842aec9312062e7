#!/usr/bin/env python3
"""`egresswatch ui` page times on the 1M-event benchmark database.

    python3 bench/ui_bench.py [--db bench/out/events.db] [--events 1000000] [--runs 5]

Reuses the database of bench/events_bench.py when it exists (else builds it the
same way: events_bench.make_events through Store.write), opens it once for
writing so pending migrations run (the events_server_ts_dest index), adds 2,000
alert rows through the AlertLog when it has none, then serves the real app
(uvicorn on 127.0.0.1, a free port) and times each page over HTTP: the first
request, then the median of ``--runs`` more. It also reports the server's CPU
time per page (thread time of the handler), which the load of other processes
on the machine does not inflate. Results go to stdout; copy them into
bench/README-ui.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from events_bench import SERVERS, make_events  # noqa: E402

from egresswatch.config import Config  # noqa: E402
from egresswatch.store.db import Store  # noqa: E402
from egresswatch.ui import app as ui_app  # noqa: E402
from egresswatch.ui import queries, serve  # noqa: E402


def build(db: Path, n: int) -> None:
    db.parent.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    evs = make_events(n, time.time())
    store = Store(db, batch_size=500, flush_interval=float("inf"))
    for e in evs:
        store.write(e)
    store.close()
    print(f"built {n:,} events in {time.perf_counter() - t:.0f} s")


def add_alerts(db: Path, n: int = 2000) -> None:
    store = Store(db)  # applies pending migrations
    try:
        if store.execute("SELECT count(*) FROM alerts")[0][0]:
            return
        end = store.execute("SELECT max(ts) FROM events")[0][0]
        rows: list[dict[str, Any]] = []
        for i in range(n):
            kind = "digest" if i % 10 == 9 else "alert"
            rows.append({
                "ts": end - i * 300.0, "recorded": end - i * 300.0 + 1, "kind": kind,
                "server": SERVERS[i % len(SERVERS)], "destination": f"x{i}.evil-c2.net",
                "reason": "not_allowlisted", "severity": "medium", "count": 1 + (i % 7 if kind == "digest" else 0),
                "targets": ["json://localhost/"], "result": "sent", "attempts": 1,
                "title": f"egresswatch: MCP server contacted x{i}.evil-c2.net", "body": "line\n" * 8,
            })  # fmt: skip
        log = store.alert_log()
        log.insert_many(rows)
        log.close()
    finally:
        store.close()


def page_cpu(ui: ui_app.UI, handler: str, query: str, kind: str = "") -> float:
    """CPU time of one handler call in this thread (what the page costs the server)."""
    from starlette.requests import Request

    scope = {"type": "http", "method": "GET", "path": "/", "query_string": query.encode(),
             "headers": [], "path_params": {"kind": kind}}  # fmt: skip
    t = time.thread_time()
    resp = getattr(ui, handler)(Request(scope))
    cpu = time.thread_time() - t
    assert resp.status_code == 200, (handler, query, resp.status_code)
    return cpu


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--db", type=Path, default=Path(__file__).resolve().parent / "out" / "events.db")
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--runs", type=int, default=5)
    args = ap.parse_args()
    print(f"# {platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load {os.getloadavg()[0]:.1f}")  # fmt: skip
    if not args.db.exists():
        build(args.db, args.events)
    add_alerts(args.db)
    store = queries.open_readonly(args.db)
    n = store.execute("SELECT count(*) FROM events")[0][0]
    print(f"{n:,} events, {store.execute('SELECT count(*) FROM alerts')[0][0]:,} alerts")
    cfg = Config()
    app = ui_app.create_app(store, cfg)
    sock = serve.bind(0)
    base = f"http://{serve.HOST}:{sock.getsockname()[1]}"
    threading.Thread(target=serve.serve, args=(app, sock), daemon=True).start()
    pages = [
        ("servers (default: 24 h up to the newest event)", "servers", "/", ""),
        ("one server (github, default window)", "server", "/server?name=github", ""),
        ("chart: verdicts per interval", "chart", "/chart/verdicts.svg?name=github", "verdicts"),
        ("chart: destinations over time", "chart", "/chart/destinations.svg?name=github", "destinations"),
        ("alerts", "alerts", "/alerts", ""),
        ("events (no filter, 50)", "events", "/events", ""),
        ("events ?verdict=flagged", "events", "/events?verdict=flagged", ""),
        ("events ?domain=*.example.com", "events", "/events?domain=*.example.com", ""),
        ("events ?server=slack&since=2h&limit=500", "events", "/events?server=slack&since=2h&limit=500", ""),
        ("/api/head (live poll)", "api_head", "/api/head", ""),
        ("servers ?since=7d (whole database)", "servers", "/?since=7d", ""),
        ("one server ?since=7d", "server", "/server?name=github&since=7d", ""),
    ]
    for _ in range(50):  # the server is up when it answers
        try:
            urllib.request.urlopen(base + "/api/head", timeout=1).read()
            break
        except OSError:
            time.sleep(0.1)
    ui = ui_app.UI(store, cfg)
    print("\n| page | first ms | median ms (HTTP) | server CPU ms (median) |\n|---|---:|---:|---:|")
    for label, handler, path, kind in pages:
        times = []
        for _ in range(args.runs + 1):
            t = time.perf_counter()
            with urllib.request.urlopen(base + path, timeout=60) as resp:
                resp.read()
            times.append(time.perf_counter() - t)
        q = path.split("?", 1)[1] if "?" in path else ""
        cpu = statistics.median(page_cpu(ui, handler, q, kind) for _ in range(args.runs))
        print(
            f"| {label} | {times[0] * 1000:.0f} | {statistics.median(times[1:]) * 1000:.0f} | {cpu * 1000:.0f} |"
        )
    print(f"\nload average after: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
