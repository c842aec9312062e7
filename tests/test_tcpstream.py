"""TCP first-bytes reassembly and the flow table (egresswatch.decode.tcpstream)."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.decode.tcpstream import FlowTable, Stream

DATA = bytes(random.Random(7).randrange(256) for _ in range(3000))


def feed_all(stream: Stream, isn: int, segs: list[tuple[int, bytes]]) -> bytes:
    return b"".join(stream.add((isn + off) & 0xFFFFFFFF, d) for off, d in segs)


def test_in_order() -> None:
    s = Stream(1000)
    assert s.add(1000, b"abc") == b"abc"
    assert s.add(1003, b"def") == b"def"
    assert (s.delivered, s.next_seq, s.has_gap) == (6, 1006, False)


def test_reorder_is_delivered_when_hole_fills() -> None:
    s = Stream(0)
    assert s.add(3, b"def") == b""
    assert s.add(6, b"ghi") == b""
    assert s.has_gap
    assert s.add(0, b"abc") == b"abcdefghi"
    assert not s.has_gap


def test_retransmission_and_overlap_first_wins() -> None:
    s = Stream(0)
    assert s.add(0, b"abcd") == b"abcd"
    assert s.add(0, b"abcd") == b""  # retransmission
    assert s.add(2, b"XXef") == b"ef"  # overlap: delivered bytes are kept
    # out of order overlap: bytes pending first win over a later segment
    assert s.add(8, b"ijkl") == b""
    assert s.add(6, b"ghYYYYmn") == b"ghijklmn"
    # a segment arriving at next_seq that overlaps pending data keeps the pending bytes
    assert s.add(16, b"qr") == b""
    assert s.add(14, b"opZZst") == b"opqrst"


def test_sequence_wraparound() -> None:
    isn = 0xFFFFFFFE
    s = Stream(isn)
    assert s.add(isn + 4 & 0xFFFFFFFF, b"ef") == b""
    assert s.add(isn, b"abcd") == b"abcdef"
    assert s.next_seq == 4


def test_cap_and_pending_cap() -> None:
    s = Stream(0, cap=10)
    assert s.add(0, b"0123456789abc") == b"0123456789"
    assert s.full and s.overflow
    assert s.add(10, b"more") == b""
    s2 = Stream(0, cap=100, pending_cap=5)
    assert s2.add(10, b"123456") == b""  # too much out-of-order data: dropped
    assert s2.overflow and not s2.has_gap
    s3 = Stream(0, cap=8)
    assert s3.add(20, b"far") == b""  # beyond the cap: never needed
    assert not s3.has_gap


def test_gap_skip() -> None:
    s = Stream(0)
    s.add(0, b"ab")
    s.add(5, b"fg")
    s.add(7, b"hi")
    assert s.skip_gap() == 3
    assert s.drain() == b"fghi"
    assert s.skip_gap() == 0


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32), st.integers(1, 700))
def test_any_arrival_order_reassembles(isn: int, seed: int, maxseg: int) -> None:
    rnd = random.Random(seed)
    segs: list[tuple[int, bytes]] = []
    off = 0
    while off < len(DATA):
        n = rnd.randrange(1, maxseg + 1)
        segs.append((off, DATA[off : off + n]))
        off += n
    for _ in range(5):  # retransmissions and overlapping re-segmentations
        a = rnd.randrange(len(DATA))
        segs.append((a, DATA[a : a + rnd.randrange(1, 900)]))
    rnd.shuffle(segs)
    if len(segs) > 60:  # keep within MAX_PENDING_SEGMENTS
        segs.sort()
    s = Stream(isn, cap=len(DATA))
    assert feed_all(s, isn, segs) == DATA


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), st.binary(max_size=64)), max_size=40))
def test_never_raises_and_respects_caps(segs: list[tuple[int, bytes]]) -> None:
    s = Stream(12345, cap=256, pending_cap=128)
    total = sum(len(s.add(seq, d)) for seq, d in segs)
    assert total == s.delivered <= 256
    assert s.pending_bytes <= 128 and s.pending_bytes == sum(len(d) for d in s.pending.values())


def test_flow_table_lru_and_expiry() -> None:
    t: FlowTable[str, int] = FlowTable(max_flows=2, timeout=10.0)
    assert t.put("a", 1, 0.0) == []
    assert t.put("b", 2, 1.0) == []
    t.touch("a", 2.0)
    assert t.put("c", 3, 3.0) == [("b", 2)]  # least recently used goes
    assert t.get("a") == 1 and "b" not in t and len(t) == 2
    assert t.expire(12.5) == [("a", 1)]
    assert t.expire(12.5) == []
    assert t.pop("c") == 3 and t.pop("c") is None
    t.put("d", 4, 20.0)
    assert t.clear() == [("d", 4)] and len(t) == 0
