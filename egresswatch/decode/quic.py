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
  of order, duplicated or overlapping, with caps on connections, bytes and idle
  time. A complete handshake message of type ClientHello is reported once; the
  hello re-sent after a Retry (new DCID, same 4-tuple, same hello) is not.
- Nothing raises out of :meth:`QuicTracker.feed`; problems are counted in
  ``counters`` (keys ``quic_*``).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from egresswatch.decode.tls import ClientHello, handshake_length, parse_client_hello, partial_sni

__all__ = ["QuicTracker", "QuicPending", "Version", "VERSIONS", "client_keys", "seal_client_initial"]

log = logging.getLogger(__name__)

Flow = tuple[str, int, str, int]  # src, sport, dst, dport of the datagram

V1 = 0x00000001
V2 = 0x6B3343CF
DRAFT29 = 0xFF00001D

_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # drafts 29-32
_SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")  # drafts 23-28


@dataclass(frozen=True, slots=True)
class Version:
    """What differs between QUIC versions for Initial packets."""

    number: int
    salt: bytes
    label_prefix: str  # "quic " or "quicv2 "
    initial_type: int  # long-header packet type bits of Initial
    retry_type: int


def _v1_like(number: int, salt: bytes) -> Version:
    return Version(number, salt, "quic ", 0, 3)


VERSIONS: dict[int, Version] = {
    V1: _v1_like(V1, _SALT_V1),
    V2: Version(V2, _SALT_V2, "quicv2 ", 1, 0),
    **{0xFF000000 + d: _v1_like(0xFF000000 + d, _SALT_D23) for d in range(23, 29)},
    **{0xFF000000 + d: _v1_like(0xFF000000 + d, _SALT_D29) for d in range(29, 33)},
    **{0xFF000000 + d: _v1_like(0xFF000000 + d, _SALT_V1) for d in range(33, 35)},
}

_NONZERO = re.compile(rb"[^\x00]")


