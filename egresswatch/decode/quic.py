"""QUIC client Initial packets -> TLS ClientHello (RFC 9000, 9001, 9369).

Pure and stateful per connection, no I/O and no clock: the ``ts`` argument of
:meth:`QuicTracker.feed` (the frame time) is the only time used.

- Long-header packets, coalesced in one datagram (Initial + 0-RTT + Handshake,
  trailing padding). Versions: v1, v2 (RFC 9369: own salt, ``quicv2`` labels,
  rotated packet types) and drafts 23-34. Google QUIC, version negotiation and
  short headers are ignored.
- Keys come from the client's original DCID; header protection is removed with
  AES-ECB, the payload opened with AES-128-GCM. Server Initials would fail with
  client keys: the ones answering a known client (DCID = the client's SCID) are
  skipped without any crypto, others fail authentication and are counted.
- CRYPTO frames are reassembled per (flow, original DCID) across packets, out
  of order, duplicated or overlapping (:mod:`quic_stream`), with caps on
  connections, bytes and idle time. A complete handshake message of type ClientHello is reported once; the
  hello re-sent after a Retry (new DCID, same 4-tuple, same hello) is not.
- Nothing raises out of :meth:`QuicTracker.feed`; problems are counted in
  ``counters`` (keys ``quic_*``).
"""

from __future__ import annotations

import logging
from collections import Counter, OrderedDict

from egresswatch.decode.quic_crypto import (
    DRAFT29,
    V1,
    V2,
    VERSIONS,
    Keys,
    Version,
    client_keys,
    crypto_frames,
    decode_packet_number,
    encode_varint,
    open_packet,
    read_varint,
    seal_client_initial,
)
from egresswatch.decode.quic_stream import (
    Conn,
    Flow,
    QuicPending,
    add_crypto,
    client_hellos,
    held,
    pending,
)
from egresswatch.decode.tls import ClientHello

__all__ = [
    "DRAFT29",
    "V1",
    "V2",
    "VERSIONS",
    "QuicTracker",
    "Version",
    "client_keys",
    "decode_packet_number",
    "encode_varint",
    "seal_client_initial",
]

log = logging.getLogger(__name__)


