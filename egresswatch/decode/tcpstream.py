"""Reassembly of the first bytes of one direction of a TCP stream, and a
bounded flow table. Pure: no I/O, no clock (time is the frame's timestamp).

egresswatch only needs the beginning of a stream (a ClientHello, or DNS
messages), so :class:`Stream` delivers bytes in sequence order up to a cap:

- reordering: segments ahead of the next expected byte wait in ``pending``
  until the hole before them is filled;
- retransmission and overlap: bytes already delivered or already pending are
  never replaced (first wins), only the new part of a segment is used;
- gaps: a hole that never fills blocks delivery; the owner decides (on
  FIN/RST/expiry) what to do with the stream (see :meth:`Stream.skip_gap`);
- caps: ``cap`` bytes delivered in total, ``pending_cap`` bytes held out of order.

Sequence numbers wrap at 2**32 (RFC 1982 serial arithmetic).

:class:`FlowTable` holds per-flow state with a global cap (least recently used
by frame time is evicted first) and an idle expiry by frame time.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Hashable
from typing import Generic, TypeVar

__all__ = ["Stream", "FlowTable"]

_MASK = 0xFFFFFFFF
_HALF = 0x80000000
MAX_PENDING_SEGMENTS = 64


class Stream:
    """One direction of a TCP connection, from ``next_seq`` (the sequence number
    of the first byte wanted: ISN + 1 after a SYN, else the first segment's seq)."""

    __slots__ = ("next_seq", "delivered", "cap", "pending", "pending_bytes", "pending_cap", "overflow")

    def __init__(self, next_seq: int, cap: int = 16384, pending_cap: int | None = None) -> None:
        self.next_seq = next_seq & _MASK
        self.delivered = 0  # bytes handed out so far
        self.cap = cap
        self.pending: dict[int, bytes] = {}  # absolute seq -> bytes, non-overlapping, all after next_seq
        self.pending_bytes = 0
        self.pending_cap = cap if pending_cap is None else pending_cap
        self.overflow = False  # cap reached or out-of-order data dropped

    @property
    def full(self) -> bool:
        return self.delivered >= self.cap

    @property
    def has_gap(self) -> bool:
        """Data is waiting behind a hole."""
        return bool(self.pending)

    def add(self, seq: int, data: bytes) -> bytes:
        """Add one segment's payload; return the bytes that became contiguous
        (in order, possibly including earlier out-of-order segments), or b""."""
        if not data or self.delivered >= self.cap:
            return b""
        rel = (seq - self.next_seq) & _MASK
        if rel >= _HALF:  # starts before next_seq: retransmission / overlap
            skip = (1 << 32) - rel
            if skip >= len(data):
                return b""
            data = data[skip:]
            rel = 0
        if rel:
            self._hold(rel, data)
            return b""
        if not self.pending:
            return self._take(data)
        # overlaps with pending pieces: those arrived first and win
        for r, p in self._trim(0, data):
            self._store((self.next_seq + r) & _MASK, p)
        return self.drain()

    def _take(self, data: bytes) -> bytes:
        room = self.cap - self.delivered
        if len(data) > room:
            data = data[:room]
            self.overflow = True
        self.delivered += len(data)
        self.next_seq = (self.next_seq + len(data)) & _MASK
        return data

    def _next_pending(self) -> bytes | None:
        """Pop the pending piece that now starts at next_seq (dropping pieces
        already covered); None if a hole remains."""
        nxt = self.next_seq
        found: bytes | None = None
        for s in list(self.pending):
            rel = (s - nxt) & _MASK
            if rel == 0:
                found = self.pending.pop(s)
                self.pending_bytes -= len(found)
            elif rel >= _HALF:  # entirely or partly behind us
                d = self.pending.pop(s)
                self.pending_bytes -= len(d)
                skip = (1 << 32) - rel
                if skip < len(d):
                    self._store((s + skip) & _MASK, d[skip:])
        if found is None:
            found = self.pending.pop(nxt, None)
            if found is not None:
                self.pending_bytes -= len(found)
        return found

    def _store(self, seq: int, data: bytes) -> None:
        self.pending[seq] = data
        self.pending_bytes += len(data)

    def _hold(self, rel: int, data: bytes) -> None:
        """Keep an out-of-order piece; bytes already pending win (first wins)."""
        if rel >= self.cap - self.delivered:  # beyond what we will ever deliver
            return
        base = self.next_seq
        for r, p in self._trim(rel, data):
            if len(self.pending) >= MAX_PENDING_SEGMENTS or self.pending_bytes + len(p) > self.pending_cap:
                self.overflow = True
                return
            self._store((base + r) & _MASK, p)

    def _trim(self, rel: int, data: bytes) -> list[tuple[int, bytes]]:
        """The parts of (rel, data) not already covered by pending pieces."""
        pieces = [(rel, data)]
        base = self.next_seq
        for s, d in self.pending.items():
            er = (s - base) & _MASK
            ee = er + len(d)
            cut: list[tuple[int, bytes]] = []
            for r, p in pieces:
                e = r + len(p)
                if e <= er or r >= ee:
                    cut.append((r, p))
                    continue
                if r < er:
                    cut.append((r, p[: er - r]))
                if e > ee:
                    cut.append((ee, p[ee - r :]))
            pieces = cut
            if not pieces:
                break
        return pieces

    def skip_gap(self) -> int:
        """Give up on the first hole: continue from the earliest pending byte.
        Returns the number of bytes skipped (0 if nothing is pending)."""
        if not self.pending:
            return 0
        base = self.next_seq
        first = min(self.pending, key=lambda s: (s - base) & _MASK)
        skipped = (first - base) & _MASK
        self.next_seq = first
        return skipped

    def drain(self) -> bytes:
        """After :meth:`skip_gap`: the bytes that are now contiguous."""
        parts: list[bytes] = []
        while self.pending and self.delivered < self.cap:
            nxt = self._next_pending()
            if nxt is None:
                break
            parts.append(self._take(nxt))
        return b"".join(parts)


K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class FlowTable(Generic[K, V]):
    """Per-flow state, at most ``max_flows`` entries; entries idle for more than
    ``timeout`` seconds of frame time expire. ``touch`` marks use (LRU order)."""

    def __init__(self, max_flows: int = 65536, timeout: float = 120.0) -> None:
        self.max_flows = max_flows
        self.timeout = timeout
        self._d: OrderedDict[K, tuple[float, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._d)

    def __contains__(self, key: object) -> bool:
        return key in self._d

    def get(self, key: K) -> V | None:
        item = self._d.get(key)
        return None if item is None else item[1]

    def put(self, key: K, value: V, ts: float) -> list[tuple[K, V]]:
        """Insert or replace; returns entries evicted to stay within ``max_flows``."""
        d = self._d
        d[key] = (ts, value)
        d.move_to_end(key)
        evicted: list[tuple[K, V]] = []
        while len(d) > self.max_flows:
            k, (_, v) = d.popitem(last=False)
            evicted.append((k, v))
        return evicted

    def touch(self, key: K, ts: float) -> None:
        item = self._d.get(key)
        if item is not None:
            self._d[key] = (max(ts, item[0]), item[1])
            self._d.move_to_end(key)

    def pop(self, key: K) -> V | None:
        item = self._d.pop(key, None)
        return None if item is None else item[1]

    def pop_oldest(self) -> tuple[K, V]:
        """Remove and return the least recently used entry (KeyError if empty)."""
        k, (_, v) = self._d.popitem(last=False)
        return k, v

    def expire(self, now: float) -> list[tuple[K, V]]:
        """Remove and return entries idle since before ``now - timeout``."""
        d = self._d
        out: list[tuple[K, V]] = []
        limit = now - self.timeout
        while d:
            k, (ts, v) = next(iter(d.items()))
            if ts >= limit:
                break
            del d[k]
            out.append((k, v))
        return out

    def items(self) -> list[tuple[K, V]]:
        return [(k, v) for k, (_, v) in self._d.items()]

    def clear(self) -> list[tuple[K, V]]:
        out = self.items()
        self._d.clear()
        return out
