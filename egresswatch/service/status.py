"""The status file the daemon writes and ``status``, ``doctor`` and ``ui`` read.

The daemon replaces it atomically at every housekeeping tick: pid, state,
timestamps, whether it is healthy and why not (:mod:`egresswatch.service.health`),
the attribution mode and the counters of every stage (:func:`gather_counters`),
among them every way an event or alert can be lost or held back.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from egresswatch.safefiles import make_dir, write_atomic

DEFAULT_STATUS_PATH = Path("/run/egresswatch/status.json")


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace the status file (readable by all: counters only),
    through an O_EXCL temporary file (the daemon checked the directory is root's)."""
    make_dir(path.parent)
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o644)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gather_counters(source: Any, pipeline: Any, store: Any, alerter: Any, jsonl: Any) -> dict[str, int]:
    """The status file's ``counters``: capture, decoder, pipeline, store,
    alerter and export counters under their documented names (docs/daemon.md)."""
    source.kernel_stats()
    lane = {} if source.watched is None else {"lane_drops": source.watched.counters["kernel_drops"]}
    pc = pipeline.counters
    dc = pipeline.decoder.counters
    return {
        "captured": source.counters["captured"],
        "kernel_packets": source.counters["kernel_packets"],
        "kernel_drops": source.counters["kernel_drops"],
        "duplicates": source.counters["duplicates"],
        "unattributed": pc["unattributed"],
        "unparsable": sum(v for k, v in dc.items() if "error" in k or "malformed" in k or "bad" in k)
        + pc["decode_errors"],
        "flagged": pc["verdict_flagged"],
        "shed_unwatched_dns": pc["shed_unwatched_dns"],
        "fast_lane": source.counters["fast_lane"]
        + (source.watched.counters["fast_lane"] if source.watched else 0),
        "watched_lane": source.counters["watched_lane"],
        **lane,
        "lane_copies": source.counters["lane_copies"],
        "alerts_sent": alerter.counters["alerts_sent"],
        "alerts_failed": alerter.counters["alerts_failed"],
        "alerts_digests": alerter.rules.counters["digests"],
        "alerts_held": alerter.rules.counters["alerts_suppressed"]
        + alerter.rules.counters["alerts_over_budget"],
        "events_stored": store.counters["events_written"],
        "store_errors": store.counters["write_errors"],
        # 1 while the database is full (events wait in memory: events_pending, bounded)
        "store_disk_full": int(store.disk_full),
        "sink_errors": pc["sink_errors"],
        # every way an event or alert can be lost or held back
        "events_dropped": store.counters["events_dropped"],
        "events_pending": store.pending,
        "db_file_lost": store.counters["db_file_lost"],
        "db_reopened": store.counters["db_reopened"],
        "alerts_dropped": alerter.counters["alerts_dropped"],
        "alerts_suppressed": alerter.rules.counters["alerts_suppressed"],
        "decode_errors": pc["decode_errors"],
        "attribution_errors": pc["attribution_errors"],
        "jsonl_errors": jsonl.counters["write_errors"] if jsonl is not None else 0,
        "status_errors": 0,
    }
