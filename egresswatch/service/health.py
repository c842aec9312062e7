"""Is the daemon losing events? The status file's ``healthy`` and ``problems``.

:class:`Health` is fed the daemon's counters at every housekeeping tick and
answers with the reasons it is unhealthy (empty: healthy):

- the kernel dropped more than ``DROP_RATIO`` of the packets (and at least
  ``DROP_MIN``) within the last ``WINDOW`` seconds;
- the database cannot be written (disk full, I/O error, the file was deleted
  or replaced and no new one could be opened) or events were dropped, the
  database file was lost, alerts were dropped, or a sink or the JSON-lines
  export failed within the last ``WINDOW`` seconds.

Each problem is logged once when it appears and once when it clears, never per
event.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Mapping

log = logging.getLogger(__name__)

WINDOW = 60.0  # seconds a loss keeps the daemon unhealthy
DROP_RATIO = 0.01
DROP_MIN = 10
# counter -> what a rise in it means
LOSSES = {
    "events_dropped": "events dropped (the database could not take them)",
    "db_file_lost": "the database file was deleted or replaced (events written before are in the old file)",
    "store_errors": "database writes failed",
    "alerts_dropped": "alerts dropped",
    "sink_errors": "an event sink failed",
    "jsonl_errors": "JSON-lines export writes failed",
}


class Health:
    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._reported: set[str] = set()

    def check(self, now: float, counters: Mapping[str, int], store_problem: str | None) -> list[str]:
        """Problems now (``now`` is a monotonic time), given the cumulative counters."""
        keys = ("kernel_packets", "kernel_drops", "lane_drops", *LOSSES)
        sample = {k: int(counters.get(k, 0)) for k in keys}
        self._samples.append((now, sample))
        while len(self._samples) > 1 and self._samples[1][0] <= now - self.window:
            self._samples.popleft()
        base = self._samples[0][1]
        delta = {k: sample[k] - base[k] for k in keys}
        problems: dict[str, str] = {}
        drops, packets = delta["kernel_drops"], delta["kernel_packets"]
        if drops >= DROP_MIN and drops > DROP_RATIO * max(packets, 1):
            if "lane_drops" not in counters:
                whose = "MCP servers' events may be among them"
            elif delta["lane_drops"]:
                whose = (
                    f"the watched lane dropped {delta['lane_drops']} too: MCP servers' events are among them"
                )
            else:
                whose = "MCP trees' frames came through the watched lane, which dropped none"
            problems["kernel_drops"] = (
                f"the kernel dropped {drops} of {packets} packets in the last {self.window:g}s"
                f" (capture cannot keep up; {whose}; for bursts raise daemon.capture_buffer_mb)"
            )
        if store_problem:
            problems["store"] = store_problem
        for key, what in LOSSES.items():
            if delta[key] > 0 and not (key == "store_errors" and store_problem):
                problems[key] = f"{what}: {delta[key]} in the last {self.window:g}s"
        for key in problems.keys() - self._reported:
            log.warning("unhealthy: %s", problems[key])
        for key in self._reported - problems.keys():
            log.warning("recovered: %s", key.replace("_", " "))
        self._reported = set(problems)
        return list(problems.values())
