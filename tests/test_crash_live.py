"""kill -9 of the daemon while it stores a DNS flood: the database stays intact,
at most one batch of events is lost, and the daemon restarts cleanly on it.

Three kills here; bench/crash_bench.py does twenty (bench/README-reliability.md)."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.flood import count_rows, crash_cycle, flood_daemon, integrity, start_flood, stop
from tests.helpers.netlab import Lab, require_live, wait_for

pytestmark = pytest.mark.live
BATCH = 500  # Store.batch_size: the most events one uncommitted batch holds


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_live()
    with Lab() as lab:
        lab.start_udp_sink(53)
        yield lab


def test_kill_9_while_storing_loses_at_most_one_batch(lab: Lab) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        d = flood_daemon(tmp, tmp / "events.db", lab.veth_host)
        try:
            results = [crash_cycle(d, lab, f"kill{i}", qps=6000, seconds=1.5, patience=60) for i in range(3)]
            for r in results:
                assert r["integrity"] == "ok", results
                assert r["lost"] <= BATCH, results
                assert r["stored_not_exported"] <= 1, results  # (the store is the first sink)
                assert r["stored"] > 0 and r["stored_per_s_at_kill"] >= 5000, results
            # restart on the same database: clean start, and it stores again
            d.start()
            flood = start_flood(lab, "after", 2000)
            try:
                wait_for(lambda: count_rows(d.db, "after") >= 200, 30, "rows after the restart")
            finally:
                stop(flood)
            assert d.stop() == 0
            assert integrity(d.db) == "ok"
            log = d.log()
            assert "Traceback" not in log and "ERROR" not in log, log[-3000:]
            print(results)
        finally:
            d.stop()
            d.close()
