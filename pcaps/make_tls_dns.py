#!/usr/bin/env python3
"""Write the small TLS / DNS / SYN test captures described in README.md.

Deterministic: fixed addresses, MACs, sequence numbers, DNS ids and
timestamps, so running it again gives byte-identical files.

    python3 pcaps/make_tls_dns.py [OUTDIR]      # default: the folder of this script
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from dnslib import RR, DNSRecord
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

T0 = 1_767_225_600.0  # 2026-01-01T00:00:00Z
ETH_C = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
ETH_S = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
C4, S4 = "10.20.0.2", "198.51.100.10"
C6, S6 = "2001:db8:20::2", "2001:db8:51::10"
R4, R6 = "10.20.0.53", "2001:db8:20::53"


# -- TLS ClientHello builder (same layout as tests/test_tls.py build_hello) -----------


def _ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def client_hello(
    sni: str | None,
    *,
    pq: bool = False,
    ech: bool = False,
    sni_last: bool = False,
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    padding: int | None = None,
) -> bytes:
    """A browser-like TLS 1.3 ClientHello handshake message. ``pq`` adds an
    X25519MLKEM768 key share (1216 + 32 bytes) and padding to ~1.9 KB;
    ``padding`` sets the padding extension's size (pq or not)."""
    exts = [_ext(0x3A3A, b"")]  # GREASE
    sni_ext = b""
    if sni is not None:
        name = sni.encode()
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        sni_ext = _ext(0x0000, struct.pack("!H", len(entry)) + entry)
    if sni_ext and not sni_last:
        exts.append(sni_ext)
    exts.append(_ext(0x0017, b""))  # extended_master_secret
    exts.append(_ext(0x000A, b"\x00\x08\x4a\x4a\x11\xec\x00\x1d\x00\x17"))  # supported_groups
    lst = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
    exts.append(_ext(0x0010, struct.pack("!H", len(lst)) + lst))
    exts.append(_ext(0x000D, b"\x00\x08\x04\x03\x08\x04\x04\x01\x05\x03"))  # signature_algorithms
    shares = b""
    if pq:
        shares += struct.pack("!HH", 0x11EC, 1216 + 32) + bytes((i * 7) & 0xFF for i in range(1216 + 32))
    shares += struct.pack("!HH", 0x001D, 32) + bytes(range(32))
    exts.append(_ext(0x0033, struct.pack("!H", len(shares)) + shares))
    exts.append(_ext(0x002B, b"\x06\x4a\x4a\x03\x04\x03\x03"))  # supported_versions (+GREASE)
    if ech:
        payload = b"\x00\x00\x01\x00\x01\x7b\x00\x20" + bytes(range(32)) + struct.pack("!H", 144) + bytes(144)
        exts.append(_ext(0xFE0D, payload))
    if padding is None and pq:
        padding = 420
    if padding:
        exts.append(_ext(0x0015, bytes(padding)))  # padding
    if sni_ext and sni_last:
        exts.append(sni_ext)
    block = b"".join(exts)
    body = (
        b"\x03\x03"
        + bytes(range(32))
        + b"\x20"
        + bytes(range(32, 64))
        + b"\x00\x06\x13\x01\x13\x02\x13\x03"
        + b"\x01\x00"
        + struct.pack("!H", len(block))
        + block
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def tls_record(msg: bytes) -> bytes:
    return b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg


# -- packet helpers --------------------------------------------------------------------


class Conn:
    """A TCP connection with sequence bookkeeping for both sides."""

    def __init__(self, sport: int, dport: int, v6: bool = False, isn_c: int = 1_000_000, isn_s: int = 7_000_000):
        self.sport, self.dport, self.v6 = sport, dport, v6
        self.isn_c, self.isn_s = isn_c, isn_s

    def _ip(self, from_client: bool):
        if self.v6:
            return IPv6(src=C6, dst=S6) if from_client else IPv6(src=S6, dst=C6)
        return IP(src=C4, dst=S4) if from_client else IP(src=S4, dst=C4)

    def c(self, flags: str, off: int = 0, data: bytes = b"", ack: int = 1):
        """Client segment at stream offset ``off`` (0 = first data byte)."""
        seq = self.isn_c if flags == "S" else self.isn_c + 1 + off
        a = 0 if flags == "S" else self.isn_s + ack
        return ETH_C / self._ip(True) / TCP(sport=self.sport, dport=self.dport, flags=flags, seq=seq, ack=a) / data

    def s(self, flags: str, off: int = 0, data: bytes = b"", ack: int = 1):
        seq = self.isn_s if "S" in flags else self.isn_s + 1 + off
        return ETH_S / self._ip(False) / TCP(sport=self.dport, dport=self.sport, flags=flags, seq=seq, ack=self.isn_c + ack) / data

    def handshake(self) -> list:
        return [self.c("S"), self.s("SA"), self.c("A")]


def udp4(src: str, dst: str, sport: int, dport: int, data: bytes, from_client: bool = True):
    eth = ETH_C if from_client else ETH_S
    return eth / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / data


def udp6(src: str, dst: str, sport: int, dport: int, data: bytes, from_client: bool = True):
    eth = ETH_C if from_client else ETH_S
    return eth / IPv6(src=src, dst=dst) / UDP(sport=sport, dport=dport) / data


def write(outdir: Path, name: str, pkts: list) -> None:
    for i, p in enumerate(pkts):
        p.time = T0 + i * 0.001
    wrpcap(str(outdir / name), pkts, linktype=1)
    print(f"{name}: {len(pkts)} packets")


# -- DNS helpers -----------------------------------------------------------------------


def query(name: str, qtype: str, msg_id: int) -> DNSRecord:
    q = DNSRecord.question(name, qtype)
    q.header.id = msg_id
    return q


def reply(q: DNSRecord, zone: list[str], rcode: int = 0) -> bytes:
    r = q.reply()
    r.header.rcode = rcode
    for line in zone:
        r.add_answer(*RR.fromZone(line))
    return bytes(r.pack())


def framed(*msgs: bytes) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in msgs)


