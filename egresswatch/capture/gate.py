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


class HelloGate:
    """Userspace half of the continuation rule: a TCP segment that passed the
    kernel filter only for its shape (PSH, short, no TLS record header) is kept
    when an earlier segment of its flow started a ClientHello record longer than
    that segment, until the record's bytes have arrived or ``ttl`` has passed."""

    def __init__(self, max_flows: int = 4096, ttl: float = 5.0) -> None:
        self.max_flows = max_flows
        self.ttl = ttl
        self.pending: OrderedDict[tuple[str, int, str, int], tuple[float, int]] = OrderedDict()

    def admit(self, linktype: int, data: bytes, ts: float) -> bool:
        try:
            pkt = decode(linktype, data)
        except Exception:  # never let a parser bug lose a frame here
            return True
        if not isinstance(pkt, IPPacket) or pkt.proto != "tcp":
            return True
        p = pkt.payload
        if not p or pkt.tcp_flags & 0x02 or 53 in (pkt.sport, pkt.dport):
            return True
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        if p[0] == TLS_HANDSHAKE and len(p) >= 2 and p[1] == 3:
            if len(p) >= 6 and p[5] == 1 and not pkt.truncated:  # a ClientHello record
                missing = 5 + int.from_bytes(p[3:5], "big") - len(p)
                if missing > 0:
                    self.pending[key] = (ts + self.ttl, missing)
                    self.pending.move_to_end(key)
                    while len(self.pending) > self.max_flows:
                        self.pending.popitem(last=False)
            return True
        entry = self.pending.get(key)
        if entry is None or entry[0] < ts:
            return False
        if entry[1] - len(p) <= 0:
            del self.pending[key]
        else:
            self.pending[key] = (entry[0], entry[1] - len(p))
        return True
