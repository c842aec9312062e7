"""The database on a 2 MB tmpfs that fills up under a DNS flood: capture goes on,
``status`` shows ``store_disk_full``, the log says so once, and when space
returns (the tmpfs grown) every event held meanwhile is written."""

from __future__ import annotations

import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.flood import exported, flood_daemon, integrity, start_flood, stop, stored
from tests.helpers.netlab import Lab, require_live, run, wait_for

pytestmark = pytest.mark.live


@pytest.fixture
def lab() -> Iterator[Lab]:
    require_live()
    with Lab() as lab:
        lab.start_udp_sink(53)
        yield lab


def test_disk_full_then_space_returns(lab: Lab) -> None:
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        os.chmod(tmp, 0o700)
        mnt = tmp / "db"
        mnt.mkdir()
        run("mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mnt))
        d = flood_daemon(tmp, mnt / "events.db", lab.veth_host)
        try:
            d.start()
            flood = start_flood(lab, "full", 2000)
            try:
                wait_for(lambda: d.counter("store_disk_full") == 1, 60, "store_disk_full in status")
                full_at = d.counter("captured"), len(exported(d.jsonl, "full"))
                time.sleep(2)  # the flood goes on against a full disk
                wait_for(lambda: d.counter("captured") > full_at[0] + 1000, 20, "capture going on")
                assert len(exported(d.jsonl, "full")) > full_at[1] + 1000  # the pipeline too
                assert d.proc is not None and d.proc.poll() is None
                assert d.counter("events_pending") > 0 and d.counter("store_disk_full") == 1
            finally:
                stop(flood)
            shown = d.show_status()
            assert "store_disk_full: 1" in shown.stdout, shown.stdout
            assert any("disk is full" in p for p in d.status()["problems"]), d.status()  # unhealthy, and why
            run("mount", "-o", "remount,size=64m", str(mnt))  # space returns
            wait_for(lambda: d.counter("store_disk_full") == 0 and d.counter("events_pending") == 0, 30,
                     "writing to resume")  # fmt: skip
            assert d.counter("events_dropped") == 0
            assert stored(d.db, "full") == exported(d.jsonl, "full")  # nothing held was lost
            assert d.stop() == 0
            assert integrity(d.db) == "ok"
            log = d.log()
            assert log.count("egresswatch.store.db: cannot write") == 1, log[-3000:]
            assert "database or disk is full" in log and log.count("egresswatch.store.db: writing to") == 1, (
                log[-3000:]
            )
            assert "Traceback" not in log, log[-3000:]
        finally:
            d.stop()
            d.close()
            run("umount", str(mnt), check=False)
