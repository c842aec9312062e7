"""TLS ClientHello parsing (pure, struct-free slicing over bytes).

:func:`parse_client_hello` parses ONE handshake message (type 0x01, 3-byte
length, body) into a :class:`ClientHello`: first ``host_name`` of
server_name, ALPN list, ECH/ESNI offered, supported_versions. QUIC (CRYPTO
frames) calls it directly; over TCP, :mod:`tlsstream` finds the message in
the TLS records first. :func:`partial_sni` reads what it can of a hello cut
short (to name an incomplete hello).

Nothing here raises on bad input: malformed input gives None.
"""

from __future__ import annotations

from dataclasses import dataclass

from egresswatch.decode.dnsname import presentation

__all__ = ["ClientHello", "parse_client_hello", "handshake_length", "partial_sni"]

EXT_SERVER_NAME = 0x0000
EXT_ALPN = 0x0010
EXT_SUPPORTED_VERSIONS = 0x002B
EXT_ECH = 0xFE0D
EXT_ESNI_DRAFT = 0xFFCE


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
    the lossless form DNS names use (decode.dnsname.presentation)."""
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
