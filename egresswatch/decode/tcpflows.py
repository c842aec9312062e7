"""TCP flows the decode engine follows: ClientHello scanning and DNS over TCP.

A client stream is tracked from its SYN, or from a segment that starts a TLS
handshake record (any port), and DNS over TCP (port 53, either side) from a
SYN or its first data. Each tracked direction reassembles its bytes
(:mod:`tcpstream`) into a :class:`tlsstream.HelloScanner` or a
:class:`dnstcp.TcpDnsFramer`. A hello that never completes gives
``tls_incomplete`` when the flow ends: FIN/RST from either side, a new SYN on
the same ports, expiry, eviction from the flow table, the memory budget
(:data:`MAX_BUFFERED` over all flows, least recently used shed first) or the
end of input. A finished flow stays as a tombstone so its bulk data takes the
engine's fast path. ``connect`` is reported for each SYN without ACK (a
retransmitted SYN counts once). Pure: the frame time is the only clock.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter

from egresswatch.decode.dnstcp import TcpDnsFramer
from egresswatch.decode.observe import add_dns, hello_observation
from egresswatch.decode.tcpstream import FlowTable, Stream
from egresswatch.decode.tlsstream import HelloScanner, looks_like_hello_start
from egresswatch.model import CONNECT, TLS_INCOMPLETE, TLS_SNI, IPPacket, Observation

__all__ = ["TcpFlows", "TLS_CAP", "DNS_PENDING_CAP", "MAX_BUFFERED"]

TLS_CAP = 16 * 1024  # first client bytes searched for a ClientHello
DNS_PENDING_CAP = 64 * 1024  # out-of-order / unfinished DNS-over-TCP bytes held per direction
DNS_GAP_SEGMENTS = 3  # DNS-over-TCP segments held behind a hole before the hole is skipped
MAX_BUFFERED = 32 * 1024 * 1024  # all TCP flows together; the least recently used go first
_DNS_STREAM_CAP = 1 << 40  # DNS streams are framed as they go: no total cap
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10

FlowKey = tuple[str, int, str, int]


def _raw_key(key: FlowKey) -> bytes | None:
    """The flow key as its bytes sit in the IP header (source, destination)
    followed by the TCP ports: what Engine.feed's fastest path compares."""
    src, sport, dst, dport = key
    family = socket.AF_INET6 if ":" in src else socket.AF_INET
    try:
        return socket.inet_pton(family, src) + socket.inet_pton(family, dst) + _PORTS.pack(sport, dport)
    except OSError:
        return None


_PORTS = struct.Struct("!HH")


class _Flow:
    """State of one tracked TCP direction: a DNS framer or a hello scanner."""

    __slots__ = ("isn", "stream", "framer", "scanner", "held", "done", "raw")

    def __init__(self, dns: bool, isn: int | None, next_seq: int) -> None:
        self.isn = isn  # SYN sequence number when the SYN was seen
        cap = _DNS_STREAM_CAP if dns else TLS_CAP
        self.stream = Stream(next_seq, cap=cap, pending_cap=DNS_PENDING_CAP if dns else TLS_CAP)
        self.framer: TcpDnsFramer | None = TcpDnsFramer() if dns else None
        self.scanner: HelloScanner | None = None if dns else HelloScanner()
        self.held = 0  # bytes buffered, as last accounted in TcpFlows.held
        self.done = False  # nothing more to look for: kept as a tombstone
        self.raw: bytes | None = None  # the raw key (see Engine.feed)

    @property
    def dns(self) -> bool:
        return self.scanner is None

    def size(self) -> int:
        """Bytes this flow buffers now."""
        kept = (
            self.framer.pending if self.framer is not None else len(self.scanner.buf) if self.scanner else 0
        )
        return kept + self.stream.pending_bytes

    def finish_state(self) -> None:
        self.done = True
        if self.framer is not None:
            self.framer.buf.clear()
        if self.scanner is not None:
            self.scanner.close()
        self.stream.pending.clear()
        self.stream.pending_bytes = 0


