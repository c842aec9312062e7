"""A numbered DNS query flood to drive the daemon (crash-safety, disk-full and
lifecycle tests, bench/crash_bench.py), and what the daemon made of it: rows
stored, the JSON-lines export, the database's integrity.

The export is line-buffered, so after a ``kill -9`` it holds every event the
pipeline produced, which makes ``export - database`` the events the store lost.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tests.helpers.daemonrun import Daemon, base_config, query
from tests.helpers.netlab import wait_for

FLOOD = r"""
import socket, sys, time
host, tag, qps = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, 53))
start = time.monotonic(); i = 0
while True:
    name = f"q{i}.{tag}.test".encode()
    q = (i & 0xFFFF).to_bytes(2, "big") + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    q += b"".join(bytes([len(p)]) + p for p in name.split(b".")) + b"\x00\x00\x01\x00\x01"
    try:
        s.send(q)
    except OSError:
        pass
    i += 1
    if i % 100 == 0:
        ahead = i / qps - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(ahead)
        if i % 1000 == 0:
            print(i, flush=True)
"""


def flood_daemon(tmp: Path, db: Path, iface: str | None, extra: str = "") -> Daemon:
    """The daemon of the flood tests: ``db``, the JSON-lines export, only
    ``iface`` (None: every interface, new ones included)."""
    args = ("--iface", iface) if iface else ()
    return Daemon(tmp, flood_config(tmp, db, extra), db=db, args=args)


def flood_config(tmp: Path, db: Path, extra: str = "", broken: bool = False) -> str:
    """``broken``: a TOML syntax error at the end."""
    text = base_config(tmp, db, jsonl=tmp / "events.jsonl", extra=extra)
    return text + ("\n[servers.broken\n" if broken else "")


def start_flood(lab: Any, tag: str, qps: int) -> subprocess.Popen[str]:
    """Numbered queries q<i>.<tag>.test to the lab's port 53, from the host."""
    return subprocess.Popen([sys.executable, "-c", FLOOD, lab.peer4, tag, str(qps)],
                            stdout=subprocess.PIPE, text=True)  # fmt: skip


def stop(p: subprocess.Popen[str]) -> None:
    p.kill()
    p.wait()


def count_rows(db: Path, tag: str) -> int:
    sql = "SELECT COUNT(*) AS n FROM events WHERE qname LIKE ?"
    return int(query(db, sql, (f"%.{tag}.test",), strict=True)[0]["n"])


def integrity(db: Path) -> str:
    """PRAGMA integrity_check through a normal connection (it recovers the WAL
    as the restarted daemon would)."""
    conn = sqlite3.connect(db, timeout=10)
    try:
        return ";".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
    finally:
        conn.close()


def exported(jsonl: Path, tag: str) -> set[str]:
    """qnames of the tag's events in the JSON-lines export."""
    out = set()
    suffix = f".{tag}.test"
    with open(jsonl, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if suffix in line:
                try:
                    out.add(json.loads(line)["qname"])
                except (ValueError, KeyError):
                    pass  # the last line may be cut by the kill
    return out


def stored(db: Path, tag: str) -> set[str]:
    sql = "SELECT qname FROM events WHERE qname LIKE ?"
    return {r["qname"] for r in query(db, sql, (f"%.{tag}.test",), strict=True)}


def last_id(db: Path) -> int:
    """The newest row's id: rows stored so far, read in O(1) however large the
    database grows (a COUNT with LIKE scans it all, and slows the rate windows)."""
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    except sqlite3.Error:
        return 0
    try:
        return int(conn.execute("SELECT COALESCE(MAX(id), 0) FROM events").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def crash_cycle(
    d: Daemon, lab: Any, tag: str, qps: int, seconds: float, min_rate: int = 5000, patience: float = 20.0
) -> dict[str, Any]:
    """Start the daemon (on whatever database it has), flood it, and ``kill -9``
    it at least ``seconds`` in, at the end of a 0.5 s window in which it stored
    ``min_rate`` rows/s or more (tried for ``patience`` s); then judge the database:
    integrity, and the events in the export that are not in the database."""
    ready_s = d.start()
    id0 = last_id(d.db)
    flood = start_flood(lab, tag, qps)
    try:
        wait_for(lambda: last_id(d.db) > id0, 30, "first flood rows stored")
        n0, t0 = last_id(d.db), time.monotonic()
        time.sleep(seconds)
        give_up = time.monotonic() + patience
        n, t = last_id(d.db), time.monotonic()
        while True:
            time.sleep(0.5)
            n1, t1 = last_id(d.db), time.monotonic()
            window = (n1 - n) / (t1 - t)
            if window >= min_rate or t1 > give_up:
                break
            n, t = n1, t1
        d.kill9()
    finally:
        stop(flood)
    check = integrity(d.db)
    out, db = exported(d.jsonl, tag), stored(d.db, tag)
    return {
        "ready_s": round(ready_s, 2),
        "stored_per_s": round((n1 - n0) / (t1 - t0)),
        "stored_per_s_at_kill": round(window),
        "integrity": check,
        "exported": len(out),
        "stored": len(db),
        "lost": len(out - db),
        "stored_not_exported": len(db - out),
    }
