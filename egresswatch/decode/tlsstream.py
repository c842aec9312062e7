"""TLS ClientHello in a client's TCP stream: the record layer and the scanner.

- :func:`scan_records` is the TCP record layer: given the first contiguous
  bytes of a client stream, it collects the handshake bytes of consecutive
  TLS records (content type 22, version 0x03xx), so a hello split across
  several records, and records split across segments, reassemble.
- :class:`HelloScanner` finds the hellos in the first bytes of a client TCP
  stream (also after STARTTLS / CONNECT / SOCKS, and the second hello after a
  HelloRetryRequest), keeping only the bytes of a hello in progress.

The hello itself is parsed by :mod:`tls`. Pure (no I/O, no clock), struct-free
slicing; nothing here raises on bad input: malformed input gives ``BAD``.
"""

from __future__ import annotations

from egresswatch.decode.tls import ClientHello, handshake_length, parse_client_hello, partial_sni

__all__ = [
    "scan_records",
    "hello_from_stream",
    "find_record_start",
    "looks_like_hello_start",
    "HelloScanner",
    "NEED_MORE",
    "BAD",
    "DONE",
]

# Results of the record layer
NEED_MORE = "need_more"
BAD = "bad"
DONE = "done"

# A ClientHello is never larger than this (2^24 is the format limit; real ones
# are < 3 KB, post-quantum ones ~2 KB). Bigger claims are treated as garbage.
MAX_HELLO = 64 * 1024


def looks_like_hello_start(buf: bytes) -> bool:
    """True when ``buf`` plausibly begins a TLS handshake record carrying a
    ClientHello: 0x16 0x03 0x00-0x04, and (when present) handshake type 1."""
    n = len(buf)
    if n < 3 or buf[0] != 0x16 or buf[1] != 3 or buf[2] > 4:
        return False
    if n >= 5:
        rlen = (buf[3] << 8) | buf[4]
        if rlen == 0 or rlen > 18432:
            return False
    return n < 6 or buf[5] == 1


def find_record_start(buf: bytes, start: int = 0) -> int:
    """Offset of the first position >= start where a ClientHello record plausibly
    starts (see :func:`looks_like_hello_start`), or -1."""
    find = buf.find
    pos = find(b"\x16\x03", start)
    while pos >= 0:
        if looks_like_hello_start(buf[pos : pos + 6]):
            return pos
        pos = find(b"\x16\x03", pos + 1)
    return -1


def _missing(hs: bytearray) -> int:
    """Handshake bytes still missing (at least 1) for the message begun in ``hs``."""
    total = handshake_length(hs)
    return max(1, (total if total is not None else 4) - len(hs))


def scan_records(stream: bytes) -> tuple[str, bytes, int]:
    """Collect handshake bytes from the TLS records at the start of ``stream``.

    Returns ``(DONE, message, end)`` once a whole handshake message is available
    (``message`` is exactly that message, ``end`` the stream offset after the
    record that completed it); ``(NEED_MORE, prefix, need)`` when the stream
    ends before it (``prefix`` = handshake bytes so far, ``need`` = the stream
    length below which it cannot complete, so callers need not scan again
    before); ``(BAD, b"", 0)`` when the bytes are not TLS handshake records
    starting a ClientHello.
    """
    hs = bytearray()
    off = 0
    n = len(stream)
    while True:
        if off + 5 > n:
            head = stream[off:n]
            if head[:1] not in (b"", b"\x16") or head[1:2] not in (b"", b"\x03") or head[2:3] > b"\x04":
                return BAD, b"", 0
            return NEED_MORE, bytes(hs), off + 5 + _missing(hs)
        if stream[off] != 0x16 or stream[off + 1] != 3 or stream[off + 2] > 4:
            return BAD, b"", 0
        rlen = (stream[off + 3] << 8) | stream[off + 4]
        if rlen == 0 or rlen > 18432:
            return BAD, b"", 0
        body = stream[off + 5 : off + 5 + rlen]
        if not hs and body and body[0] != 1:
            return BAD, b"", 0
        hs += body
        total = handshake_length(hs)
        if total is not None:
            if total > MAX_HELLO:
                return BAD, b"", 0
            if len(hs) >= total:
                if len(body) < rlen:  # the record itself is not complete yet
                    return NEED_MORE, bytes(hs[:total]), off + 5 + rlen
                return DONE, bytes(hs[:total]), off + 5 + rlen
        if len(body) < rlen:
            return NEED_MORE, bytes(hs), max(off + 5 + rlen, n + _missing(hs))
        off += 5 + rlen


