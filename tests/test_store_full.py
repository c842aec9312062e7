"""A full database (SQLITE_FULL, made real with PRAGMA max_page_count): writing
fails without losing what fits in memory, is logged once, shows as ``disk_full``,
and resumes when there is space again; past the bound, unwatched events go first."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from egresswatch.store.db import Store
from tests.test_store import T0, make_event


def _fill(s: Store) -> None:
    pages = s.conn.execute("PRAGMA page_count").fetchone()[0]
    s.conn.execute(f"PRAGMA max_page_count = {pages + 2}")


def test_full_database_buffers_logs_once_and_resumes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    s = Store(tmp_path / "e.db", batch_size=50, flush_interval=1e9, max_pending=2000)
    _fill(s)
    ts = T0
    while not s.disk_full:  # until a batch no longer fits
        s.write(make_event(ts, name=f"n{ts - T0:.0f}.example.com"))
        ts += 1
        assert ts < T0 + 5000, "the database never filled"
    written = s.counters["events_written"]
    for _ in range(600):
        s.write(make_event(ts, name=f"n{ts - T0:.0f}.example.com"))
        ts += 1
        s.flush()  # the housekeeping timer: each retry is one batch, so this is cheap
    total = int(ts - T0)
    assert s.disk_full and s.counters["events_dropped"] == 0
    assert s.counters["events_written"] == written and s.pending == total - written
    assert sum("cannot write" in r.message for r in caplog.records) == 1
    assert "keeping up to 2000 events" in caplog.text
    s.conn.execute("PRAGMA max_page_count = 1073741823")  # space again
    s.flush()
    assert not s.disk_full and s.pending == 0
    assert s.conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == total
    assert sum("works again" in r.message for r in caplog.records) == 1
    s.close()


def test_past_the_bound_unwatched_events_are_dropped_first(tmp_path: Path) -> None:
    s = Store(tmp_path / "e.db", batch_size=10, flush_interval=1e9, max_pending=100)
    s.conn.execute("PRAGMA query_only = 1")  # every write fails from now on
    for i in range(150):
        verdict = "flagged" if i % 3 == 0 else "unwatched"
        s.write(make_event(T0 + i, verdict=verdict, server=None if verdict == "unwatched" else "fs"))
        s.flush()
    # 150 events, room for 100: the 50 dropped are all unwatched; all 50 flagged kept
    assert s.pending == 100 and s.counters["events_dropped"] == 50
    s.conn.execute("PRAGMA query_only = 0")
    s.flush()
    rows = s.conn.execute("SELECT verdict, COUNT(*) FROM events GROUP BY verdict").fetchall()
    assert dict((r[0], r[1]) for r in rows) == {"flagged": 50, "unwatched": 50}
    assert not s.disk_full  # a read-only refusal is not a full disk
    s.close()
