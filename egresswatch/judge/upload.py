"""The upload detector: flags a server sending more than ``policy.upload_max_bytes``
to one destination, allowlisted or not (exfiltration through an allowed API).

Fed by ``flow_summary`` events (bytes a watched flow was handed to send, from
the kernel: docs/events.md). Per (server, destination) it sums the summaries'
``bytes_new`` over a sliding window of ``policy.upload_window_seconds`` of
event time, kept in 60 buckets, so an upload cut into many short connections
adds up; one flow whose own total (``bytes_out``) is over the limit flags too.
The destination is the registrable domain of the flow's name (its SNI, or the
one name the server resolved to the address), else the address: uploads to
``a.bucket.example.com`` and ``b.bucket.example.com`` add up.

While a destination is over the limit every summary to it is flagged (the alert
rules send one alert per key and window). Pure: event time only, bounded memory
(``max_keys`` destinations; the least recently used one well under the limit is
dropped first).
"""

from __future__ import annotations

import math
from collections import OrderedDict, deque
from dataclasses import dataclass, field

from egresswatch.judge.names import is_ip
from egresswatch.judge.suffixes import registrable_domain
from egresswatch.model import ALLOWED, FLAGGED, Observation, Verdict

BUCKETS = 60


@dataclass
class _Window:
    buckets: deque[tuple[int, int]] = field(default_factory=deque)  # (bucket number, bytes), oldest first
    total: int = 0


def target(name: str | None, ip: str) -> str:
    """What uploads add up under: the registrable domain of the name, else the address."""
    if not name or is_ip(name):
        return ip
    return registrable_domain(name) or ip


def size(n: int) -> str:
    """``5,242,880 bytes (5.0 MiB)``."""
    if n < 1 << 20:
        return f"{n:,} bytes"
    return f"{n:,} bytes ({n / (1 << 20):.1f} MiB)"


class UploadDetector:
    def __init__(self, max_bytes: int = 10_000_000, window: float = 3600.0, max_keys: int = 4096) -> None:
        self.max_keys = max(1, max_keys)
        self._states: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self.counters: dict[str, int] = {"evicted": 0}
        self.configure(max_bytes, window)

    def configure(self, max_bytes: int, window: float) -> None:
        """New limits (config reload); the windows seen so far are kept."""
        self.max_bytes = int(max_bytes)
        self.window = max(float(window), 1.0)
        self._width = self.window / BUCKETS

    def judge(self, server: str, obs: Observation, dst_name: str | None) -> Verdict:
        """The verdict of a ``flow_summary`` of a watched server's flow."""
        dest = target(dst_name or obs.sni, obs.dst)
        new = max(obs.bytes_new or 0, 0)
        total = self.observe(server, dest, new, obs.ts)
        flow = obs.bytes_out or 0
        sent = f"{size(flow)} sent on this flow"
        if self.max_bytes > 0 and (total > self.max_bytes or flow > self.max_bytes):
            why = f"{size(max(total, flow))} to {dest} within {self.window:g} s (limit {self.max_bytes:,})"
            return Verdict(FLAGGED, "upload", f"{why}; {sent}", "high")
        return Verdict(ALLOWED, "volume", f"{sent}; {size(total)} to {dest} within {self.window:g} s", "info")

    def observe(self, server: str, dest: str, nbytes: int, ts: float) -> int:
        """Add ``nbytes`` sent at ``ts``; the bytes sent to ``dest`` within the window."""
        key = (server, dest)
        st = self._states.get(key)
        if st is None:
            self._evict(self.max_keys - 1)
            st = self._states[key] = _Window()
        else:
            self._states.move_to_end(key)
        now = math.floor(ts / self._width)
        while st.buckets and st.buckets[0][0] <= now - BUCKETS:
            st.total -= st.buckets.popleft()[1]
        if nbytes:
            if st.buckets and st.buckets[-1][0] >= now:  # same bucket (or a late summary)
                b, n = st.buckets.pop()
                st.buckets.append((b, n + nbytes))
            else:
                st.buckets.append((now, nbytes))
            st.total += nbytes
        return st.total

    def _evict(self, keep: int) -> None:
        """Keep ``keep`` windows: drop the least recently used one holding
        less than half the limit; only when every one holds more, the oldest."""
        tries = 0
        while len(self._states) > keep:
            key, st = next(iter(self._states.items()))
            if st.total * 2 > self.max_bytes > 0 and tries < len(self._states):
                self._states.move_to_end(key)  # close to the limit: an attacker's flush must not reset it
                tries += 1
                continue
            del self._states[key]
            self.counters["evicted"] += 1