# -- captures --------------------------------------------------------------------------


def tls_pq_split() -> list:
    conn = Conn(51001, 443)
    rec = tls_record(client_hello("pq-split.example.com", pq=True, sni_last=True))
    assert 1800 < len(rec) < 2100, len(rec)
    return [
        *conn.handshake(),
        conn.c("PA", 0, rec[:1448]),
        conn.s("A", ack=1 + 1448),
        conn.c("PA", 1448, rec[1448:]),
        conn.s("A", ack=1 + len(rec)),
    ]


def tls_reorder_retrans() -> list:
    conn = Conn(51002, 443)
    rec = tls_record(client_hello("reordered.example.com", pq=True))
    a, b, c = rec[:700], rec[700:1400], rec[1400:]
    return [
        *conn.handshake(),
        conn.c("PA", 1400, c),  # third segment first
        conn.c("PA", 0, a),  # first
        conn.c("PA", 0, a),  # first again (retransmission)
        conn.c("PA", 500, rec[500:900]),  # overlaps the first and the missing second
        conn.c("PA", 700, b),  # fills the hole: the hello completes here
        conn.s("A", ack=1 + len(rec)),
        conn.c("PA", 0, rec),  # whole hello retransmitted: no second event
    ]


def tls_ech() -> list:
    conn = Conn(51003, 443, v6=True)
    rec = tls_record(client_hello("public.ech.example.net", ech=True, alpn=("h2",)))
    return [*conn.handshake(), conn.c("PA", 0, rec), conn.s("A", ack=1 + len(rec))]


def tls_incomplete() -> list:
    conn = Conn(51004, 443)
    rec = tls_record(client_hello("never-finished.example.com", pq=True))
    first = rec[:1000]
    return [
        *conn.handshake(),
        conn.c("PA", 0, first),
        conn.s("A", ack=1 + len(first)),
        conn.c("FA", len(first)),
        conn.s("FA", 0, ack=2 + len(first)),
    ]


def tls_nonstd_port() -> list:
    out = []
    for port, name in ((8443, "alt-port.example.com"), (2083, "cpanel-port.example.com")):
        conn = Conn(51010 + port % 100, port)
        rec = tls_record(client_hello(name))
        out += [*conn.handshake(), conn.c("PA", 0, rec), conn.s("A", ack=1 + len(rec))]
    return out