class QuicTracker:
    """Feeds UDP datagrams, returns ClientHellos of client Initials as they complete."""

    def __init__(
        self,
        max_conns: int = 4096,
        max_crypto: int = 65536,
        idle_timeout: float = 120.0,
        max_keys: int = 1024,
        max_total_bytes: int = 32 << 20,
    ) -> None:
        self.counters: Counter[str] = Counter()
        self.max_conns = max_conns
        self.max_crypto = max_crypto
        self.idle_timeout = idle_timeout
        self.max_keys = max_keys
        self.max_total_bytes = max_total_bytes  # CRYPTO bytes held over all connections
        self._held = 0
        self._conns: OrderedDict[tuple[Flow, bytes], Conn] = OrderedDict()
        self._by_flow: dict[Flow, list[bytes]] = {}  # client flow -> original DCIDs
        self._server_cids: OrderedDict[tuple[Flow, bytes], float] = OrderedDict()
        self._reported: OrderedDict[Flow, list[ClientHello]] = OrderedDict()
        self._keys: OrderedDict[tuple[int, bytes], Keys] = OrderedDict()
        self._frame = 0
        self._incomplete: list[QuicPending] = []

    # -- public -------------------------------------------------------------

    def feed(self, ts: float, flow: Flow, payload: bytes, frame: int = 0) -> list[tuple[ClientHello, int]]:
        """One UDP datagram (``flow`` = src, sport, dst, dport) at frame time ``ts``:
        the (ClientHello, QUIC version) pairs whose hello this datagram completed."""
        out: list[tuple[ClientHello, int]] = []
        self._frame = frame
        try:
            self._expire(ts)
            self._datagram(ts, flow, bytes(payload), out)
        except Exception:  # a bug here must not stop the engine
            log.debug("quic: unexpected error", exc_info=True)
            self.counters["quic_errors"] += 1
        return out

    def finish(self) -> list[QuicPending]:
        """End of input: the incomplete hellos of connections dropped earlier
        (see :meth:`take_incomplete`) and of those still open; clears all state."""
        res = self.take_incomplete()
        res += [p for c in self._conns.values() if (p := pending(c)) is not None]
        self._conns.clear()
        self._by_flow.clear()
        self._held = 0
        return res

    def take_incomplete(self) -> list[QuicPending]:
        """Incomplete hellos of connections expired or evicted since the last call."""
        res, self._incomplete = self._incomplete, []
        return res

    # -- datagrams and packets ----------------------------------------------

    def _datagram(self, ts: float, flow: Flow, data: bytes, out: list[tuple[ClientHello, int]]) -> None:
        pos, n = 0, len(data)
        while pos + 7 <= n:
            first = data[pos]
            if not first & 0x80:
                break  # short header or zero padding after the packets
            number = int.from_bytes(data[pos + 1 : pos + 5], "big")
            version = VERSIONS.get(number)
            if version is None:
                self.counters["quic_version_negotiation" if number == 0 else "quic_unknown_version"] += 1
                break
            p = pos + 5
            dcil = data[p]
            dcid = data[p + 1 : p + 1 + dcil]
            p += 1 + dcil
            if dcil > 20 or p >= n or data[p] > 20:
                self.counters["quic_bad_header"] += 1
                break
            scid = data[p + 1 : p + 1 + data[p]]
            p += 1 + data[p]
            ptype = (first >> 4) & 3
            if ptype == version.retry_type:
                self.counters["quic_retry"] += 1
                break
            try:
                if ptype == version.initial_type:
                    toklen, p = read_varint(data, p)
                    p += toklen
                length, p = read_varint(data, p)
            except IndexError:
                self.counters["quic_truncated"] += 1
                break
            end = p + length
            if end > n:
                self.counters["quic_truncated"] += 1
                break
            if ptype == version.initial_type:
                self.counters["quic_initial"] += 1
                self._initial(ts, flow, version, data[pos:end], p - pos, dcid, scid, out)
            pos = end

    def _initial(
        self,
        ts: float,
        flow: Flow,
        version: Version,
        pkt: bytes,
        pn_off: int,
        dcid: bytes,
        scid: bytes,
        out: list[tuple[ClientHello, int]],
    ) -> None:
        if (flow, dcid) in self._server_cids:
            self.counters["quic_server_initial_skipped"] += 1
            return
        conn = self._conns.get((flow, dcid))
        if conn is not None and conn.version is version:
            opened = open_packet(self._key(version, dcid), pkt, pn_off, conn.largest_pn)
        else:
            conn = None
            opened = open_packet(self._key(version, dcid), pkt, pn_off, -1)
            if opened is not None:
                conn = self._new_conn(ts, flow, version, dcid)
            else:  # a later client Initial may carry the server's CID: try the original DCIDs
                for odcid in reversed(self._by_flow.get(flow, [])[-4:]):
                    cand = self._conns.get((flow, odcid))
                    if cand is not None and cand.version is version:
                        opened = open_packet(self._key(version, odcid), pkt, pn_off, cand.largest_pn)
                        if opened is not None:
                            conn = cand
                            break
        if opened is None or conn is None:
            self.counters["quic_auth_failed"] += 1
            return
        self.counters["quic_decrypted"] += 1
        pn, plain = opened
        conn.largest_pn = max(conn.largest_pn, pn)
        conn.last_ts = ts
        self._conns.move_to_end((flow, conn.dcid))
        reverse = (flow[2], flow[3], flow[0], flow[1])
        self._server_cids[(reverse, bytes(scid))] = ts
        self._server_cids.move_to_end((reverse, bytes(scid)))
        while len(self._server_cids) > 2 * self.max_conns:
            self._server_cids.popitem(last=False)
        frames = crypto_frames(plain, self.counters)
        if frames and not conn.dead:
            before = held(conn)
            for off, chunk in frames:
                add_crypto(conn, off, chunk, self.max_crypto, self.counters)
            conn.data_ts, conn.data_frame = ts, self._frame
            self._messages(conn, out)
            self._held += held(conn) - before
            while self._held > self.max_total_bytes and len(self._conns) > 1:
                oldest = next(iter(self._conns.values()))
                if oldest is conn:
                    break
                self._conns.popitem(last=False)
                self._drop(oldest)
                self.counters["quic_conns_evicted"] += 1

    # -- state ----------------------------------------------------------------

    def _key(self, version: Version, dcid: bytes) -> Keys:
        k = (version.number, dcid)
        keys = self._keys.get(k)
        if keys is None:
            keys = self._keys[k] = Keys(version, dcid)
            self.counters["quic_key_derivations"] += 1
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(k)
        return keys

    def _new_conn(self, ts: float, flow: Flow, version: Version, dcid: bytes) -> Conn:
        old = self._conns.pop((flow, dcid), None)
        if old is not None:  # same DCID under another version
            self._drop(old)
        conn = Conn(version=version, flow=flow, dcid=bytes(dcid), last_ts=ts)
        self._conns[(flow, conn.dcid)] = conn
        self._by_flow.setdefault(flow, []).append(conn.dcid)
        self.counters["quic_connections"] += 1
        while len(self._conns) > self.max_conns:
            self._drop(self._conns.popitem(last=False)[1])
            self.counters["quic_conns_evicted"] += 1
        return conn

    def _drop(self, conn: Conn) -> None:
        """Forget a connection already removed from ``_conns``."""
        self._held -= held(conn)
        incomplete = pending(conn)
        if incomplete is not None:
            if len(self._incomplete) < 1024:
                self._incomplete.append(incomplete)
            else:
                self.counters["quic_incomplete_dropped"] += 1
        dcids = self._by_flow.get(conn.flow)
        if dcids is not None:
            if conn.dcid in dcids:
                dcids.remove(conn.dcid)
            if not dcids:
                del self._by_flow[conn.flow]

    def _expire(self, ts: float) -> None:
        limit = ts - self.idle_timeout
        while self._conns:
            conn = next(iter(self._conns.values()))
            if conn.last_ts >= limit:
                break
            self._conns.popitem(last=False)
            self._drop(conn)
            self.counters["quic_conns_expired"] += 1
        while self._server_cids and next(iter(self._server_cids.values())) < limit:
            self._server_cids.popitem(last=False)

    def _messages(self, conn: Conn, out: list[tuple[ClientHello, int]]) -> None:
        for hello in client_hellos(conn, self.max_crypto, self.counters):
            four = conn.flow
            seen = self._reported.get(four)
            if seen is not None and hello in seen:
                self.counters["quic_hello_resent"] += 1  # after a Retry: same hello, new DCID
                continue
            seen = self._reported.setdefault(four, [])
            seen.append(hello)
            del seen[:-16]
            self._reported.move_to_end(four)
            while len(self._reported) > self.max_conns:
                self._reported.popitem(last=False)
            self.counters["quic_client_hello"] += 1
            out.append((hello, conn.version.number))
