"""DNS record data -> presentation text (A, AAAA, names, MX, TXT, SOA, SRV, ...).

The common record types are decoded here with slicing (names through
:func:`dnsname.read_name`, sharing the message's name cache). dnslib is kept
for the data of the other record types (HTTPS/SVCB, CAA, DS, TLSA, ...) in its
presentation form (names inside keep their trailing dot); data it cannot
decode is shown in RFC 3597 generic form (``\\# LEN HEX``). Pure: no I/O, no
clock; nothing raises on hostile data.
"""

from __future__ import annotations

import socket

from egresswatch.decode.dnsname import _ESC, read_name

__all__ = ["rdata_text"]

_A, _NS, _CNAME, _SOA, _PTR, _MX, _TXT, _AAAA, _SRV, _DNAME, _SVCB, _HTTPS = (
    1,
    2,
    5,
    6,
    12,
    15,
    16,
    28,
    33,
    39,
    64,
    65,
)
_NAME_DATA = frozenset((_NS, _CNAME, _PTR, _DNAME))


def _txt(rdata: bytes) -> str:
    parts: list[str] = []
    off = 0
    while off < len(rdata):
        ln = rdata[off]
        s = rdata[off + 1 : off + 1 + ln]
        off += 1 + ln
        out = []
        for b in s:
            if b == 0x22 or b == 0x5C:
                out.append("\\" + chr(b))
            elif 0x20 <= b < 0x7F:
                out.append(chr(b))
            else:
                out.append(_ESC[b])
        parts.append('"' + "".join(out) + '"')
    return " ".join(parts)


def _generic(rdata: bytes) -> str:
    return f"\\# {len(rdata)} {rdata.hex()}" if rdata else "\\# 0"


def _dnslib_rdata(buf: bytes, off: int, rdlen: int, rtype: int) -> str | None:
    """Presentation form of a less common record type through dnslib."""
    try:
        from dnslib.dns import QTYPE, RDMAP
        from dnslib.label import DNSBuffer

        name = QTYPE.get(_HTTPS if rtype == _SVCB else rtype, None)
        cls = RDMAP.get(name) if isinstance(name, str) else None
        if cls is None:
            return None
        b = DNSBuffer(buf)
        b.offset = off
        text = str(cls.parse(b, rdlen).toZone())
        return "".join(_ESC[ord(c)] if ord(c) < 0x20 or ord(c) == 0x7F else c for c in text)
    except Exception:  # dnslib raises many kinds (and RecursionError) on hostile data
        return None


def rdata_text(
    buf: bytes, off: int, rdlen: int, rtype: int, cache: dict[int, tuple[list[bytes], int]]
) -> tuple[str, str | None]:
    rdata = buf[off : off + rdlen]
    if rtype == _A and rdlen == 4:
        return f"{rdata[0]}.{rdata[1]}.{rdata[2]}.{rdata[3]}", None
    if rtype == _AAAA and rdlen == 16:
        return socket.inet_ntop(socket.AF_INET6, rdata), None
    if rtype in _NAME_DATA:
        name, _, err = read_name(buf, off, cache)
        return (name if name is not None else ""), err
    if rtype == _MX and rdlen >= 3:
        name, _, err = read_name(buf, off + 2, cache)
        return f"{(rdata[0] << 8) | rdata[1]} {name or ''}", err
    if rtype == _TXT:
        return _txt(rdata), None
    if rtype == _SRV and rdlen >= 7:
        name, _, err = read_name(buf, off + 6, cache)
        pri, wei, port = (rdata[0] << 8) | rdata[1], (rdata[2] << 8) | rdata[3], (rdata[4] << 8) | rdata[5]
        return f"{pri} {wei} {port} {name or ''}", err
    if rtype == _SOA:
        mname, p, err = read_name(buf, off, cache)
        rname, p2, err2 = read_name(buf, p, cache) if p > 0 else (None, -1, "name truncated")
        tail = buf[p2 : p2 + 20] if p2 > 0 else b""
        if err or err2 or len(tail) < 20:
            return _generic(rdata), err or err2 or "short SOA"
        nums = [int.from_bytes(tail[i : i + 4], "big") for i in range(0, 20, 4)]
        return f"{mname} {rname} " + " ".join(map(str, nums)), None
    text = _dnslib_rdata(buf, off, rdlen, rtype)
    return (text if text is not None else _generic(rdata)), None
