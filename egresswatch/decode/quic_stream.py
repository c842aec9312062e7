"""One QUIC client connection's CRYPTO stream -> its ClientHello messages.

CRYPTO frames arrive out of order, duplicated or overlapping, across Initial
packets: :func:`add_crypto` puts them in stream order (bytes beyond a gap are
held, with a cap), :func:`client_hellos` takes the complete handshake
messages off the front and parses the ClientHellos. :class:`QuicPending`
describes a hello that never completed. The connections themselves (keys,
packets, caps over all of them) are :mod:`quic`'s. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from egresswatch.decode.quic_crypto import Version
from egresswatch.decode.tls import ClientHello, handshake_length, parse_client_hello, partial_sni

__all__ = ["Conn", "Flow", "QuicPending", "add_crypto", "client_hellos", "held", "pending"]

Flow = tuple[str, int, str, int]  # src, sport, dst, dport of the datagram


def held(conn: Conn) -> int:
    """CRYPTO bytes buffered for ``conn`` (in order and beyond a gap)."""
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


def pending(c: Conn) -> QuicPending | None:
    """The hello ``c`` never completed, or None (one completed, or no data)."""
    if c.hellos or c.base or c.dead or not (c.have or c.pending):
        return None
    hello = partial_sni(bytes(c.have))
    return QuicPending(c.data_ts, c.data_frame, c.flow, c.version.number, len(c.have), c.needed, hello)


@dataclass(slots=True)
class Conn:
    """One client connection (flow, original DCID) and its CRYPTO stream."""

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


def add_crypto(conn: Conn, off: int, chunk: bytes, max_crypto: int, counters: Counter[str]) -> None:
    """Add CRYPTO bytes at stream offset ``off``: in order, or held until the gap fills."""
    end = off + len(chunk)
    if end > max_crypto:
        counters["quic_crypto_cap"] += 1
        return
    top = conn.base + len(conn.have)
    if end <= top:
        return  # already have all of it
    if off > top:
        old = conn.pending.get(off)
        if old is None or len(old) < len(chunk):
            if conn.pending_bytes + len(chunk) > max_crypto:
                counters["quic_crypto_cap"] += 1
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


def client_hellos(conn: Conn, max_crypto: int, counters: Counter[str]) -> list[ClientHello]:
    """The ClientHellos completed at the front of the stream, taken off it.

    A message larger than ``max_crypto`` or not a ClientHello ends the
    connection's stream (``dead``); a hello that does not parse is counted."""
    out: list[ClientHello] = []
    while True:
        length = handshake_length(bytes(conn.have[:4]))
        if length is None:
            return out
        conn.needed = length
        if conn.base + length > max_crypto:
            counters["quic_hello_too_large"] += 1
            conn.dead = True
            return out
        if len(conn.have) < length:
            return out
        msg = bytes(conn.have[:length])
        del conn.have[:length]
        conn.base += length
        conn.needed = None
        if msg[0] != 0x01:
            counters["quic_not_client_hello"] += 1
            conn.dead = True
            return out
        hello = parse_client_hello(msg)
        if hello is None:
            counters["quic_bad_client_hello"] += 1
            continue
        conn.hellos += 1
        out.append(hello)