def dns_tcp_split() -> list:
    conn = Conn(51020, 53, isn_c=3_000_000, isn_s=9_000_000)
    q1, q2, q3 = query("one.example.com", "A", 0x1001), query("two.example.com", "AAAA", 0x1002), query(
        "three.example.com", "TXT", 0x1003
    )
    a1 = reply(q1, ["one.example.com. 300 IN A 192.0.2.1"])
    a2 = reply(q2, ["two.example.com. 300 IN AAAA 2001:db8::2"])
    a3 = reply(q3, ['three.example.com. 60 IN TXT "split over three segments"'])
    cq = framed(bytes(q1.pack()), bytes(q2.pack()))
    cq3 = framed(bytes(q3.pack()))
    sa = framed(a1, a2)
    sa3 = framed(a3)
    n1, n2 = len(cq), len(sa)
    return [
        *conn.handshake(),
        conn.c("PA", 0, cq),  # two queries, one segment
        conn.s("PA", 0, sa, ack=1 + n1),  # two answers, one segment
        conn.c("PA", n1, cq3[:1]),  # third query in three pieces (the first cuts the length prefix)
        conn.c("PA", n1 + 1, cq3[1:10]),
        conn.c("PA", n1 + 10, cq3[10:]),
        conn.s("PA", n2, sa3[:20], ack=1 + n1 + len(cq3)),  # third answer in three pieces
        conn.s("PA", n2 + 20, sa3[20:40], ack=1 + n1 + len(cq3)),
        conn.s("PA", n2 + 40, sa3[40:], ack=1 + n1 + len(cq3)),
        conn.c("FA", n1 + len(cq3), ack=1 + n2 + len(sa3)),
    ]


def dns_answers() -> list:
    out = []
    cases = [
        (query("a.example.com", "A", 0x2001), ["a.example.com. 300 IN A 192.0.2.10", "a.example.com. 300 IN A 192.0.2.11"], 0),
        (query("aaaa.example.com", "AAAA", 0x2002), ["aaaa.example.com. 300 IN AAAA 2001:db8::10"], 0),
        (
            query("www.chain.example.com", "A", 0x2003),
            [
                "www.chain.example.com. 300 IN CNAME edge.chain.example.net.",
                "edge.chain.example.net. 60 IN CNAME e1.cdn.example.org.",
                "e1.cdn.example.org. 20 IN A 203.0.113.7",
            ],
            0,
        ),
        (query("svc.example.com", "HTTPS", 0x2004), ["svc.example.com. 300 IN HTTPS 1 . alpn=h2,h3 ipv4hint=192.0.2.20"], 0),
        (query("txt.example.com", "TXT", 0x2005), ['txt.example.com. 300 IN TXT "v=spf1 -all" "second string"'], 0),
        (query("nope.example.com", "A", 0x2006), [], 3),
    ]
    for i, (q, zone, rcode) in enumerate(cases):
        v6 = i % 2 == 1
        sport = 52000 + i
        qb, ab = bytes(q.pack()), reply(q, zone, rcode)
        if v6:
            out += [udp6(C6, R6, sport, 53, qb), udp6(R6, C6, 53, sport, ab, False)]
        else:
            out += [udp4(C4, R4, sport, 53, qb), udp4(R4, C4, 53, sport, ab, False)]
    return out


def connect() -> list:
    c4 = Conn(51030, 443)
    c6 = Conn(51031, 22, v6=True)
    return [
        c4.c("S"),
        c4.c("S"),  # retransmitted SYN: same sequence number, counted once
        c4.s("SA"),  # SYN-ACK: not a connect
        c4.c("A"),
        c6.c("S"),
        c6.s("SA"),
        c6.c("A"),
        Conn(51032, 80, isn_c=5_555_555).c("S"),
    ]


CAPTURES = {
    "tls-pq-split.pcap": tls_pq_split,
    "tls-reorder-retrans.pcap": tls_reorder_retrans,
    "tls-ech.pcap": tls_ech,
    "tls-incomplete.pcap": tls_incomplete,
    "tls-nonstd-port.pcap": tls_nonstd_port,
    "dns-tcp-split.pcap": dns_tcp_split,
    "dns-answers.pcap": dns_answers,
    "connect.pcap": connect,
}


def main() -> None:
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    outdir.mkdir(parents=True, exist_ok=True)
    for name, make in CAPTURES.items():
        write(outdir, name, make())


if __name__ == "__main__":
    main()
