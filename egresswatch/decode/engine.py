"""The decode engine: frames -> observations (DNS, TLS/QUIC ClientHello, SYN).

Stateful per flow, pure otherwise: the frame timestamp is the only clock, so
replaying a capture always gives the same observations in the same order
(frame order, then position inside the frame). Anything completed by
reassembly is reported on the frame that completes it, with that frame's ts.

- DNS over UDP and TCP port 53 (either side; 5353 mDNS / 5355 LLMNR are not
  DNS). TCP messages go through :class:`dnstcp.TcpDnsFramer` after reassembly.
- TLS ClientHello on any TCP port: a client stream is tracked from its SYN, or
  from a segment that starts a TLS handshake record. The first bytes are
  scanned for a ClientHello record (also after STARTTLS, HTTP CONNECT, SOCKS);
  after a hello, later records are followed (CCS, a second hello after
  HelloRetryRequest) until something else arrives. A hello that never
  completes gives ``tls_incomplete`` on FIN/RST/expiry/eviction/finish().
- ``connect`` for each SYN without ACK (a retransmitted SYN counts once).
- QUIC: UDP datagrams with the long-header bit -> :class:`quic.QuicTracker`.

Hot path: ~90% of packets are bulk TCP data of flows not tracked; they cost a
tuple, one dict lookup and two byte compares.
"""

from __future__ import annotations

import socket
import struct
from collections import Counter
from typing import Any

from egresswatch.decode import dns as dnsmod
from egresswatch.decode import link, linkmore
from egresswatch.decode.dnstcp import TcpDnsFramer
from egresswatch.decode.ipfrag import Defragmenter
from egresswatch.decode.tcpstream import FlowTable, Stream
from egresswatch.decode.tls import ClientHello
from egresswatch.decode.tlsstream import HelloScanner, looks_like_hello_start
from egresswatch.decode.wire import Fragment
from egresswatch.model import (
    CONNECT,
    DNS_ANSWER,
    DNS_QUERY,
    QUIC_SNI,
    TLS_INCOMPLETE,
    TLS_SNI,
    Frame,
    IPPacket,
    Observation,
)

try:  # engineer C's module; the engine works without it
    from egresswatch.decode.quic import QuicTracker
except ImportError:  # pragma: no cover
    QuicTracker = None  # type: ignore[assignment,misc]

__all__ = ["Engine", "TLS_CAP", "DNS_PENDING_CAP"]

TLS_CAP = 16 * 1024  # first client bytes searched for a ClientHello
DNS_PENDING_CAP = 64 * 1024  # out-of-order / unfinished DNS-over-TCP bytes held per direction
DNS_GAP_SEGMENTS = 3  # DNS-over-TCP segments held behind a hole before the hole is skipped
MAX_BUFFERED = 32 * 1024 * 1024  # all TCP flows together; the least recently used go first
_DNS_STREAM_CAP = 1 << 40  # DNS streams are framed as they go: no total cap
_FIN, _SYN, _RST, _ACK = 0x01, 0x02, 0x04, 0x10
_SWEEP = 1.0  # seconds of frame time between expiry sweeps

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
        self.held = 0  # bytes buffered, as last accounted in Engine._held
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


