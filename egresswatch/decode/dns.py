"""DNS message parsing (pure): header, question and answer records.

Speed choice (measured on the DNS packets of bench/mixed-100k.pcap): dnslib's
``DNSRecord.parse`` takes ~27 us per message there (its object tree is the
cost); DNS is 5% of the replay benchmark, which must run at >= 200k packets/s
overall (~5 us per packet for everything). So the header, the question, name
decompression (with a per-message cache of names by offset) and the common
record types (A, AAAA, CNAME, NS, PTR, DNAME, MX, TXT, SOA, SRV) are decoded
with struct and slicing: ~3.6 us per query, ~9 us per 4-record answer. dnslib
is kept for the data of the other record types (:mod:`dnsrdata`).

Names (lossless presentation form, shared with TLS/QUIC SNI): :mod:`dnsname`;
record data: :mod:`dnsrdata`; DNS-over-TCP framing: :mod:`dnstcp`. A message
whose 12-byte header is present always parses (into as much as could be
read); ``DnsMessage.malformed`` says why part of it could not be.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

from egresswatch.decode.dnsname import read_name
from egresswatch.decode.dnsrdata import _A, _AAAA, _CNAME, rdata_text
from egresswatch.model import DnsRecord

__all__ = ["DnsMessage", "parse_message"]

MAX_RECORDS = 512  # answer records decoded per message

_ANSWER_TYPES = frozenset((_A, _AAAA, _CNAME))

_HDR = struct.Struct("!HHHH").unpack_from  # id, flags, qdcount, ancount
_RR = struct.Struct("!H2xIH").unpack_from  # type, (class), ttl, rdlength
_ntoa = socket.inet_ntoa


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
                    data, derr = rdata_text(buf, rd_off, rdlen, rtype, cache)
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