def hello_from_stream(stream: bytes) -> tuple[str, ClientHello | None, bytes, int]:
    """Record layer + parse: ``(DONE, hello or None if malformed, message, end)``,
    ``(NEED_MORE, None, prefix, need)`` or ``(BAD, None, b"", 0)`` (see :func:`scan_records`)."""
    state, data, end = scan_records(stream)
    if state != DONE:
        return state, None, data, end
    return DONE, parse_client_hello(data), data, end


class HelloScanner:
    """Finds ClientHellos in the first bytes of one client TCP stream.

    Feed the stream's bytes in order (after TCP reassembly). The first
    ClientHello record is searched anywhere in the bytes (so hellos after
    STARTTLS, HTTP CONNECT or SOCKS are found); after a hello only record
    boundaries are followed: ChangeCipherSpec is skipped and another hello
    (after HelloRetryRequest) is reported; anything else ends the search
    (``done``). Only the bytes of a hello in progress are kept.
    """

    __slots__ = ("buf", "scan_from", "hello_at", "post", "need", "done", "malformed")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.scan_from = 0  # where the search continues (in buf)
        self.hello_at = -1  # start in buf of the hello being reassembled
        self.post = False  # a hello was seen: follow record boundaries only
        self.need = 0  # buf bytes from hello_at below which the hello cannot be complete
        self.done = False
        self.malformed = 0  # complete hello records that did not parse

    @property
    def in_hello(self) -> bool:
        """A hello has started and is not complete."""
        return self.hello_at >= 0 and not self.done

    def feed(self, data: bytes) -> list[ClientHello]:
        if self.done:
            return []
        buf = self.buf
        buf += data
        out: list[ClientHello] = []
        while self._step(buf, out):
            pass
        self._compact()
        return out

    def _step(self, buf: bytearray, out: list[ClientHello]) -> bool:
        """One search or parse step; False when more bytes are needed."""
        if self.hello_at < 0:
            if self.post:  # after a hello: skip ChangeCipherSpec, accept only another hello record
                pos = self.scan_from
                while len(buf) >= pos + 5 and buf[pos] == 0x14:
                    pos += 5 + ((buf[pos + 3] << 8) | buf[pos + 4])
                self.scan_from = pos
                if len(buf) < pos + 6:
                    return False
                if not looks_like_hello_start(bytes(buf[pos : pos + 6])):
                    self.close()
                    return False
            else:
                pos = find_record_start(bytes(buf), self.scan_from)
                if pos < 0:
                    self.scan_from = max(self.scan_from, len(buf) - 5)
                    return False
            self.hello_at = pos
            self.need = 0
        if len(buf) - self.hello_at < self.need:
            return False  # cannot be complete yet: do not re-parse (tiny segments or records)
        state, hello, _msg, end = hello_from_stream(bytes(buf[self.hello_at :]))
        if state == NEED_MORE:
            self.need = end
            return False
        if state == DONE and hello is not None:
            out.append(hello)
            self.scan_from = self.hello_at + end
            self.post = True
        else:
            if state == DONE:
                self.malformed += 1
            if self.post:
                self.close()
                return False
            self.scan_from = self.hello_at + 1
        self.hello_at = -1
        return True

    def _compact(self) -> None:
        """Drop bytes before the hello in progress / the search position."""
        cut = min(self.hello_at if self.hello_at >= 0 else self.scan_from, len(self.buf))
        if cut > 0:
            del self.buf[:cut]
            self.scan_from = max(0, self.scan_from - cut)
            if self.hello_at >= 0:
                self.hello_at -= cut

    def partial(self) -> ClientHello | None:
        """Best-effort fields of the hello in progress (None if none or unreadable)."""
        if not self.in_hello:
            return None
        state, prefix, _ = scan_records(bytes(self.buf[self.hello_at :]))
        return partial_sni(prefix) if state == NEED_MORE else None

    def close(self) -> None:
        self.done = True
        self.buf = bytearray()
        self.hello_at = -1