class Engine:
    """Frame -> [Observation]; see the module docstring."""

    def __init__(
        self,
        max_flows: int = 65536,
        flow_timeout: float = 120.0,
        quic: bool = True,
        max_buffered: int = MAX_BUFFERED,
    ) -> None:
        self.counters: Counter[str] = Counter()
        self.max_buffered = max_buffered
        self._held = 0  # bytes buffered by all TCP flows
        self.flows: FlowTable[FlowKey, _Flow] = FlowTable(max_flows, flow_timeout)
        self.defrag = Defragmenter()
        self.quic: Any = QuicTracker() if (quic and QuicTracker is not None) else None
        self._decode = link.decode
        self._next_sweep = float("-inf")
        self._last_ts = 0.0
        self._last_index = 0
        self._frames = 0
        self._flow_dict = self.flows._d  # hot path membership test (read only)
        # raw keys (src, dst, sport, dport as on the wire) of the flows still
        # looked at (a flow leaves it when it is finished, see _finished)
        self._raw_active: set[bytes] = set()

    # -- public ---------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Bytes held by all tracked TCP flows (bounded by ``max_buffered``)."""
        return self._held

    def skip_raw(self, linktype: int, buf: Any, o: int, end: int, ts: float, index: int) -> bool:
        """True when the frame ``buf[o:end]`` is certainly of no use: Ethernet +
        IPv4 (no options) or IPv6 (no extension headers) + TCP bulk data of a
        flow not tracked (no SYN/FIN/RST, not port 53, payload not starting a
        TLS record), or a bare ACK. Decided on the raw bytes before any decoding
        (and, in replay, before a Frame is even built: capture.pcapfile's
        ``skip``); the frame still counts."""
        if linktype != 1 or end - o < 54 or ts >= self._next_sweep:
            return False
        if buf[o + 12] == 0x08 and buf[o + 13] == 0 and buf[o + 14] == 0x45 and buf[o + 23] == 6:
            if buf[o + 20] & 0x3F or buf[o + 21] or buf[o + 47] & 7:
                return False
            p = o + 34 + ((buf[o + 46] >> 4) << 2)
            if p < o + 14 + ((buf[o + 16] << 8) | buf[o + 17]) and p < end:
                if (
                    buf[p] == 0x16
                    or (buf[o + 34] == 0 and buf[o + 35] == 53)
                    or (buf[o + 36] == 0 and buf[o + 37] == 53)
                    or buf[o + 26 : o + 38] in self._raw_active
                ):
                    return False
        elif buf[o + 12] == 0x86 and buf[o + 13] == 0xDD and buf[o + 20] == 6 and end - o >= 74:
            if buf[o + 67] & 7:
                return False
            p = o + 54 + ((buf[o + 66] >> 4) << 2)
            if p < o + 54 + ((buf[o + 18] << 8) | buf[o + 19]) and p < end:
                if (
                    buf[p] == 0x16
                    or (buf[o + 54] == 0 and buf[o + 55] == 53)
                    or (buf[o + 56] == 0 and buf[o + 57] == 53)
                    or buf[o + 22 : o + 58] in self._raw_active
                ):
                    return False
        else:
            return False
        self._frames += 1
        self._last_index = index
        return True

    def feed(self, frame: Frame) -> list[Observation]:
        data = frame.data
        if self.skip_raw(frame.linktype, data, 0, len(data), frame.ts, frame.index):
            return []
        self._frames += 1
        pkt = self._decode(frame.linktype, data)
        if pkt is None and frame.linktype not in link.LINKTYPES:
            pkt = linkmore.decode(frame.linktype, data)
        if type(pkt) is not IPPacket:
            if not isinstance(pkt, Fragment):
                self.counters["non_ip"] += 1
                return []
            self.counters["fragments"] += 1
            whole = self.defrag.feed(pkt, frame.ts)
            if whole is None:
                return []
            self.counters["reassembled"] += 1
            return self.feed_packet(frame.ts, frame.index, whole)
        if pkt.proto == "tcp" and not pkt.tcp_flags & 7:
            # hot path: data or ACK of a flow not tracked, no FIN/SYN/RST
            payload = pkt.payload
            if not payload:
                return []
            if (
                payload[0] != 0x16
                and pkt.dport != 53
                and pkt.sport != 53
                and frame.ts < self._next_sweep
                and (pkt.src, pkt.sport, pkt.dst, pkt.dport) not in self._flow_dict
            ):
                self._last_index = frame.index
                return []
        return self.feed_packet(frame.ts, frame.index, pkt)

    def feed_packet(self, ts: float, frame_index: int, pkt: IPPacket) -> list[Observation]:
        out: list[Observation] = []
        self._last_index = frame_index
        if ts >= self._next_sweep:
            self._sweep(ts, frame_index, out)
        if ts > self._last_ts:
            self._last_ts = ts
        try:
            if pkt.proto == "tcp":
                self._tcp(ts, frame_index, pkt, out)
            else:
                self._udp(ts, frame_index, pkt, out)
        except Exception:  # a decoder bug must not lose the rest of the capture
            self.counters["engine_errors"] += 1
        return out

    def finish(self) -> list[Observation]:
        """End of input: report hellos that never completed, clear state."""
        out: list[Observation] = []
        ts, idx = self._last_ts, self._last_index
        for key, fl in self.flows.clear():
            self._close(key, fl, ts, idx, "capture ended before the ClientHello completed", out)
        if self.quic is not None:
            for p in self.quic.finish():
                hello: ClientHello | None = p.hello
                src, sport, dst, dport = p.flow
                note = f"QUIC Initial CRYPTO data incomplete ({p.received} bytes)"
                out.append(
                    self._hello_obs(TLS_INCOMPLETE, "udp", ts, idx, src, sport, dst, dport, hello, note=note)
                )
                self.counters["tls_incomplete"] += 1
        self._held = 0
        self._sync_counters()
        return out

    # -- TCP ------------------------------------------------------------------

    def _tcp(self, ts: float, idx: int, pkt: IPPacket, out: list[Observation]) -> None:
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
                self._close(key, fl, ts, idx, f"no complete ClientHello in the first {TLS_CAP} bytes", out)
            size = fl.size()
            self._held += size - fl.held
            fl.held = size
            if self._held > self.max_buffered:
                self._shed(ts, idx, out)
        if flags & (_FIN | _RST) and not fl.done:
            why = "connection reset" if flags & _RST else "client closed the connection (FIN)"
            self._close(key, fl, ts, idx, why + " before the ClientHello completed", out)
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
            self._close(key, fl, ts, idx, "new SYN on the same ports before the ClientHello completed", out)
        fl = _Flow(dns, pkt.seq, pkt.seq + 1)
        self._put(key, fl, ts, idx, out)
        return fl

    def _put(self, key: FlowKey, fl: _Flow, ts: float, idx: int, out: list[Observation]) -> None:
        raw = fl.raw = _raw_key(key)
        if raw is not None:
            self._raw_active.add(raw)
        for k, old in self.flows.put(key, fl, ts):
            self.counters["flows_evicted"] += 1
            self._close(
                k, old, ts, idx, "flow table full: oldest flow evicted before the ClientHello completed", out
            )

    def _peer_closed(self, ts: float, idx: int, pkt: IPPacket, out: list[Observation]) -> None:
        """RST/FIN from the server side: the client's unfinished hello is over."""
        rkey = (pkt.dst, pkt.dport, pkt.src, pkt.sport)
        fl = self.flows.get(rkey)
        if fl is not None and not fl.done and fl.scanner is not None and fl.scanner.in_hello:
            why = "server reset" if pkt.tcp_flags & _RST else "server closed"
            self._close(rkey, fl, ts, idx, why + " the connection before the ClientHello completed", out)

    def _close(self, key: FlowKey, fl: _Flow, ts: float, idx: int, why: str, out: list[Observation]) -> None:
        """The stream ends here: report an unfinished hello, keep a tombstone."""
        if not fl.done and fl.scanner is not None and fl.scanner.in_hello:
            note = why
            if fl.stream.has_gap:
                note += " (data missing in the middle)"
            src, sport, dst, dport = key
            hello = fl.scanner.partial()
            out.append(
                self._hello_obs(TLS_INCOMPLETE, "tcp", ts, idx, src, sport, dst, dport, hello, note=note)
            )
            self.counters["tls_incomplete"] += 1
        if fl.dns and fl.framer is not None and fl.framer.pending:
            self.counters["dns_tcp_incomplete"] += 1
        self._held -= fl.held
        fl.held = 0
        self._finished(fl)

    def _finished(self, fl: _Flow) -> None:
        """Nothing more to look for in this flow: its bulk data may take the fast path."""
        fl.finish_state()
        if fl.raw is not None:
            self._raw_active.discard(fl.raw)

    def _shed(self, ts: float, idx: int, out: list[Observation]) -> None:
        """Over the memory budget: close the least recently used flows."""
        while self._held > self.max_buffered and len(self.flows):
            key, fl = self.flows.pop_oldest()
            self.counters["flows_shed"] += 1
            self._close(
                key, fl, ts, idx, "memory budget exceeded: flow dropped before the ClientHello completed", out
            )

    # -- TLS ------------------------------------------------------------------

    def _tls_bytes(
        self, ts: float, idx: int, pkt: IPPacket, fl: _Flow, new: bytes, out: list[Observation]
    ) -> None:
        scanner = fl.scanner
        assert scanner is not None
        before = scanner.malformed
        for hello in scanner.feed(new):
            out.append(
                self._hello_obs(TLS_SNI, "tcp", ts, idx, pkt.src, pkt.sport, pkt.dst, pkt.dport, hello)
            )
        if scanner.malformed != before:
            self.counters["tls_malformed_hello"] += scanner.malformed - before
        if scanner.done:
            self._finished(fl)

    def _hello_obs(
        self,
        kind: str,
        proto: Any,
        ts: float,
        idx: int,
        src: str,
        sport: int,
        dst: str,
        dport: int,
        hello: ClientHello | None,
        quic_version: int | None = None,
        note: str | None = None,
    ) -> Observation:
        if hello is None:
            return Observation(
                ts, idx, kind, proto, src, sport, dst, dport, quic_version=quic_version, note=note
            )
        return Observation(
            ts,
            idx,
            kind,
            proto,
            src,
            sport,
            dst,
            dport,
            sni=hello.sni,
            alpn=hello.alpn,
            ech=hello.ech,
            tls_versions=hello.versions,
            quic_version=quic_version,
            note=note,
        )

    # -- DNS ------------------------------------------------------------------

    def _dns_bytes(
        self, ts: float, idx: int, pkt: IPPacket, fl: _Flow, new: bytes, out: list[Observation]
    ) -> None:
        assert fl.framer is not None
        for msg in fl.framer.feed(new):
            self._dns(ts, idx, pkt, msg, out)

    def _dns(self, ts: float, idx: int, pkt: IPPacket, payload: bytes, out: list[Observation]) -> None:
        m = dnsmod.parse_message(payload)
        if m is None:
            self.counters["malformed_dns"] += 1
            return
        if m.malformed:
            self.counters["malformed_dns"] += 1
        out.append(
            Observation(
                ts,
                idx,
                DNS_ANSWER if m.qr else DNS_QUERY,
                pkt.proto,
                pkt.src,
                pkt.sport,
                pkt.dst,
                pkt.dport,
                qname=m.qname,
                qtype=m.qtype,
                rcode=m.rcode,
                answers=m.answers,
                records=m.records if m.qr else (),
                dns_id=m.id,
                note=m.malformed,
            )
        )

    # -- UDP ------------------------------------------------------------------

    def _udp(self, ts: float, idx: int, pkt: IPPacket, out: list[Observation]) -> None:
        payload = pkt.payload
        if pkt.dport == 53 or pkt.sport == 53:
            if pkt.truncated:
                self.counters["truncated"] += 1
            self._dns(ts, idx, pkt, payload, out)
        elif payload and payload[0] & 0x80 and self.quic is not None:
            for hello, version in self.quic.feed(ts, (pkt.src, pkt.sport, pkt.dst, pkt.dport), payload):
                out.append(
                    self._hello_obs(
                        QUIC_SNI, "udp", ts, idx, pkt.src, pkt.sport, pkt.dst, pkt.dport, hello, version
                    )
                )

    # -- housekeeping -----------------------------------------------------------

    def _sweep(self, ts: float, idx: int, out: list[Observation]) -> None:
        self._next_sweep = ts + _SWEEP
        for key, fl in self.flows.expire(ts):
            self.counters["flows_expired"] += 1
            self._close(key, fl, ts, idx, "no data for too long: ClientHello never completed", out)
        self._sync_counters()

    def _sync_counters(self) -> None:
        c = self.counters
        c["frames"] = self._frames
        if self.quic is not None:
            for k, v in self.quic.counters.items():
                c[k] = v
            c["quic_undecryptable"] = self.quic.counters.get("quic_auth_failed", 0)
        for k, v in self.defrag.counters.items():
            c["ipfrag_" + k] = v
        c["flows_tracked"] = len(self.flows)
        c["tcp_bytes_buffered"] = self._held
