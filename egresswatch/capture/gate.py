"""The userspace half of the classic filter's continuation rule.

The classic filter (:mod:`egresswatch.capture.bpf`, rule 4) is stateless: it
passes every short PSH segment this host sends as a possible ClientHello
continuation. :class:`HelloGate` keeps only those of flows whose hello start
said more bytes were coming, so a bulk transfer costs a header parse per
passed segment instead of a trip through the decoders. The eBPF capture
filter (:mod:`egresswatch.capture.filters`) keeps the same state in the
kernel, and then no gate runs here.
"""

from __future__ import annotations

from collections import OrderedDict

from egresswatch.capture.bpf import TLS_HANDSHAKE
from egresswatch.decode.link import decode
from egresswatch.model import IPPacket

#: the largest TLS record (2^14 + 2048); what a record whose header is cut may owe
MAX_RECORD = 18432
#: handshake records followed through one segment
RECORDS_PER_SEGMENT = 4


def _record_at(p: bytes, at: int) -> bool:
    return p[at] == TLS_HANDSHAKE and (len(p) - at == 1 or p[at + 1] == 3)


def _record_len(p: bytes, at: int) -> int:
    return 5 + (int.from_bytes(p[at + 3 : at + 5], "big") if len(p) - at >= 5 else MAX_RECORD)


def follow(p: bytes, m: int) -> int:
    """The handshake records through one segment's payload ``p`` when ``m``
    bytes of the current record were still to come (0: between records): the
    bytes the last record still owes after it, 0 when ``p`` ends on a record
    boundary, -1 when the records end in ``p``. The eBPF filter's ``follow``."""
    pos = 0
    for _ in range(RECORDS_PER_SEGMENT):
        if m > len(p) - pos:
            return m - (len(p) - pos)
        pos += m
        if pos >= len(p):
            return 0
        if not _record_at(p, pos):
            return -1
        m = _record_len(p, pos)
    return -1


class HelloGate:
    """Userspace half of the continuation rule, as the eBPF filter keeps it in
    the kernel: a TCP segment that passed the kernel filter only for its shape
    (PSH, short, no TLS record header) is kept when it carries bytes that its
    flow's handshake records still owe: a ClientHello record (or a record
    whose header its segment cut) announced more bytes than its segment held,
    and each later segment is followed through the records it carries (a
    hello may span several records), for at most ``ttl`` seconds between two
    segments."""

    def __init__(self, max_flows: int = 4096, ttl: float = 5.0) -> None:
        self.max_flows = max_flows
        self.ttl = ttl
        #: flow -> (expiry, bytes its records owe; 0: between two records)
        self.pending: OrderedDict[tuple[str, int, str, int], tuple[float, int]] = OrderedDict()

    def admit(self, linktype: int, data: bytes, ts: float) -> bool:
        try:
            pkt = decode(linktype, data)
        except Exception:  # never let a parser bug lose a frame here
            return True
        if not isinstance(pkt, IPPacket) or pkt.proto != "tcp":
            return True
        p = pkt.payload
        if not p or 53 in (pkt.sport, pkt.dport):
            return True
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if pkt.tcp_flags & 0x02:  # a SYN passes; TCP Fast Open: a hello in it
            if not pkt.tcp_flags & 0x10 and _record_at(p, 0):
                self._start(key, p, ts, pkt.truncated)
            return True
        entry = self.pending.get(key)
        if entry is not None:
            m = -1 if entry[0] < ts or (entry[1] == 0 and not _record_at(p, 0)) else follow(p, entry[1])
            if m >= 0:
                self.pending[key] = (ts + self.ttl, m)
                return True
            del self.pending[key]
            if entry[0] >= ts and entry[1] > 0:
                return True  # it carried the records' last bytes
        if _record_at(p, 0):  # rule 3: a record starts here
            self._start(key, p, ts, pkt.truncated)
            return True
        return False

    def _start(self, key: tuple[str, int, str, int], p: bytes, ts: float, truncated: bool) -> None:
        """A record starts ``p``: a ClientHello (or a record whose header ``p``
        cuts) that ``p`` does not finish keeps its flow."""
        if truncated or (len(p) >= 6 and p[5] != 1):
            return
        m = follow(p, 0)
        if m >= 0:
            self.pending[key] = (ts + self.ttl, m)
            self.pending.move_to_end(key)
            while len(self.pending) > self.max_flows:
                self.pending.popitem(last=False)