class TcpFlows:
    """The tracked TCP directions, their buffered bytes and their fast-path keys."""

    def __init__(
        self, counters: Counter[str], max_flows: int, flow_timeout: float, max_buffered: int
    ) -> None:
        self.counters = counters  # the engine's
        self.max_buffered = max_buffered
        self.held = 0  # bytes buffered by all TCP flows
        self.flows: FlowTable[FlowKey, _Flow] = FlowTable(max_flows, flow_timeout)
        # raw keys (src, dst, sport, dport as on the wire) of the flows still
        # looked at (a flow leaves it when it is finished, see _finished)
        self.raw_active: set[bytes] = set()

    def expire(self, ts: float, idx: int, out: list[Observation]) -> None:
        """Close the flows idle for longer than the flow timeout."""
        for key, fl in self.flows.expire(ts):
            self.counters["flows_expired"] += 1
            self.close(key, fl, ts, idx, "no data for too long: ClientHello never completed", out)

    def finish(self, ts: float, idx: int, out: list[Observation]) -> None:
        """End of input: report hellos that never completed, clear state."""
        for key, fl in self.flows.clear():
            self.close(key, fl, ts, idx, "capture ended before the ClientHello completed", out)
        self.held = 0

    def packet(self, ts: float, idx: int, pkt: IPPacket, out: list[Observation]) -> None:
        """One TCP segment (not on the engine's fast path)."""
        flags = pkt.tcp_flags
        payload = pkt.payload
        if not payload and not flags & (_SYN | _FIN | _RST):
            return
        key = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
        fl = self.flows.get(key)
        if flags & _SYN:
            fl = self._syn(ts, idx, pkt, key, fl, out)
            if fl is None or not payload:
                return
            seq = (pkt.seq + 1) & 0xFFFFFFFF
        else:
            seq = pkt.seq
        if fl is None:
            if not payload:
                if flags & (_RST | _FIN):
                    self._peer_closed(ts, idx, pkt, out)
                return
            dns = pkt.dport == 53 or pkt.sport == 53
            if not dns and not (payload[0] == 0x16 and looks_like_hello_start(payload[:6])):
                return
            fl = _Flow(dns, None, seq)
            self._put(key, fl, ts, idx, out)
        elif fl.done:
            return
        else:
            self.flows.touch(key, ts)
        if payload:
            if pkt.truncated:
                self.counters["truncated"] += 1
            new = fl.stream.add(seq, payload)
            if fl.dns and not new and len(fl.stream.pending) >= DNS_GAP_SEGMENTS:
                # a segment is missing for good (capture loss): resume at the next
                # segment, which normally starts a message, rather than go blind
                self.counters["dns_tcp_gaps"] += 1
                fl.stream.skip_gap()
                new = fl.stream.drain()
                if fl.framer is not None:
                    fl.framer.buf.clear()
            if new:
                if fl.dns:
                    self._dns_bytes(ts, idx, pkt, fl, new, out)
                else:
                    self._tls_bytes(ts, idx, pkt, fl, new, out)
            if not fl.dns and fl.stream.full and not fl.done:
                self.close(key, fl, ts, idx, f"no complete ClientHello in the first {TLS_CAP} bytes", out)
            size = fl.size()
            self.held += size - fl.held
            fl.held = size
            if self.held > self.max_buffered:
                self._shed(ts, idx, out)
        if flags & (_FIN | _RST) and not fl.done:
            why = "connection reset" if flags & _RST else "client closed the connection (FIN)"
            self.close(key, fl, ts, idx, why + " before the ClientHello completed", out)
        if flags & _RST:
            self._peer_closed(ts, idx, pkt, out)

    def _syn(
        self, ts: float, idx: int, pkt: IPPacket, key: FlowKey, fl: _Flow | None, out: list[Observation]
    ) -> _Flow | None:
        dns = pkt.dport == 53 or pkt.sport == 53
        if pkt.tcp_flags & _ACK:  # SYN-ACK: only the DNS server's direction is tracked from here
            if dns and (fl is None or fl.isn != pkt.seq):
                fl = _Flow(True, pkt.seq, pkt.seq + 1)
                self._put(key, fl, ts, idx, out)
            return fl
        if fl is not None and fl.isn == pkt.seq:
            self.counters["syn_retransmitted"] += 1
            return fl
        out.append(Observation(ts, idx, CONNECT, "tcp", pkt.src, pkt.sport, pkt.dst, pkt.dport))
        if fl is not None:  # port reused: the old stream is over
            self.flows.pop(key)
            self.close(key, fl, ts, idx, "new SYN on the same ports before the ClientHello completed", out)
        fl = _Flow(dns, pkt.seq, pkt.seq + 1)
        self._put(key, fl, ts, idx, out)
        return fl

    def _put(self, key: FlowKey, fl: _Flow, ts: float, idx: int, out: list[Observation]) -> None:
        raw = fl.raw = _raw_key(key)
        if raw is not None:
            self.raw_active.add(raw)
        for k, old in self.flows.put(key, fl, ts):
            self.counters["flows_evicted"] += 1
            self.close(
                k, old, ts, idx, "flow table full: oldest flow evicted before the ClientHello completed", out
            )

    def _peer_closed(self, ts: float, idx: int, pkt: IPPacket, out: list[Observation]) -> None:
        """RST/FIN from the server side: the client's unfinished hello is over."""
        rkey = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        fl = self.flows.get(rkey)
        if fl is not None and not fl.done and fl.scanner is not None and fl.scanner.in_hello:
            why = "server reset" if pkt.tcp_flags & _RST else "server closed"
            self.close(rkey, fl, ts, idx, why + " the connection before the ClientHello completed", out)

    def close(self, key: FlowKey, fl: _Flow, ts: float, idx: int, why: str, out: list[Observation]) -> None:
        """The stream ends here: report an unfinished hello, keep a tombstone."""
        if not fl.done and fl.scanner is not None and fl.scanner.in_hello:
            note = why
            if fl.stream.has_gap:
                note += " (data missing in the middle)"
            src, sport, dst, dport = key
            hello = fl.scanner.partial()
            out.append(
                hello_observation(TLS_INCOMPLETE, "tcp", ts, idx, src, sport, dst, dport, hello, note=note)
            )
            self.counters["tls_incomplete"] += 1
        if fl.dns and fl.framer is not None and fl.framer.pending:
            self.counters["dns_tcp_incomplete"] += 1
        self.held -= fl.held
        fl.held = 0
        self._finished(fl)

    def _finished(self, fl: _Flow) -> None:
        """Nothing more to look for in this flow: its bulk data may take the fast path."""
        fl.finish_state()
        if fl.raw is not None:
            self.raw_active.discard(fl.raw)

    def _shed(self, ts: float, idx: int, out: list[Observation]) -> None:
        """Over the memory budget: close the least recently used flows."""
        while self.held > self.max_buffered and len(self.flows):
            key, fl = self.flows.pop_oldest()
            self.counters["flows_shed"] += 1
            self.close(
                key, fl, ts, idx, "memory budget exceeded: flow dropped before the ClientHello completed", out
            )

    def _tls_bytes(
        self, ts: float, idx: int, pkt: IPPacket, fl: _Flow, new: bytes, out: list[Observation]
    ) -> None:
        scanner = fl.scanner
        assert scanner is not None
        before = scanner.malformed
        for hello in scanner.feed(new):
            out.append(
                hello_observation(TLS_SNI, "tcp", ts, idx, pkt.src, pkt.sport, pkt.dst, pkt.dport, hello)
            )
        if scanner.malformed != before:
            self.counters["tls_malformed_hello"] += scanner.malformed - before
        if scanner.done:
            self._finished(fl)

    def _dns_bytes(
        self, ts: float, idx: int, pkt: IPPacket, fl: _Flow, new: bytes, out: list[Observation]
    ) -> None:
        assert fl.framer is not None
        for msg in fl.framer.feed(new):
            add_dns(ts, idx, pkt, msg, self.counters, out)
