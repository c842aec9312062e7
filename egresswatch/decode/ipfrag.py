"""Capped IPv4/IPv6 fragment reassembly.

Attackers fragment DNS to slip past sensors, so fragments (as returned by
:func:`egresswatch.decode.link.decode`) are put back together here, in any
arrival order. Overlapping data is resolved first-wins (the bytes that arrived
first are kept; later overlapping bytes are counted and ignored). The frame
timestamp is the only clock: a datagram not completed within ``timeout``
seconds of frame time after its first fragment is dropped.

Hostile input is capped: at most ``max_datagrams`` datagrams in progress (the
oldest is evicted), ``max_bytes`` per datagram, ``max_fragments`` fragments per
datagram and ``max_total_bytes`` buffered overall.

``counters``: ``fragments`` (fed), ``reassembled``, ``expired``,
``dropped_overlap`` (fragments that overlapped data already held),
``dropped_cap`` (datagrams or fragments dropped by a cap),
``dropped_truncated`` (fragments cut short by the capture's snaplen).
"""

from __future__ import annotations

from collections import Counter

from egresswatch.decode.link import transport
from egresswatch.decode.wire import Fragment
from egresswatch.model import IPPacket

__all__ = ["Defragmenter"]

_Key = tuple[int, str, str, int, int]


class _Datagram:
    __slots__ = ("first_ts", "buf", "spans", "total", "count")

    def __init__(self, first_ts: float) -> None:
        self.first_ts = first_ts
        self.buf = bytearray()
        self.spans: list[tuple[int, int]] = []  # sorted, disjoint, merged [start, end)
        self.total = -1  # datagram length, known once the last fragment arrived
        self.count = 0

    def add(self, start: int, data: bytes) -> bool:
        """Copy the parts of ``data`` not yet held; True if any byte overlapped."""
        end = start + len(data)
        if self.total >= 0 and end > self.total:
            end = self.total
        if end <= start:
            return bool(data)
        if len(self.buf) < end:
            self.buf.extend(bytes(end - len(self.buf)))
        overlapped = False
        pos = start
        merged: list[tuple[int, int]] = []
        new_start, new_end = start, end
        for s, e in self.spans:
            if e < start or s > end:  # disjoint and not touching
                merged.append((s, e))
                continue
            if s < end and e > start:
                overlapped = True
            if s > pos:  # gap before this span inside [start, end)
                gap_end = min(s, end)
                self.buf[pos:gap_end] = data[pos - start : gap_end - start]
            pos = max(pos, e)
            new_start, new_end = min(new_start, s), max(new_end, e)
        if pos < end:
            self.buf[pos:end] = data[pos - start : end - start]
        merged.append((new_start, new_end))
        merged.sort()
        self.spans = merged
        return overlapped

    def complete(self) -> bool:
        return self.total >= 0 and len(self.spans) == 1 and self.spans[0] == (0, self.total)


class Defragmenter:
    """Reassembles fragments; ``feed`` returns the packet when a datagram completes."""

    def __init__(
        self,
        max_datagrams: int = 1024,
        max_bytes: int = 65535,
        timeout: float = 30.0,
        max_fragments: int = 256,
        max_total_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.timeout = timeout
        self.max_fragments = max_fragments
        self.max_total_bytes = max_total_bytes
        self.counters: Counter[str] = Counter()
        self._pending: dict[_Key, _Datagram] = {}  # insertion order = oldest first
        self._buffered = 0

    def __len__(self) -> int:
        """Datagrams in progress."""
        return len(self._pending)

    def feed(self, frag: Fragment, ts: float) -> IPPacket | None:
        """Add one fragment seen at frame time ``ts``; the reassembled packet or None."""
        return self._feed(frag, ts, 0)

    def _feed(self, frag: Fragment, ts: float, depth: int) -> IPPacket | None:
        self.counters["fragments"] += 1
        self.expire(ts)
        if frag.truncated:
            self.counters["dropped_truncated"] += 1
            return None
        end = frag.offset_bytes + len(frag.data)
        if end > self.max_bytes:
            self.counters["dropped_cap"] += 1
            return None
        key: _Key = (frag.ip_version, frag.src, frag.dst, frag.ident, frag.proto_number)
        dg = self._pending.get(key)
        if dg is None:
            while len(self._pending) >= self.max_datagrams or (
                self._pending and self._buffered + end > self.max_total_bytes
            ):
                self._drop_oldest("dropped_cap")
            dg = self._pending[key] = _Datagram(ts)
        dg.count += 1
        if dg.count > self.max_fragments:
            self._remove(key)
            self.counters["dropped_cap"] += 1
            return None
        if not frag.more_fragments and dg.total < 0:
            if end < len(dg.buf) and dg.spans and dg.spans[-1][1] > end:
                # data already held beyond the claimed end: keep what came first
                self.counters["dropped_overlap"] += 1
                return None
            dg.total = end
        before = len(dg.buf)
        if dg.add(frag.offset_bytes, frag.data):
            self.counters["dropped_overlap"] += 1
        self._buffered += len(dg.buf) - before
        if not dg.complete():
            return None
        self._remove(key)
        self.counters["reassembled"] += 1
        payload = bytes(dg.buf[: dg.total])
        result = transport(frag.ip_version, frag.src, frag.dst, frag.proto_number, payload)
        if isinstance(result, Fragment):  # a tunnel inside the datagram carried a fragment
            return self._feed(result, ts, depth + 1) if depth < 4 else None
        return result

    def expire(self, now: float) -> int:
        """Drop datagrams whose first fragment is older than ``timeout``; how many."""
        n = 0
        while self._pending:
            key = next(iter(self._pending))
            if self._pending[key].first_ts + self.timeout >= now:
                break
            self._remove(key)
            self.counters["expired"] += 1
            n += 1
        return n

    def _drop_oldest(self, counter: str) -> None:
        self._remove(next(iter(self._pending)))
        self.counters[counter] += 1

    def _remove(self, key: _Key) -> None:
        dg = self._pending.pop(key)
        self._buffered -= len(dg.buf)