def _expand_label(secret: bytes, label: str, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, length <= 32."""
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]


def client_keys(version: Version, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) of the client's Initial packets for this original DCID."""
    initial = hmac.new(version.salt, dcid, hashlib.sha256).digest()  # HKDF-Extract
    secret = _expand_label(initial, "client in", 32)
    p = version.label_prefix
    return (
        _expand_label(secret, p + "key", 16),
        _expand_label(secret, p + "iv", 12),
        _expand_label(secret, p + "hp", 16),
    )


class _Keys:
    __slots__ = ("aead", "iv", "hp")

    def __init__(self, version: Version, dcid: bytes) -> None:
        key, iv, hp = client_keys(version, dcid)
        self.aead = AESGCM(key)
        self.iv = int.from_bytes(iv, "big")
        self.hp: Any = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # stateless per block


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next index); raises IndexError on truncated input."""
    b = buf[i]
    n = 1 << (b >> 6)
    if i + n > len(buf):
        raise IndexError("truncated varint")
    return int.from_bytes(buf[i : i + n], "big") & ((1 << (8 * n - 2)) - 1), i + n


def encode_varint(v: int) -> bytes:
    for n, top in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if v < 1 << (8 * n - 2):
            return (v | (top << (8 * n - 8))).to_bytes(n, "big")
    raise ValueError("varint too large")


def decode_packet_number(largest: int, truncated: int, nbits: int) -> int:
    """RFC 9000 Appendix A.3."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def _open(keys: _Keys, pkt: bytes, pn_off: int, largest: int) -> tuple[int, bytes] | None:
    """Remove header protection and decrypt; None when authentication fails."""
    if pn_off + 20 > len(pkt):
        return None
    mask = keys.hp.update(pkt[pn_off + 4 : pn_off + 20])
    first = pkt[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    raw = bytes(b ^ m for b, m in zip(pkt[pn_off : pn_off + pn_len], mask[1 : 1 + pn_len], strict=True))
    pn = decode_packet_number(largest, int.from_bytes(raw, "big"), 8 * pn_len)
    header = bytes([first]) + pkt[1:pn_off] + raw
    nonce = (keys.iv ^ pn).to_bytes(12, "big")
    try:
        return pn, keys.aead.decrypt(nonce, pkt[pn_off + pn_len :], header)
    except (InvalidTag, ValueError):
        return None


def _crypto_frames(plain: bytes, counters: Counter[str]) -> list[tuple[int, bytes]]:
    """CRYPTO (offset, data) of a decrypted Initial payload; parsing stops at a
    frame type not allowed in an Initial or at a malformed frame."""
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(plain)
    try:
        while i < n:
            t = plain[i]
            if t == 0x00:  # PADDING: jump over the run of zeros
                m = _NONZERO.search(plain, i)
                i = m.start() if m else n
            elif t == 0x01:  # PING
                i += 1
            elif t in (0x02, 0x03):  # ACK, ACK with ECN counts
                _, i = _varint(plain, i + 1)  # largest acknowledged
                _, i = _varint(plain, i)  # delay
                count, i = _varint(plain, i)
                _, i = _varint(plain, i)  # first range
                if count > n:
                    raise IndexError("ack range count")
                for _ in range(2 * count + (3 if t == 0x03 else 0)):
                    _, i = _varint(plain, i)
            elif t == 0x06:  # CRYPTO
                off, i = _varint(plain, i + 1)
                ln, i = _varint(plain, i)
                if i + ln > n:
                    raise IndexError("crypto frame past packet end")
                out.append((off, plain[i : i + ln]))
                i += ln
            elif t == 0x1C:  # CONNECTION_CLOSE
                _, i = _varint(plain, i + 1)
                _, i = _varint(plain, i)
                ln, i = _varint(plain, i)
                i += ln
            else:
                counters["quic_frame_unexpected"] += 1
                break
    except IndexError:
        counters["quic_frame_malformed"] += 1
    return out


def _held(conn: _Conn) -> int:
    return len(conn.have) + conn.pending_bytes


@dataclass(frozen=True, slots=True)
class QuicPending:
    """A client connection whose ClientHello never completed (from ``finish``)."""

    ts: float  # time of the last datagram that added CRYPTO data
    frame: int  # its frame number (as passed to feed)
    flow: Flow
    version: int
    received: int  # contiguous CRYPTO bytes from offset 0
    needed: int | None  # length of the hello when its header was seen
    hello: ClientHello | None  # best-effort parse of the bytes received (partial_sni)


def _pending(c: _Conn) -> QuicPending | None:
    if c.hellos or c.base or c.dead or not (c.have or c.pending):
        return None
    hello = partial_sni(bytes(c.have))
    return QuicPending(c.data_ts, c.data_frame, c.flow, c.version.number, len(c.have), c.needed, hello)


@dataclass(slots=True)
class _Conn:
    version: Version
    flow: Flow
    dcid: bytes
    last_ts: float
    largest_pn: int = -1
    base: int = 0  # CRYPTO stream offset of have[0]
    have: bytearray = field(default_factory=bytearray)
    pending: dict[int, bytes] = field(default_factory=dict)
    pending_bytes: int = 0
    hellos: int = 0
    data_ts: float = 0.0
    data_frame: int = 0
    needed: int | None = None
    dead: bool = False


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
        self._conns: OrderedDict[tuple[Flow, bytes], _Conn] = OrderedDict()
        self._by_flow: dict[Flow, list[bytes]] = {}  # client flow -> original DCIDs
        self._server_cids: OrderedDict[tuple[Flow, bytes], float] = OrderedDict()
        self._reported: OrderedDict[Flow, list[ClientHello]] = OrderedDict()
        self._keys: OrderedDict[tuple[int, bytes], _Keys] = OrderedDict()
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
        res += [p for c in self._conns.values() if (p := _pending(c)) is not None]
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
                    toklen, p = _varint(data, p)
                    p += toklen
                length, p = _varint(data, p)
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
            opened = _open(self._key(version, dcid), pkt, pn_off, conn.largest_pn)
        else:
            conn = None
            opened = _open(self._key(version, dcid), pkt, pn_off, -1)
            if opened is not None:
                conn = self._new_conn(ts, flow, version, dcid)
            else:  # a later client Initial may carry the server's CID: try the original DCIDs
                for odcid in reversed(self._by_flow.get(flow, [])[-4:]):
                    cand = self._conns.get((flow, odcid))
                    if cand is not None and cand.version is version:
                        opened = _open(self._key(version, odcid), pkt, pn_off, cand.largest_pn)
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
        frames = _crypto_frames(plain, self.counters)
        if frames and not conn.dead:
            before = _held(conn)
            for off, chunk in frames:
                self._add_crypto(conn, off, chunk)
            conn.data_ts, conn.data_frame = ts, self._frame
            self._messages(conn, out)
            self._held += _held(conn) - before
            while self._held > self.max_total_bytes and len(self._conns) > 1:
                oldest = next(iter(self._conns.values()))
                if oldest is conn:
                    break
                self._conns.popitem(last=False)
                self._drop(oldest)
                self.counters["quic_conns_evicted"] += 1

    # -- state ----------------------------------------------------------------

    def _key(self, version: Version, dcid: bytes) -> _Keys:
        k = (version.number, dcid)
        keys = self._keys.get(k)
        if keys is None:
            keys = self._keys[k] = _Keys(version, dcid)
            self.counters["quic_key_derivations"] += 1
            if len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        else:
            self._keys.move_to_end(k)
        return keys

    def _new_conn(self, ts: float, flow: Flow, version: Version, dcid: bytes) -> _Conn:
        old = self._conns.pop((flow, dcid), None)
        if old is not None:  # same DCID under another version
            self._drop(old)
        conn = _Conn(version=version, flow=flow, dcid=bytes(dcid), last_ts=ts)
        self._conns[(flow, conn.dcid)] = conn
        self._by_flow.setdefault(flow, []).append(conn.dcid)
        self.counters["quic_connections"] += 1
        while len(self._conns) > self.max_conns:
            self._drop(self._conns.popitem(last=False)[1])
            self.counters["quic_conns_evicted"] += 1
        return conn

    def _drop(self, conn: _Conn) -> None:
        """Forget a connection already removed from ``_conns``."""
        self._held -= _held(conn)
        pending = _pending(conn)
        if pending is not None:
            if len(self._incomplete) < 1024:
                self._incomplete.append(pending)
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

    # -- CRYPTO stream ----------------------------------------------------------

    def _add_crypto(self, conn: _Conn, off: int, chunk: bytes) -> None:
        end = off + len(chunk)
        if end > self.max_crypto:
            self.counters["quic_crypto_cap"] += 1
            return
        top = conn.base + len(conn.have)
        if end <= top:
            return  # already have all of it
        if off > top:
            old = conn.pending.get(off)
            if old is None or len(old) < len(chunk):
                if conn.pending_bytes + len(chunk) > self.max_crypto:
                    self.counters["quic_crypto_cap"] += 1
                    return
                conn.pending[off] = chunk
                conn.pending_bytes += len(chunk) - (len(old) if old else 0)
            return
        conn.have += chunk[top - off :]
        progress = True
        while progress and conn.pending:
            progress = False
            top = conn.base + len(conn.have)
            for poff in sorted(conn.pending):
                if poff > top:
                    break
                data = conn.pending.pop(poff)
                conn.pending_bytes -= len(data)
                if poff + len(data) > top:
                    conn.have += data[top - poff :]
                    top = conn.base + len(conn.have)
                    progress = True

    def _messages(self, conn: _Conn, out: list[tuple[ClientHello, int]]) -> None:
        while True:
            length = handshake_length(bytes(conn.have[:4]))
            if length is None:
                return
            conn.needed = length
            if conn.base + length > self.max_crypto:
                self.counters["quic_hello_too_large"] += 1
                conn.dead = True
                return
            if len(conn.have) < length:
                return
            msg = bytes(conn.have[:length])
            del conn.have[:length]
            conn.base += length
            conn.needed = None
            if msg[0] != 0x01:
                self.counters["quic_not_client_hello"] += 1
                conn.dead = True
                return
            hello = parse_client_hello(msg)
            if hello is None:
                self.counters["quic_bad_client_hello"] += 1
                continue
            conn.hellos += 1
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


def seal_client_initial(
    version: int,
    dcid: bytes,
    scid: bytes,
    pn: int,
    frames: bytes,
    *,
    token: bytes = b"",
    pn_len: int = 2,
    pad_to: int = 0,
    key_dcid: bytes | None = None,
) -> bytes:
    """Build a protected client Initial packet (for tests and capture generators).

    ``frames`` is the plaintext payload; PADDING frames are appended so that
    the packet is at least ``pad_to`` bytes long and has a full sample. Keys
    come from ``key_dcid`` when given (the client's original DCID, for the
    later Initials that carry the server's chosen CID), else from ``dcid``.
    """
    v = VERSIONS[version]
    key, iv, hp = client_keys(v, dcid if key_dcid is None else key_dcid)
    header_len = 7 + len(dcid) + len(scid) + len(encode_varint(len(token))) + len(token) + 2 + pn_len
    frames += b"\x00" * max(0, 4 - pn_len - len(frames), pad_to - header_len - 16 - len(frames))
    first = 0xC0 | (v.initial_type << 4) | (pn_len - 1)
    header = (
        bytes([first])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + encode_varint(len(token))
        + token
        + (0x4000 | (pn_len + len(frames) + 16)).to_bytes(2, "big")
    )
    pn_off = len(header)
    header += (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, frames, header)
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(ct[4 - pn_len : 20 - pn_len])
    h = bytearray(header)
    h[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        h[pn_off + i] ^= mask[1 + i]
    return bytes(h) + ct
