"""DNS message parsing (pure) and the DNS-over-TCP framer.

Speed choice (measured on the DNS packets of bench/mixed-100k.pcap): dnslib's
``DNSRecord.parse`` takes ~27 us per message there (its object tree is the
cost); DNS is 5% of the replay benchmark, which must run at >= 200k packets/s
overall (~5 us per packet for everything). So the header, the question, name
decompression (with a per-message cache of names by offset) and the common
record types (A, AAAA, CNAME, NS, PTR, DNAME, MX, TXT, SOA, SRV) are decoded
here with struct and slicing: ~3.6 us per query, ~9 us per 4-record answer.
dnslib is kept for the data of the other record types (HTTPS/SVCB, CAA, DS,
TLSA, ...) in its presentation form (names inside keep their trailing dot);
data it cannot decode is shown in RFC 3597 generic form (``\\# LEN HEX``).

Names are in presentation form: labels joined with ".", no trailing dot, the
root as "."; bytes outside printable ASCII (0x21-0x7e) are written ``\\DDD``
(decimal, RFC 1035), and "." and "\\" inside a label as "\\." and "\\\\", so the
form is lossless. TLS and QUIC SNI use the same form (:func:`presentation`).

Hostile input: compression pointer loops, pointers into the header, chains
deeper than :data:`MAX_POINTERS`, names longer than 255 octets, bad label
types and truncation never raise or hang; the name is then None and
``DnsMessage.malformed`` says why. A message whose 12-byte header is present
always parses (into as much as could be read).
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from egresswatch.model import DnsRecord

__all__ = ["DnsMessage", "parse_message", "read_name", "TcpDnsFramer", "MAX_POINTERS"]

MAX_POINTERS = 64  # compression pointers followed in one name (loops end much earlier)
MAX_NAME = 255  # octets on the wire, RFC 1035 2.3.4
MAX_RECORDS = 512  # answer records decoded per message

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
_ANSWER_TYPES = frozenset((_A, _AAAA, _CNAME))

_HDR = struct.Struct("!HHHH").unpack_from  # id, flags, qdcount, ancount
_RR = struct.Struct("!H2xIH").unpack_from  # type, (class), ttl, rdlength
_ntoa = socket.inet_ntoa

# printable ASCII kept as is, but "." and "\\" inside a label as "\\." and "\\\\";
# every other byte becomes \DDD (RFC 1035 presentation form: lossless)
_ESC = [f"\\{b:03d}" for b in range(256)]
for _b in range(0x21, 0x7F):
    _ESC[_b] = chr(_b)
_ESC[0x2E], _ESC[0x5C] = "\\.", "\\\\"
_KEEP = bytes(b for b in range(0x21, 0x7F) if b != 0x5C)  # "." is checked by counting
_KEEP_LABEL = bytes(b for b in range(0x21, 0x7F) if b not in (0x2E, 0x5C))


def presentation(data: bytes) -> str:
    r"""A host name from the wire that is not split into labels (TLS/QUIC SNI) in
    the same lossless form as DNS names: printable ASCII as is, "\" as "\\",
    every other byte as \DDD ("." stays the separator)."""
    if not data.translate(None, _KEEP):
        return data.decode("ascii")
    return "".join([_ESC[b] if b != 0x2E else "." for b in data])


@dataclass(frozen=True, slots=True)
class DnsMessage:
    """One parsed DNS message. ``answers``: data of the A/AAAA/CNAME records of
    the answer section in wire order; ``records``: every answer-section record
    decoded; ``malformed``: why part of the message could not be read."""

    id: int
    qr: bool
    opcode: int
    rcode: int
    qname: str | None
    qtype: int | None
    answers: tuple[str, ...]
    records: tuple[DnsRecord, ...]
    malformed: str | None = None


def _label_text(label: bytes) -> str:
    if not label.translate(None, _KEEP_LABEL):
        return label.decode("ascii")
    return "".join([_ESC[b] for b in label])


def _skip_name(buf: bytes, off: int) -> int:
    """Offset after the wire form of the name at ``off`` without following
    pointers (what follows a malformed name), or -1 if it runs off the end."""
    n = len(buf)
    while off < n:
        length = buf[off]
        if length == 0:
            return off + 1
        if length & 0xC0 == 0xC0:
            return off + 2 if off + 2 <= n else -1
        if length & 0xC0:
            return -1
        off += 1 + length
    return -1


def read_name(
    buf: bytes, off: int, cache: dict[int, tuple[list[bytes], int]] | None = None
) -> tuple[str | None, int, str | None]:
    """Decode the (possibly compressed) name at ``off``.

    Returns ``(name, next_offset, error)``: ``next_offset`` is where the data
    after the name starts in the original position (-1 if the name itself is
    truncated there); ``name`` is None and ``error`` set when it is malformed.
    ``cache`` (one dict per message) remembers names already decoded by offset,
    so a pointer to the question name costs one lookup.
    """
    n = len(buf)
    labels: list[bytes] = []
    total = 1
    end = -1
    pos = off
    seen: set[int] | None = None
    err: str | None = None
    while True:
        if pos >= n:
            err = "name truncated"
            break
        length = buf[pos]
        if length == 0:
            if end < 0:
                end = pos + 1
            break
        kind = length & 0xC0
        if kind == 0xC0:
            if pos + 1 >= n:
                err = "name truncated"
                break
            if end < 0:
                end = pos + 2
            ptr = ((length & 0x3F) << 8) | buf[pos + 1]
            if cache is not None and ptr in cache:
                more, more_len = cache[ptr]
                total += more_len - 1
                if total > MAX_NAME:
                    err = "name too long"
                    break
                labels.extend(more)
                break
            if seen is None:
                seen = {pos}
            elif pos in seen:
                err = "pointer loop"
                break
            elif len(seen) >= MAX_POINTERS:
                err = "too many compression pointers"
                break
            else:
                seen.add(pos)
            if ptr < 12:
                err = "pointer into header"
                break
            pos = ptr
            continue
        if kind:
            err = "bad label type"
            break
        total += length + 1
        if total > MAX_NAME:
            err = "name too long"
            break
        if pos + 1 + length > n:
            err = "name truncated"
            break
        labels.append(buf[pos + 1 : pos + 1 + length])
        pos += 1 + length
    if err is not None:
        return None, (end if end >= 0 else _skip_name(buf, off)), err
    if cache is not None:
        cache[off] = (labels, total)
    if not labels:
        return ".", end, None
    raw = b".".join(labels)
    if not raw.translate(None, _KEEP) and raw.count(46) == len(labels) - 1:
        return raw.decode("ascii"), end, None
    return ".".join([_label_text(lb) for lb in labels]), end, None


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


def _rdata_text(
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


def parse_message(buf: bytes) -> DnsMessage | None:
    """Parse one DNS message; None only when the 12-byte header is missing."""
    if len(buf) < 12:
        return None
    n = len(buf)
    msg_id, flags, qd, an = _HDR(buf)
    qname: str | None = None
    qtype: int | None = None
    malformed: str | None = None
    off = 12
    answers: list[str] = []
    records: list[DnsRecord] = []
    cache: dict[int, tuple[list[bytes], int]] = {}
    try:
        for i in range(qd):
            name, end, err = read_name(buf, off, cache)
            if end < 0 or end + 4 > n:
                malformed = err or "question truncated"
                off = -1
                break
            if i == 0:
                qname = name
                qtype = (buf[end] << 8) | buf[end + 1]
                if err:
                    malformed = err
            off = end + 4
        if off > 0:
            for _ in range(min(an, MAX_RECORDS)):
                name, end, err = read_name(buf, off, cache)
                if end < 0 or end + 10 > n:
                    malformed = malformed or err or "answer truncated"
                    break
                rtype, ttl, rdlen = _RR(buf, end)
                rd_off = end + 10
                if rd_off + rdlen > n:
                    malformed = malformed or "record data truncated"
                    break
                if rtype == 1 and rdlen == 4:
                    data, derr = _ntoa(buf[rd_off : rd_off + 4]), None
                else:
                    data, derr = _rdata_text(buf, rd_off, rdlen, rtype, cache)
                if err or derr:
                    malformed = malformed or err or derr
                records.append(
                    DnsRecord(name=name if name is not None else "", rtype=rtype, ttl=ttl, data=data)
                )
                if rtype in _ANSWER_TYPES and data and not derr:
                    answers.append(data)
                off = rd_off + rdlen
    except Exception as exc:  # pragma: no cover - defensive: bounds are checked above
        malformed = malformed or f"parse error: {type(exc).__name__}"
    return DnsMessage(
        id=msg_id,
        qr=bool(flags & 0x8000),
        opcode=(flags >> 11) & 0xF,
        rcode=flags & 0xF,
        qname=qname,
        qtype=qtype,
        answers=tuple(answers),
        records=tuple(records),
        malformed=malformed,
    )


class TcpDnsFramer:
    """Splits a reassembled DNS-over-TCP byte stream into messages (RFC 1035
    4.2.2: 2-byte length prefix). Feed contiguous stream bytes in order; each
    call returns the messages completed by them. Buffers at most ``cap`` bytes
    of one unfinished message (a DNS message is at most 65535 bytes)."""

    __slots__ = ("buf", "cap")

    def __init__(self, cap: int = 65537) -> None:
        self.buf = bytearray()
        self.cap = cap

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        off = 0
        n = len(buf)
        while off + 2 <= n:
            ln = (buf[off] << 8) | buf[off + 1]
            if off + 2 + ln > n:
                break
            out.append(bytes(buf[off + 2 : off + 2 + ln]))
            off += 2 + ln
        if off:
            del buf[:off]
        if len(buf) > self.cap:
            buf.clear()
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message held."""
        return len(self.buf)
