"""The decode engine: frames -> observations (DNS, TLS/QUIC ClientHello, SYN).

Stateful per flow, pure otherwise: the frame timestamp is the only clock, so
replaying a capture always gives the same observations in the same order
(frame order, then position inside the frame). Anything completed by
reassembly is reported on the frame that completes it, with that frame's ts.

- Frames are decoded by :mod:`link` (or :mod:`linkmore`); fragments go
  through :class:`ipfrag.Defragmenter`.
- DNS over UDP and TCP port 53 (either side; 5353 mDNS / 5355 LLMNR are not
  DNS).
- TCP (ClientHello on any port, DNS over TCP, ``connect`` for each SYN):
  :class:`tcpflows.TcpFlows`. The first bytes of a client stream are scanned
  for a ClientHello record (also after STARTTLS, HTTP CONNECT, SOCKS); after
  a hello, later records are followed (CCS, a second hello after
  HelloRetryRequest) until something else arrives. A hello that never
  completes gives ``tls_incomplete`` on FIN/RST/expiry/eviction/finish().
- QUIC: UDP datagrams with the long-header bit -> :class:`quic.QuicTracker`.

Hot path: ~90% of packets are bulk TCP data of flows not tracked; they cost a
tuple, one dict lookup and two byte compares (or, in :meth:`Engine.skip_raw`,
a few byte compares on the raw frame).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from egresswatch.decode import link, linkmore
from egresswatch.decode.ipfrag import Defragmenter
from egresswatch.decode.observe import add_dns, hello_observation
from egresswatch.decode.tcpflows import MAX_BUFFERED, TcpFlows
from egresswatch.decode.tls import ClientHello
from egresswatch.decode.wire import Fragment
from egresswatch.model import QUIC_SNI, TLS_INCOMPLETE, Frame, IPPacket, Observation

try:  # engineer C's module; the engine works without it
    from egresswatch.decode.quic import QuicTracker
except ImportError:  # pragma: no cover
    QuicTracker = None  # type: ignore[assignment,misc]

__all__ = ["Engine"]

_SWEEP = 1.0  # seconds of frame time between expiry sweeps


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
        self.tcp = TcpFlows(self.counters, max_flows, flow_timeout, max_buffered)
        self._tcp = self.tcp.packet
        self.defrag = Defragmenter()
        self.quic: Any = QuicTracker() if (quic and QuicTracker is not None) else None
        self._decode = link.decode
        self._next_sweep = float("-inf")
        self._last_ts = 0.0
        self._last_index = 0
        self._frames = 0
        self._flow_dict = self.tcp.flows._d  # hot path membership test (read only)
        self._raw_active = self.tcp.raw_active  # raw keys of the flows still looked at

    # -- public ---------------------------------------------------------------

    @property
    def buffered_bytes(self) -> int:
        """Bytes held by all tracked TCP flows (bounded by ``max_buffered``)."""
        return self.tcp.held

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
        self.tcp.finish(ts, idx, out)
        if self.quic is not None:
            for p in self.quic.finish():
                hello: ClientHello | None = p.hello
                src, sport, dst, dport = p.flow
                note = f"QUIC Initial CRYPTO data incomplete ({p.received} bytes)"
                out.append(
                    hello_observation(
                        TLS_INCOMPLETE, "udp", ts, idx, src, sport, dst, dport, hello, note=note
                    )
                )
                self.counters["tls_incomplete"] += 1
        self._sync_counters()
        return out

    # -- UDP (TCP: tcpflows) ------------------------------------------------------

    def _udp(self, ts: float, idx: int, pkt: IPPacket, out: list[Observation]) -> None:
        payload = pkt.payload
        if pkt.dport == 53 or pkt.sport == 53:
            if pkt.truncated:
                self.counters["truncated"] += 1
            add_dns(ts, idx, pkt, payload, self.counters, out)
        elif payload and payload[0] & 0x80 and self.quic is not None:
            for hello, version in self.quic.feed(ts, (pkt.src, pkt.sport, pkt.dst, pkt.dport), payload):
                out.append(
                    hello_observation(
                        QUIC_SNI, "udp", ts, idx, pkt.src, pkt.sport, pkt.dst, pkt.dport, hello, version
                    )
                )

    # -- housekeeping -----------------------------------------------------------

    def _sweep(self, ts: float, idx: int, out: list[Observation]) -> None:
        self._next_sweep = ts + _SWEEP
        self.tcp.expire(ts, idx, out)
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
        c["flows_tracked"] = len(self.tcp.flows)
        c["tcp_bytes_buffered"] = self.tcp.held
