#!/usr/bin/env python3
"""Write pcaps/linktypes-more.pcapng: one DNS query behind each of the less
common link types and tunnels (see README.md), one pcapng interface per link
type. Deterministic: fixed addresses, ids and timestamps, same bytes each run.

    python3 pcaps/make_linkmore.py            # writes next to this script
    python3 pcaps/make_linkmore.py OUTDIR
"""

from __future__ import annotations

import struct
import sys
from pathlib import Path

from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.inet6 import IPv6

T0 = 1767225600  # 2026-01-01T00:00:00Z
CLIENT4, RESOLVER4 = "10.0.0.5", "10.0.0.53"
CLIENT6, RESOLVER6 = "2001:db8:1::5", "2001:db8:1::53"
MAC_C, MAC_R = bytes.fromhex("020000000001"), bytes.fromhex("0200000000fe")
SNAP4 = b"\xaa\xaa\x03\x00\x00\x00\x08\x00"
SNAP6 = b"\xaa\xaa\x03\x00\x00\x00\x86\xdd"


def q4(name: str, qid: int) -> bytes:
    return bytes(
        IP(src=CLIENT4, dst=RESOLVER4, id=qid) / UDP(sport=40000 + qid % 1000, dport=53) / dns(name, qid)
    )


def q6(name: str, qid: int) -> bytes:
    return bytes(IPv6(src=CLIENT6, dst=RESOLVER6) / UDP(sport=40000 + qid % 1000, dport=53) / dns(name, qid))


def dns(name: str, qid: int) -> DNS:
    return DNS(id=qid, rd=1, qd=DNSQR(qname=name, qtype="A"))


def eth(etype: int, payload: bytes) -> bytes:
    return MAC_R + MAC_C + struct.pack("!H", etype) + payload


# --- 802.11 ---------------------------------------------------------------------------
def dot11_data(payload: bytes, *, qos: bool = False, four: bool = False, protected: bool = False) -> bytes:
    subtype = 8 if qos else 0
    fc0 = (subtype << 4) | (2 << 2)  # data frame
    fc1 = (3 if four else 1) | (0x40 if protected else 0)  # to-DS (and from-DS)
    hdr = struct.pack("<BBH", fc0, fc1, 0) + MAC_R + MAC_C + MAC_R + struct.pack("<H", 0x10)
    if four:
        hdr += MAC_C
    if qos:
        hdr += b"\x00\x00"
    return hdr + (SNAP6 if payload[0] >> 4 == 6 else SNAP4) + payload


def radiotap(frame: bytes) -> bytes:
    # version 0, length 12: present = flags + rate; flags 0, rate 2 (1 Mb/s), 2 bytes padding
    return struct.pack("<BBHI", 0, 0, 12, 0x00000006) + b"\x00\x02\x00\x00" + frame


def prism(frame: bytes) -> bytes:
    return struct.pack("<II", 0x41, 144) + b"wlan0".ljust(16, b"\x00") + bytes(120) + frame


def avs(frame: bytes) -> bytes:
    return struct.pack("!II", 0x80211001, 64) + bytes(56) + frame


def ppi(frame: bytes) -> bytes:
    return struct.pack("<BBHI", 0, 0, 8, 105) + frame


# --- others ---------------------------------------------------------------------------
def nflog(packet: bytes) -> bytes:
    def tlv(t: int, v: bytes) -> bytes:
        return struct.pack("<HH", len(v) + 4, t) + v + bytes(-len(v) % 4)

    hwproto = tlv(1, struct.pack("!HBx", 0x0800, 3))  # packet header: hw protocol, hook
    prefix = tlv(10, b"egress\x00")
    return struct.pack("!BBH", 2, 0, 5) + hwproto + prefix + tlv(9, packet)


def pflog(packet: bytes) -> bytes:
    # length 61, af 2, action, reason, ifname[16], ruleset[16], rulenr, subrulenr, uid, pid,
    # rule uid, rule pid, dir, pad[3] -> 61 bytes, padded to 64
    hdr = struct.pack("!BBBB", 61, 2, 0, 0) + b"en0".ljust(16, b"\x00") + bytes(16)
    hdr += struct.pack("!IIIiIiB3x", 1, 0, 0, 0, 0, 0, 2)
    return hdr[:61].ljust(64, b"\x00") + packet


def pppoe(packet: bytes) -> bytes:
    """A PPPoE session header (its length covers the PPP protocol field), then PPP."""
    return struct.pack("!BBHH", 0x11, 0, 0x0101, len(packet) + 2) + b"\x00\x21" + packet


def snap8023(packet: bytes) -> bytes:
    """An 802.3 frame: a length instead of an ethertype, then LLC/SNAP."""
    return MAC_R + MAC_C + struct.pack("!H", len(SNAP4) + len(packet)) + SNAP4 + packet


def enc(packet: bytes) -> bytes:
    return struct.pack("<III", 2, 0x1234, 0) + packet


