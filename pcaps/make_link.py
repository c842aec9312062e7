#!/usr/bin/env python3
"""Write the link-layer golden-input captures into pcaps/ (see README.md).

Deterministic: fixed addresses, MACs, ports, IP ids, sequence numbers and
timestamps, no randomness, so re-running writes identical bytes.

    python3 pcaps/make_link.py            # writes next to this script
    python3 pcaps/make_link.py OUTDIR
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, IPv6ExtHdrHopByHop, fragment6
from scapy.layers.l2 import CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet
from scapy.utils import wrpcap

T0 = 1767225600  # 2026-01-01T00:00:00Z
MAC_C = "02:00:00:00:00:01"
MAC_R = "02:00:00:00:00:fe"
CLIENT4, RESOLVER4 = "10.0.0.5", "10.0.0.53"
CLIENT6, RESOLVER6 = "2001:db8:1::5", "2001:db8:1::53"


def eth(*, to_resolver: bool = True) -> Ether:
    return Ether(src=MAC_C, dst=MAC_R) if to_resolver else Ether(src=MAC_R, dst=MAC_C)


def query(name: str, qid: int, qtype: str = "A") -> DNS:
    return DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype=qtype))


def answer(name: str, qid: int, addr: str, qtype: str = "A") -> DNS:
    return DNS(
        id=qid,
        qr=1,
        rd=1,
        ra=1,
        qd=DNSQR(qname=name, qtype=qtype),
        an=DNSRR(rrname=name, type=qtype, ttl=300, rdata=addr),
    )


def big_answer(name: str, qid: int, n: int) -> DNS:
    """An answer too large for one 1500-byte packet: n TXT records of 200 bytes."""
    rrs = [DNSRR(rrname=name, type="TXT", ttl=60, rdata=[bytes([0x61 + i % 26]) * 200]) for i in range(n)]
    return DNS(id=qid, qr=1, rd=1, ra=1, qd=DNSQR(qname=name, qtype="TXT"), an=rrs)


def stamp(pkts: list[Packet], start: float = T0, step: float = 0.25) -> list[Packet]:
    for i, p in enumerate(pkts):
        p.time = start + i * step
    return pkts


def client_hello(sni: str) -> bytes:
    """A TLS 1.3 ClientHello record with server_name, ALPN and a fixed X25519 key share."""
    host = sni.encode()
    exts = [
        (0x0000, struct.pack("!HBH", len(host) + 3, 0, len(host)) + host),  # server_name
        (0x000A, struct.pack("!HH", 2, 0x001D)),  # supported_groups: x25519
        (0x000D, struct.pack("!HHH", 4, 0x0804, 0x0403)),  # signature_algorithms
        (0x0010, struct.pack("!H", 12) + b"\x02h2\x08http/1.1"),  # ALPN
        (0x002B, struct.pack("!BHH", 4, 0x0304, 0x0303)),  # supported_versions
        (0x0033, struct.pack("!HHH", 36, 0x001D, 32) + bytes(range(32))),  # key_share
    ]
    ext_bytes = b"".join(struct.pack("!HH", t, len(v)) + v for t, v in exts)
    body = b"\x03\x03" + bytes(range(0x40, 0x60)) + b"\x20" + bytes(range(0x60, 0x80))
    body += struct.pack("!HHHH", 6, 0x1301, 0x1302, 0x1303) + b"\x01\x00"
    body += struct.pack("!H", len(ext_bytes)) + ext_bytes
    hs = b"\x01" + len(body).to_bytes(3, "big") + body
    return b"\x16\x03\x01" + struct.pack("!H", len(hs)) + hs


# --- captures -------------------------------------------------------------------------
def vlan_qinq_dns(out: Path) -> None:
    q1 = IP(src=CLIENT4, dst=RESOLVER4, id=1) / UDP(sport=40001, dport=53) / query("vlan.example.com", 0x1001)
    a1 = (
        IP(src=RESOLVER4, dst=CLIENT4, id=2)
        / UDP(sport=53, dport=40001)
        / answer("vlan.example.com", 0x1001, "192.0.2.10")
    )
    q2 = IP(src=CLIENT4, dst=RESOLVER4, id=3) / UDP(sport=40002, dport=53) / query("qinq.example.com", 0x1002)
    a2 = (
        IP(src=RESOLVER4, dst=CLIENT4, id=4)
        / UDP(sport=53, dport=40002)
        / answer("qinq.example.com", 0x1002, "192.0.2.20")
    )
    pkts = [
        eth() / Dot1Q(vlan=100) / q1,
        eth(to_resolver=False) / Dot1Q(vlan=100) / a1,
        eth() / Dot1AD(vlan=300) / Dot1Q(vlan=100) / q2,
        eth(to_resolver=False) / Dot1AD(vlan=300) / Dot1Q(vlan=100) / a2,
    ]
    wrpcap(str(out / "vlan-qinq-dns.pcap"), stamp(pkts))


def sll2_dns_tls(out: Path) -> None:
    def sll2(proto: int, outgoing: bool) -> CookedLinuxV2:
        return CookedLinuxV2(
            proto=proto,
            ifindex=2,
            lladdrtype=1,
            pkttype=4 if outgoing else 0,
            lladdrlen=6,
            src=b"\x02\x00\x00\x00\x00\x01\x00\x00",
        )

    server = "198.51.100.7"
    name = "api.sll2.example"
    hello = client_hello(name)
    cseq, sseq = 1000, 5000
    c2s = dict(src=CLIENT4, dst=server)
    s2c = dict(src=server, dst=CLIENT4)
    pkts = [
        sll2(0x0800, True)
        / IP(src=CLIENT4, dst=RESOLVER4, id=10)
        / UDP(sport=41000, dport=53)
        / query(name, 0x2001),
        sll2(0x0800, False)
        / IP(src=RESOLVER4, dst=CLIENT4, id=11)
        / UDP(sport=53, dport=41000)
        / answer(name, 0x2001, server),
        sll2(0x0800, True)
        / IP(**c2s, id=12)
        / TCP(sport=50000, dport=443, flags="S", seq=cseq, window=64240),
        sll2(0x0800, False)
        / IP(**s2c, id=13)
        / TCP(sport=443, dport=50000, flags="SA", seq=sseq, ack=cseq + 1, window=65535),
        sll2(0x0800, True)
        / IP(**c2s, id=14)
        / TCP(sport=50000, dport=443, flags="A", seq=cseq + 1, ack=sseq + 1, window=502),
        sll2(0x0800, True)
        / IP(**c2s, id=15)
        / TCP(sport=50000, dport=443, flags="PA", seq=cseq + 1, ack=sseq + 1, window=502)
        / hello,
    ]
    wrpcap(str(out / "sll2-dns-tls.pcap"), stamp(pkts), linktype=276)


def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def rawip_null(out: Path) -> None:
    """pcapng with two interfaces: raw IP (101) and BSD null (0); EPBs carry comments."""
    shb = _block(
        0x0A0D0D0A,
        struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, b"egresswatch make_link.py") + _opt(0, b""),
    )
    idb_raw = _block(1, struct.pack("<HHI", 101, 0, 0) + _opt(2, b"tun0") + _opt(9, b"\x06") + _opt(0, b""))
    idb_null = _block(1, struct.pack("<HHI", 0, 0, 0) + _opt(2, b"lo0") + _opt(9, b"\x09") + _opt(0, b""))

    def epb(ifid: int, ts_units: int, data: bytes, comment: str) -> bytes:
        body = struct.pack("<IIIII", ifid, ts_units >> 32, ts_units & 0xFFFFFFFF, len(data), len(data))
        body += data + bytes(-len(data) % 4) + _opt(1, comment.encode()) + _opt(0, b"")
        return _block(6, body)

    q_raw4 = (
        IP(src=CLIENT4, dst=RESOLVER4, id=20) / UDP(sport=42000, dport=53) / query("raw4.example.net", 0x3001)
    )
    q_raw6 = (
        IPv6(src=CLIENT6, dst=RESOLVER6)
        / UDP(sport=42001, dport=53)
        / query("raw6.example.net", 0x3002, "AAAA")
    )
    q_null4 = (
        IP(src="127.0.0.1", dst="127.0.0.53", id=21)
        / UDP(sport=42002, dport=53)
        / query("null4.example.net", 0x3003)
    )
    q_null6 = (
        IPv6(src="::1", dst="::1") / UDP(sport=42003, dport=53) / query("null6.example.net", 0x3004, "AAAA")
    )
    blocks = [
        shb,
        idb_raw,
        idb_null,
        epb(0, (T0 + 1) * 10**6, bytes(q_raw4), "PID: 101\nCmd: /usr/bin/dig"),
        epb(1, (T0 + 2) * 10**9 + 500, struct.pack("<I", 2) + bytes(q_null4), "PID: 102\nCmd: /usr/bin/host"),
        epb(0, (T0 + 3) * 10**6 + 250000, bytes(q_raw6), "PID: 103\nCmd: /usr/bin/dig"),
        epb(1, (T0 + 4) * 10**9, struct.pack("<I", 30) + bytes(q_null6), "PID: 104\nCmd: /usr/bin/nslookup"),
    ]
    (out / "rawip-null.pcapng").write_bytes(b"".join(blocks))


def ipv6_ext_frag(out: Path) -> None:
    name6 = "ext.v6.example.org"
    q6 = (
        IPv6(src=CLIENT6, dst=RESOLVER6)
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrDestOpt()
        / UDP(sport=43000, dport=53)
        / query(name6, 0x4001, "TXT")
    )
    a6 = IPv6(src=RESOLVER6, dst=CLIENT6) / IPv6ExtHdrFragment(id=0x6006) / UDP(sport=53, dport=43000)
    a6 = a6 / big_answer(name6, 0x4001, 10)
    frags6 = fragment6(IPv6(bytes(a6)), 1280)
    name4 = "frag.v4.example.org"
    q4 = IP(src=CLIENT4, dst=RESOLVER4, id=30) / UDP(sport=43001, dport=53) / query(name4, 0x4002, "TXT")
    a4 = (
        IP(src=RESOLVER4, dst=CLIENT4, id=0x4444) / UDP(sport=53, dport=43001) / big_answer(name4, 0x4002, 10)
    )
    frags4 = fragment(IP(bytes(a4)), fragsize=1000)
    frags4.reverse()  # last fragment first
    pkts = [eth() / q6] + [eth(to_resolver=False) / f for f in frags6]
    pkts += [eth() / q4] + [eth(to_resolver=False) / f for f in frags4]
    wrpcap(str(out / "ipv6-ext-frag.pcap"), stamp(pkts))


def truncated(out: Path) -> None:
    pkts = [
        eth()
        / IP(src=CLIENT4, dst=RESOLVER4, id=40 + i)
        / UDP(sport=44000 + i, dport=53)
        / query(f"t{i}.example.com", 0x5000 + i)
        for i in range(4)
    ]
    path = out / "truncated.pcap"
    wrpcap(str(path), stamp(pkts))
    blob = path.read_bytes()
    last = len(bytes(pkts[3])) + 16
    path.write_bytes(blob[: len(blob) - last // 2])  # cut in the middle of the 4th record


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    vlan_qinq_dns(out)
    sll2_dns_tls(out)
    rawip_null(out)
    ipv6_ext_frag(out)
    truncated(out)


if __name__ == "__main__":
    main()
