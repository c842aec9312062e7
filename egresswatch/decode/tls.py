"""TLS ClientHello parsing (pure, struct-free slicing over bytes).

Two layers:

- :func:`parse_client_hello` parses ONE handshake message (type 0x01, 3-byte
  length, body) into a :class:`ClientHello`: first ``host_name`` of
  server_name, ALPN list, ECH/ESNI offered, supported_versions. QUIC (CRYPTO
  frames) calls this directly.
- :func:`scan_records` is the TCP record layer: given the first contiguous
  bytes of a client stream, it collects the handshake bytes of consecutive
  TLS records (content type 22, version 0x03xx), so a hello split across
  several records, and records split across segments, reassemble.
- :class:`HelloScanner` finds the hellos in the first bytes of a client TCP
  stream (also after STARTTLS / CONNECT / SOCKS, and the second hello after a
  HelloRetryRequest), keeping only the bytes of a hello in progress.

Nothing here raises on bad input: malformed input gives None or ``BAD``.
"""

from __future__ import annotations

from dataclasses import dataclass

from egresswatch.decode.dns import presentation

__all__ = [
    "ClientHello",
    "parse_client_hello",
    "handshake_length",
    "scan_records",
    "hello_from_stream",
    "partial_sni",
    "find_record_start",
    "looks_like_hello_start",
    "HelloScanner",
    "NEED_MORE",
    "BAD",
    "DONE",
]

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_ECH = 0xFE0D
EXT_ESNI_DRAFT = 0xFFCE

# Results of the record layer
NEED_MORE = "need_more"
BAD = "bad"
DONE = "done"

# A ClientHello is never larger than this (2^24 is the format limit; real ones
# are < 3 KB, post-quantum ones ~2 KB). Bigger claims are treated as garbage.
MAX_HELLO = 64 * 1024


@dataclass(frozen=True, slots=True)
class ClientHello:
    sni: str | None  # first host_name in server_name; None if no SNI extension
    alpn: tuple[str, ...]
    ech: bool  # encrypted_client_hello (0xfe0d, also GREASE ECH) or draft ESNI (0xffce) offered
    versions: tuple[int, ...]  # supported_versions (GREASE removed), or (legacy_version,)


def _is_grease(v: int) -> bool:
    return (v & 0x0F0F) == 0x0A0A and (v >> 8) == (v & 0xFF)


def _text(b: bytes) -> str:
    """Host names are ASCII; any other byte is written \\DDD and "\\" as "\\\\",
    the lossless form DNS names use (decode.dns.presentation)."""
    return presentation(b)


def handshake_length(buf: bytes | bytearray) -> int | None:
    """Total length (4 + body) of the handshake message starting ``buf``; None if < 4 bytes."""
    if len(buf) < 4:
        return None
    return 4 + ((buf[1] << 16) | (buf[2] << 8) | buf[3])


def _server_name(data: bytes) -> str | None:
    """First host_name of a server_name extension body; "" if none is well formed."""
    if len(data) < 2:
        return None
    end = min(len(data), 2 + ((data[0] << 8) | data[1]))
    off = 2
    while off + 3 <= end:
        ntype = data[off]
        nlen = (data[off + 1] << 8) | data[off + 2]
        off += 3
        if off + nlen > end:
            return None
        if ntype == 0:
            return _text(data[off : off + nlen])
        off += nlen
    return None


def _alpn(data: bytes) -> tuple[str, ...]:
    if len(data) < 2:
        return ()
    end = min(len(data), 2 + ((data[0] << 8) | data[1]))
    off = 2
    out: list[str] = []
    while off < end:
        n = data[off]
        off += 1
        if off + n > end:
            break
        out.append(_text(data[off : off + n]))
        off += n
    return tuple(out)


def _versions(data: bytes) -> tuple[int, ...]:
    if not data:
        return ()
    end = min(len(data), 1 + data[0])
    out: list[int] = []
    for off in range(1, end - 1, 2):
        v = (data[off] << 8) | data[off + 1]
        if not _is_grease(v):
            out.append(v)
    return tuple(out)


def _parse_body(body: bytes, partial: bool) -> ClientHello | None:
    """Parse a ClientHello body. With ``partial`` the body may be cut short:
    whatever extensions are complete are used (for incomplete-hello reports)."""
    n = len(body)
    if n < 35:
        return None
    legacy = (body[0] << 8) | body[1]
    if body[0] != 3:
        return None
    off = 34
    sid_len = body[off]
    if sid_len > 32:
        return None
    off += 1 + sid_len
    if off + 2 > n:
        return None
    cs_len = (body[off] << 8) | body[off + 1]
    if cs_len & 1:
        return None
    off += 2 + cs_len
    if off + 1 > n:
        return None
    comp_len = body[off]
    off += 1 + comp_len
    if off > n:
        return None
    sni: str | None = None
    alpn: tuple[str, ...] = ()
    ech = False
    versions: tuple[int, ...] = ()
    seen_sni = False
    if off + 2 <= n:
        ext_end = off + 2 + ((body[off] << 8) | body[off + 1])
        if ext_end > n:
            if not partial:
                return None
            ext_end = n
        off += 2
        while off + 4 <= ext_end:
            etype = (body[off] << 8) | body[off + 1]
            elen = (body[off + 2] << 8) | body[off + 3]
            off += 4
            if off + elen > ext_end:
                if partial:
                    break
                return None
            data = body[off : off + elen]
            off += elen
            if etype == EXT_SERVER_NAME:
                if not seen_sni:
                    seen_sni = True
                    sni = _server_name(data)
            elif etype == EXT_ALPN:
                alpn = _alpn(data)
            elif etype == EXT_SUPPORTED_VERSIONS:
                versions = _versions(data)
            elif etype == EXT_ECH or etype == EXT_ESNI_DRAFT:
                ech = True
    elif off != n and not partial:
        return None
    if not versions:
        versions = (legacy,)
    return ClientHello(sni=sni, alpn=alpn, ech=ech, versions=versions)


def parse_client_hello(msg: bytes) -> ClientHello | None:
    """Parse one handshake message; None unless it is a well-formed ClientHello.

    Bytes after the message (``msg`` longer than its length field) are ignored.
    """
    try:
        total = handshake_length(msg)
        if total is None or msg[0] != 1 or len(msg) < total:
            return None
        return _parse_body(bytes(msg[4:total]), partial=False)
    except (IndexError, ValueError):  # pragma: no cover - defensive; the slicing above is bounds-checked
        return None


def partial_sni(hs_prefix: bytes) -> ClientHello | None:
    """Best-effort parse of the first bytes of a ClientHello handshake message
    (used to name an incomplete hello). None if not even the fixed part is there."""
    try:
        if len(hs_prefix) < 4 or hs_prefix[0] != 1:
            return None
        total = handshake_length(hs_prefix) or 0
        return _parse_body(bytes(hs_prefix[4:total]), partial=True)
    except (IndexError, ValueError):  # pragma: no cover - defensive
        return None


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