def geneve(inner_eth: bytes) -> bytes:
    opt = struct.pack("!HBB", 0x0108, 0x01, 1) + b"\x00\x00\x00\x2a"  # one 4-byte option
    hdr = struct.pack("!BBH", len(opt) // 4, 0, 0x6558) + b"\x00\x00\x64\x00"
    outer = (
        IP(src="192.0.2.1", dst="192.0.2.2", id=7) / UDP(sport=51000, dport=6081) / (hdr + opt + inner_eth)
    )
    return eth(0x0800, bytes(outer))


def teredo(packet6: bytes) -> bytes:
    origin = b"\x00\x00" + struct.pack("!H", 0xFFFF ^ 40000) + bytes(4)
    outer = IP(src="192.0.2.1", dst="192.0.2.3", id=8) / UDP(sport=40001, dport=3544) / (origin + packet6)
    return eth(0x0800, bytes(outer))


def erspan2(inner_eth: bytes) -> bytes:
    gre = struct.pack("!HHI", 0x1000, 0x88BE, 1)  # sequence number present
    span = struct.pack("!HHI", 0x1000 | 100, 0x0001, 0)  # version 1, vlan 100, session 1
    outer = IP(src="192.0.2.1", dst="192.0.2.4", proto=47, id=9) / (gre + span + inner_eth)
    return eth(0x0800, bytes(outer))


def erspan3(inner_eth: bytes) -> bytes:
    gre = struct.pack("!HHI", 0x1000, 0x22EB, 2)
    span = struct.pack("!HHII", 0x2000 | 100, 0x0001, 12345, 0x00000001)  # version 2, O bit set
    platform = bytes(8)
    outer = IP(src="192.0.2.1", dst="192.0.2.5", proto=47, id=10) / (gre + span + platform + inner_eth)
    return eth(0x0800, bytes(outer))


# --- pcapng ---------------------------------------------------------------------------
def _opt(code: int, value: bytes) -> bytes:
    return struct.pack("<HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(btype: int, body: bytes) -> bytes:
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def frames() -> list[tuple[int, str, bytes]]:
    """(link type, interface name, frame) in file order."""
    inner = eth(0x0800, q4("inner.geneve.example", 0x7010))
    return [
        (105, "wlan0", dot11_data(q4("dot11.example.net", 0x7001))),
        (105, "wlan0", dot11_data(q4("qos4addr.dot11.example.net", 0x7002), qos=True, four=True)),
        (105, "wlan0", dot11_data(q4("protected.dot11.example.net", 0x7003), protected=True)),
        (127, "mon0", radiotap(dot11_data(q6("radiotap.example.net", 0x7004), qos=True))),
        (119, "prism0", prism(dot11_data(q4("prism.example.net", 0x7005)))),
        (163, "avs0", avs(dot11_data(q4("avs.example.net", 0x7006)))),
        (192, "ppi0", ppi(dot11_data(q4("ppi.example.net", 0x7007)))),
        (239, "nflog:5", nflog(q4("nflog.example.net", 0x7008))),
        (9, "ppp0", b"\xff\x03\x00\x21" + q4("ppp.example.net", 0x7009)),
        (50, "hdlc0", b"\xff\x03\x00\x57" + q6("ppp-hdlc.example.net", 0x700A)),
        (51, "pppoe0", pppoe(q4("pppoe.example.net", 0x700B))),
        (104, "serial0", b"\x0f\x00\x08\x00" + q4("chdlc.example.net", 0x700C)),
        (117, "pflog0", pflog(q4("pflog.example.net", 0x700D))),
        (109, "enc0", enc(q4("enc.example.net", 0x700E))),
        (1, "eth0", snap8023(q4("snap.example.net", 0x700F))),
        (1, "eth0", geneve(inner)),
        (1, "eth0", teredo(q6("teredo.example.net", 0x7011))),
        (1, "eth0", erspan2(eth(0x0800, q4("erspan2.example.net", 0x7012)))),
        (1, "eth0", erspan3(eth(0x86DD, q6("erspan3.example.net", 0x7013)))),
    ]


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    shb = _block(
        0x0A0D0D0A,
        struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(4, b"egresswatch make_linkmore.py") + _opt(0, b""),
    )
    blocks, ifaces = [shb], {}
    for i, (lt, name, data) in enumerate(frames()):
        key = (lt, name)
        if key not in ifaces:
            ifaces[key] = len(ifaces)
            blocks.append(_block(1, struct.pack("<HHI", lt, 0, 0) + _opt(2, name.encode()) + _opt(0, b"")))
        ts = (T0 + i) * 10**6
        body = struct.pack("<IIIII", ifaces[key], ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
        blocks.append(_block(6, body + data + bytes(-len(data) % 4)))
    (out / "linktypes-more.pcapng").write_bytes(b"".join(blocks))


if __name__ == "__main__":
    main()
