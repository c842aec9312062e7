"""decode.link: every link type and tunnel built with scapy, checked field by field;
public corpus 5-tuples checked against tshark; fuzzing never raises."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.contrib.gtp import GTP_U_Header, GTPPDUSessionContainer
from scapy.contrib.mpls import MPLS
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import ICMP, IP, TCP, UDP
from scapy.layers.inet6 import (
    ICMPv6DestUnreach,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
)
from scapy.layers.ipsec import AH
from scapy.layers.l2 import ARP, GRE, GRE_PPTP, CookedLinux, CookedLinuxV2, Dot1AD, Dot1Q, Ether
from scapy.layers.ppp import PPP, PPPoE
from scapy.layers.vxlan import VXLAN
from scapy.packet import Packet, Raw

from egresswatch.capture.pcapfile import read_frames
from egresswatch.decode import link, linkmore
from egresswatch.decode.link import decode, decode_ip, transport
from egresswatch.decode.wire import Fragment
from egresswatch.model import IPPacket

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"


def corpus_dir() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


CORPUS = corpus_dir()

DNSQ = DNS(id=7, rd=1, qd=DNSQR(qname="exfil.example.com"))
Q4 = IP(src="10.1.2.3", dst="10.9.9.53") / UDP(sport=33333, dport=53) / DNSQ
Q6 = IPv6(src="2001:db8::1", dst="2001:db8:0:0:1::53") / UDP(sport=33334, dport=53) / DNSQ
SYN4 = IP(src="10.1.2.3", dst="93.184.216.34") / TCP(sport=44444, dport=443, flags="S", seq=1000)
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
DNS_BYTES = bytes(DNSQ)


def dec(linktype: int, pkt: Packet | bytes) -> IPPacket | Fragment | None:
    return decode(linktype, bytes(pkt))


def assert_q4(r: object) -> None:
    assert isinstance(r, IPPacket)
    assert (r.src, r.dst, r.proto, r.sport, r.dport, r.ip_version) == (
        "10.1.2.3",
        "10.9.9.53",
        "udp",
        33333,
        53,
        4,
    )
    assert r.payload == DNS_BYTES and not r.truncated


def assert_q6(r: object) -> None:
    assert isinstance(r, IPPacket)
    assert (r.src, r.dst, r.proto, r.sport, r.dport, r.ip_version) == (
        "2001:db8::1",
        "2001:db8::1:0:0:53",
        "udp",
        33334,
        53,
        6,
    )
    assert r.payload == DNS_BYTES


# --- link types ---------------------------------------------------------------------
def test_ethernet_ipv4_udp_and_dataclass_equality() -> None:
    r = dec(1, ETH / Q4)
    assert_q4(r)
    assert r == IPPacket("10.1.2.3", "10.9.9.53", "udp", 33333, 53, DNS_BYTES, 4, 0, 0, 0, False)


def test_ethernet_tcp_fields_equal_constructor() -> None:
    pkt = (
        ETH / IP(src="10.1.2.3", dst="1.2.3.4") / TCP(sport=5, dport=443, flags="PA", seq=7, ack=9) / b"hello"
    )
    r = dec(1, pkt)
    assert r == IPPacket("10.1.2.3", "1.2.3.4", "tcp", 5, 443, b"hello", 4, 0x18, 7, 9, False)


def test_tcp_syn_ipv6() -> None:
    r = dec(1, ETH / IPv6(src="fe80::1", dst="2001:db8::2") / TCP(sport=1, dport=443, flags="S", seq=42))
    assert isinstance(r, IPPacket)
    assert (r.proto, r.tcp_flags, r.seq, r.ip_version, r.payload) == ("tcp", 0x02, 42, 6, b"")


def test_ipv4_options_and_ethernet_padding() -> None:
    pkt = ETH / IP(src="10.0.0.1", dst="10.0.0.2", options=[b"\x01" * 4]) / UDP(sport=1, dport=53) / b"ab"
    raw = bytes(pkt) + b"\xee" * 20  # Ethernet trailer padding must not leak into the payload
    r = decode(1, raw)
    assert isinstance(r, IPPacket) and r.payload == b"ab" and not r.truncated


def test_truncated_capture_is_flagged_and_cut() -> None:
    raw = bytes(ETH / Q4)
    r = decode(1, raw[:-5])
    assert isinstance(r, IPPacket) and r.truncated and r.payload == DNS_BYTES[:-5]
    r = decode(1, bytes(ETH / SYN4 / (b"x" * 100))[:70])
    assert isinstance(r, IPPacket) and r.truncated and r.payload == b"x" * 16


@pytest.mark.parametrize(
    "frame",
    [
        pytest.param(ETH / Dot1Q(vlan=10) / Q4, id="802.1q"),
        pytest.param(ETH / Dot1AD(vlan=100) / Dot1Q(vlan=10) / Q4, id="qinq-88a8"),
        pytest.param(Ether(type=0x9100) / Dot1Q(vlan=100) / Dot1Q(vlan=10) / Q4, id="qinq-9100"),
        pytest.param(ETH / PPPoE(sessionid=1) / PPP(proto=0x0021) / Q4, id="pppoe"),
        pytest.param(
            ETH / Dot1AD(vlan=2) / Dot1Q(vlan=3) / PPPoE(sessionid=1) / PPP(proto=0x21) / Q4, id="pppoe-qinq"
        ),
        pytest.param(ETH / MPLS(label=16, s=0) / MPLS(label=17, s=1) / Q4, id="mpls"),
    ],
)
def test_ethernet_encapsulations_v4(frame: Packet) -> None:
    assert_q4(dec(1, frame))


def test_pppoe_ipv6() -> None:
    assert_q6(dec(1, ETH / PPPoE(sessionid=1) / PPP(proto=0x0057) / Q6))


def test_linux_sll_and_sll2() -> None:
    assert_q4(dec(113, CookedLinux(pkttype=4, proto=0x0800) / Q4))
    assert_q6(dec(113, CookedLinux(pkttype=0, proto=0x86DD) / Q6))
    assert_q4(dec(276, CookedLinuxV2(proto=0x0800, ifindex=2) / Q4))
    assert_q6(dec(276, CookedLinuxV2(proto=0x86DD, ifindex=2) / Q6))
    assert dec(276, CookedLinuxV2(proto=0x0806) / ARP()) is None


@pytest.mark.parametrize("linktype", [101, 12, 14])
def test_raw_ip_by_version_nibble(linktype: int) -> None:
    assert_q4(dec(linktype, Q4))
    assert_q6(dec(linktype, Q6))


def test_raw_ipv4_and_ipv6_linktypes() -> None:
    assert_q4(dec(228, Q4))
    assert dec(228, Q6) is None
    assert_q6(dec(229, Q6))
    assert dec(229, Q4) is None


@pytest.mark.parametrize("af", [2, 24, 28, 30])
@pytest.mark.parametrize("order", ["<", ">"])
@pytest.mark.parametrize("linktype", [0, 108])
def test_null_and_loop(af: int, order: str, linktype: int) -> None:
    inner = Q4 if af == 2 else Q6
    r = decode(linktype, struct.pack(order + "I", af) + bytes(inner))
    (assert_q4 if af == 2 else assert_q6)(r)


def test_unknown_linktype_and_non_ip() -> None:
    assert dec(147, ETH / Q4) is None
    assert dec(1, ETH / ARP()) is None
    assert decode(1, b"") is None
    assert decode(0, struct.pack("<I", 7) + bytes(Q4)) is None


# --- IPv4 / IPv6 details -------------------------------------------------------------
def test_ipv4_fragment() -> None:
    pkt = IP(src="10.0.0.1", dst="10.0.0.2", id=0x1234, flags="MF", frag=0, proto=17) / (b"u" * 16)
    r = dec(101, pkt)
    assert r == Fragment(4, "10.0.0.1", "10.0.0.2", 0x1234, 0, True, 17, b"u" * 16, False)
    r = dec(101, IP(src="10.0.0.1", dst="10.0.0.2", id=0x1234, frag=2, proto=17) / b"tail")
    assert isinstance(r, Fragment) and (r.offset_bytes, r.more_fragments, r.data) == (16, False, b"tail")


def test_ipv6_extension_headers() -> None:
    chain = IPv6ExtHdrHopByHop() / IPv6ExtHdrDestOpt() / IPv6ExtHdrRouting(addresses=[]) / IPv6ExtHdrDestOpt()
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::1:0:0:53") / chain / UDP(sport=33334, dport=53) / DNSQ
    assert_q6(dec(101, pkt))


def test_ipv6_ah_and_mobility() -> None:
    ah = AH(spi=1, seq=1, icv=b"\x00" * 12, nh=17, payloadlen=4)  # (12 + 12) / 4 - 2
    pkt = IPv6(src="2001:db8::1", dst="2001:db8::1:0:0:53", nh=51) / ah / UDP(sport=33334, dport=53) / DNSQ
    assert_q6(dec(101, pkt))
    # mobility header (135): next header, length 0 (8 bytes), then UDP
    mh = bytes([17, 0]) + bytes(6)
    udp = bytes(UDP(sport=33334, dport=53, len=8 + len(DNS_BYTES), chksum=0)) + DNS_BYTES
    ip = IPv6(src="2001:db8::1", dst="2001:db8::1:0:0:53", nh=135, plen=len(mh) + len(udp))
    assert_q6(decode(101, bytes(ip) + mh + udp))


def test_ipv6_fragment_header() -> None:
    frag = IPv6ExtHdrFragment(id=99, offset=3, m=1, nh=17)
    r = dec(101, IPv6(src="2001:db8::1", dst="2001:db8::2") / IPv6ExtHdrHopByHop() / frag / (b"f" * 24))
    assert r == Fragment(6, "2001:db8::1", "2001:db8::2", 99, 24, True, 17, b"f" * 24, False)


@pytest.mark.parametrize("nh", [59, 50])
def test_ipv6_no_next_header_and_esp(nh: int) -> None:
    assert dec(101, IPv6(nh=nh) / (b"\x00" * 40)) is None


def test_icmp_errors_quoting_dns_are_not_packets() -> None:
    assert dec(1, ETH / IP(src="10.9.9.53", dst="10.1.2.3") / ICMP(type=3, code=3) / Q4) is None
    v6err = IPv6(src="2001:db8::53", dst="2001:db8::1") / ICMPv6DestUnreach() / Q6
    assert dec(1, ETH / v6err) is None


def test_decode_ip_accepts_offset_and_memoryview() -> None:
    raw = b"junk" + bytes(Q4)
    assert_q4(decode_ip(raw, 4))
    assert_q4(decode_ip(memoryview(raw), 4))
    assert decode_ip(b"\x00" * 30) is None


def test_transport_builds_packet_from_reassembled_payload() -> None:
    udp = bytes(Q4[UDP])
    assert_q4(transport(4, "10.1.2.3", "10.9.9.53", 17, udp))
    udp6 = bytes(Q6[UDP])
    assert_q6(transport(6, "2001:db8::1", "2001:db8::1:0:0:53", 60, bytes(IPv6ExtHdrDestOpt(nh=17)) + udp6))
    assert transport(4, "a", "b", 1, b"\x08\x00") is None
    assert transport(4, "a", "b", 17, b"\x00") is None


# --- tunnels: the innermost IP wins --------------------------------------------------
@pytest.mark.parametrize(
    "outer",
    [
        pytest.param(IP(src="192.0.2.1", dst="192.0.2.2", proto=4), id="ipip"),
        pytest.param(IPv6(src="2001:db8::a", dst="2001:db8::b", nh=4), id="4in6"),
        pytest.param(IP(src="192.0.2.1", dst="192.0.2.2") / GRE(), id="gre"),
        pytest.param(
            IP(src="192.0.2.1", dst="192.0.2.2")
            / GRE(chksum_present=1, key_present=1, key=5, seqnum_present=1),
            id="gre-csum-key-seq",
        ),
        pytest.param(IP(src="192.0.2.1", dst="192.0.2.2") / GRE(proto=0x6558) / ETH, id="gre-teb"),
        pytest.param(
            IP(src="192.0.2.1", dst="192.0.2.2") / GRE_PPTP(seqnum_present=1, call_id=3) / PPP(proto=0x21),
            id="gre-pptp-ppp",
        ),
        pytest.param(
            IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=50000, dport=4789) / VXLAN(vni=42) / ETH,
            id="vxlan",
        ),
        pytest.param(
            IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=2152, dport=2152) / GTP_U_Header(teid=1),
            id="gtpu",
        ),
        pytest.param(
            IP(src="192.0.2.1", dst="192.0.2.2")
            / UDP(sport=2152, dport=2152)
            / GTP_U_Header(teid=1, E=1, next_ex=0x85)
            / GTPPDUSessionContainer(QFI=9),
            id="gtpu-ext",
        ),
    ],
)
def test_tunnels_v4_inner(outer: Packet) -> None:
    assert_q4(dec(1, ETH / outer / Q4))


def test_6in4_and_gre_ipv6() -> None:
    assert_q6(dec(1, ETH / IP(src="192.0.2.1", dst="192.0.2.2", proto=41) / Q6))
    assert_q6(dec(1, ETH / IP(src="192.0.2.1", dst="192.0.2.2") / GRE(proto=0x86DD) / Q6))


def test_ppp_with_address_control_and_compressed_protocol() -> None:
    gre = GRE_PPTP(call_id=3)
    base = bytes(ETH / IP(src="192.0.2.1", dst="192.0.2.2", proto=47))
    for ppp in (b"\xff\x03\x00\x21", b"\x21", b"\xff\x03\x21"):
        body = bytes(gre)[:4] + struct.pack("!HH", len(ppp) + len(bytes(Q4)), 3) + ppp + bytes(Q4)
        assert_q4(decode(1, _fix_ip_len(base, body)))


def _fix_ip_len(eth_ip: bytes, body: bytes) -> bytes:
    ip = bytearray(eth_ip[14:34])
    struct.pack_into("!H", ip, 2, 20 + len(body))
    return eth_ip[:14] + bytes(ip) + body


def test_tunnel_nesting_is_bounded() -> None:
    pkt: Packet = Q4
    for _ in range(20):
        pkt = IP(src="192.0.2.1", dst="192.0.2.2", proto=4) / pkt
    assert dec(101, pkt) is None


def test_gtp_non_gpdu_and_udp_on_tunnel_port_without_tunnel() -> None:
    echo = IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=2152, dport=2152) / GTP_U_Header(gtp_type=1)
    r = dec(101, echo)  # GTP echo: no user packet inside, reported as the UDP datagram itself
    assert isinstance(r, IPPacket) and r.dport == 2152
    r = dec(101, IP(src="192.0.2.1", dst="192.0.2.2") / UDP(sport=1, dport=4789) / (b"\x00" * 4))
    assert isinstance(r, IPPacket) and r.dport == 4789  # too short for VXLAN: plain UDP


# --- fuzzing ------------------------------------------------------------------------
LINKTYPES = [0, 1, 12, 14, 101, 108, 113, 228, 229, 276, 999]
SAMPLES = [
    bytes(ETH / Dot1Q() / Q4),
    bytes(ETH / PPPoE() / PPP(proto=0x57) / Q6),
    bytes(
        ETH
        / IP()
        / GRE(key_present=1)
        / ETH
        / IPv6()
        / IPv6ExtHdrHopByHop()
        / IPv6ExtHdrFragment()
        / Raw(b"a" * 9)
    ),
    bytes(ETH / IP() / UDP(dport=2152) / GTP_U_Header(E=1, next_ex=0x85) / GTPPDUSessionContainer() / Q4),
    bytes(ETH / IP() / UDP(dport=4789) / VXLAN() / ETH / SYN4),
]


@settings(max_examples=500, deadline=None)
@given(linktype=st.sampled_from(LINKTYPES), data=st.binary(max_size=200))
def test_fuzz_random_bytes_never_raise(linktype: int, data: bytes) -> None:
    r = decode(linktype, data)
    assert r is None or isinstance(r, IPPacket | Fragment)


@settings(max_examples=800, deadline=None)
@given(
    which=st.integers(0, len(SAMPLES) - 1),
    edits=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), min_size=1, max_size=5),
    cut=st.integers(0, 500),
)
def test_fuzz_mutated_frames_never_raise(which: int, edits: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(SAMPLES[which])
    for pos, val in edits:
        blob[pos % len(blob)] = val
    r = decode(1, bytes(blob[:cut]) if cut < len(blob) else bytes(blob))
    assert r is None or isinstance(r, IPPacket | Fragment)


# --- public corpus, innermost 5-tuple against tshark ---------------------------------
LINK_FILES = [
    "public/zeek/pppoe-over-qinq.pcap",
    "public/ndpi/dns.pcap",
    "public/arkime/6-4-gre-ppp-udp-4-dns.pcap",
    "public/arkime/gre-sample.pcap",
    "public/arkime/gtp-iphone.pcap",
    "public/ndpi/6in4tunnel.pcap",
    "public/ndpi/vxlan.pcap",
    "public/arkime/v6.pcap",
    "public/zeek/tls/openjdk-25.0.2-zeek.org.pcap",
    "public/zeek/dns-svcb.pcap",
    "public/zeek/dns/ech.pcap",
    "public/suricata-verify/linktype-228/flow-test-01.pcap",
    "public/ndpi/KakaoTalk_chat.pcap",
    "public/ndpi/smtp-starttls.pcap",
    "public/suricata-verify/datasets-08-state-ipv6/input.pcap",
    "public/arkime/quicietf.pcap",
    "ptcpdump/icmp.pcapng",
    "ptcpdump/arp.pcapng",
    "ptcpdump/curl-thread.pcapng",
]


def tshark_expect(path: Path) -> dict[int, tuple[str, str, str, int, int] | str | None]:
    """Per frame: innermost (proto, src, dst, sport, dport), "frag", or None."""
    fields = ["frame.number", "frame.protocols", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst"]
    fields += ["udp.srcport", "udp.dstport", "tcp.srcport", "tcp.dstport", "ip.flags.mf", "ip.frag_offset"]
    args = ["tshark", "-n", "-r", str(path), "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE"]
    args += ["-T", "fields", "-E", "occurrence=l"]
    for f in fields:
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=False).stdout
    exp: dict[int, tuple[str, str, str, int, int] | str | None] = {}
    for line in out.splitlines():
        num, protos, s4, d4, s6, d6, us, ud, ts, td, mf, fo = line.split("\t")
        stack = protos.split(":")
        n = int(num)
        if "icmp" in stack or "icmpv6" in stack:
            exp[n] = None  # ICMP, possibly quoting a UDP/TCP packet
        elif mf == "1" or fo not in ("", "0") or "ipv6.fraghdr" in stack or "fraghdr" in protos:
            exp[n] = "frag"
        else:
            l4 = [p for p in stack if p in ("udp", "tcp")]
            l3 = [p for p in stack if p in ("ip", "ipv6")]
            if not l4 or not l3:
                exp[n] = None
                continue
            proto = l4[-1]
            src, dst = (s4, d4) if l3[-1] == "ip" else (s6, d6)
            sport, dport = (us, ud) if proto == "udp" else (ts, td)
            exp[n] = (proto, src, dst, int(sport), int(dport))
    return exp


def check_against_tshark(path: Path) -> int:
    """Every frame decodes to tshark's innermost 5-tuple (or fragment / nothing); returns matches."""
    exp = tshark_expect(path)
    n = 0
    for fr in read_frames(path):
        r = decode(fr.linktype, fr.data)
        e = exp[fr.index]
        if e == "frag":
            assert isinstance(r, Fragment), fr.index
        elif e is None:
            assert r is None, (fr.index, r)
        else:
            assert isinstance(r, IPPacket), (fr.index, e)
            assert (r.proto, r.src, r.dst, r.sport, r.dport) == e, fr.index
            n += 1
    return n


needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")
@needs_tshark
@pytest.mark.parametrize("name", LINK_FILES)
def test_corpus_innermost_five_tuples_match_tshark(name: str) -> None:
    n = check_against_tshark(CORPUS / name)
    assert n > 0 or "arp" in name or "icmp" in name


GOLDEN = Path(__file__).resolve().parents[1] / "pcaps"


@needs_tshark
@pytest.mark.parametrize(
    "name", ["vlan-qinq-dns.pcap", "sll2-dns-tls.pcap", "rawip-null.pcapng", "ipv6-ext-frag.pcap"]
)
def test_golden_link_captures_match_tshark(name: str) -> None:
    assert check_against_tshark(GOLDEN / name) >= 2


def test_dns_from_tunnel_port_is_not_taken_for_a_tunnel() -> None:
    # DNS id 0x30ff makes the first bytes look like a GTPv1 G-PDU header
    q = (
        IP(src="10.1.2.3", dst="10.9.9.53")
        / UDP(sport=2152, dport=53)
        / DNS(id=0x30FF, qr=1, opcode=15, aa=1, tc=1, rd=1)
    )
    raw = bytes(q / (bytes(IP(src="6.6.6.6", dst="7.7.7.7") / UDP(sport=1, dport=2))))
    r = decode(101, raw)
    assert isinstance(r, IPPacket) and (r.src, r.sport, r.dport) == ("10.1.2.3", 2152, 53)
    r = dec(101, IP(src="10.1.2.3", dst="10.9.9.53") / UDP(sport=53, dport=4789) / VXLAN() / ETH / Q4)
    assert isinstance(r, IPPacket) and r.sport == 53


# --- less common link types and tunnels (decode.linkmore, pcaps/make_linkmore.py) -----
def _linkmore_frames() -> list[tuple[int, str, bytes]]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_linkmore", PCAPS / "make_linkmore.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    frames: list[tuple[int, str, bytes]] = mod.frames()
    return frames


MORE = _linkmore_frames()


def _more_decode(linktype: int, data: bytes) -> IPPacket | Fragment | None:
    return decode(linktype, data) if linktype in link.LINKTYPES else linkmore.decode(linktype, data)


@pytest.mark.parametrize("i", range(len(MORE)), ids=[f"{lt}-{name}" for lt, name, _ in MORE])
def test_less_common_link_types_reach_the_dns_query(i: int) -> None:
    linktype, _name, frame = MORE[i]
    r = _more_decode(linktype, frame)
    if i == 2:  # the protected (encrypted) 802.11 frame
        assert r is None
        return
    assert isinstance(r, IPPacket) and r.proto == "udp" and r.dport == 53
    assert r.src in ("10.0.0.5", "2001:db8:1::5") and b"example" in r.payload


def test_ppi_does_not_recurse_into_itself() -> None:
    frame = struct.pack("<BBHI", 0, 0, 8, 192) * 50
    assert linkmore.decode(192, frame) is None


@settings(max_examples=800, deadline=None)
@given(
    which=st.integers(0, len(MORE) - 1),
    edits=st.lists(st.tuples(st.integers(0, 500), st.integers(0, 255)), min_size=1, max_size=5),
    cut=st.integers(0, 500),
)
def test_fuzz_less_common_link_types_never_raise(which: int, edits: list[tuple[int, int]], cut: int) -> None:
    linktype, _name, frame = MORE[which]
    blob = bytearray(frame)
    for pos, val in edits:
        blob[pos % len(blob)] = val
    r = _more_decode(linktype, bytes(blob[:cut]) if cut < len(blob) else bytes(blob))
    assert r is None or isinstance(r, IPPacket | Fragment)


@settings(max_examples=300, deadline=None)
@given(linktype=st.sampled_from(sorted(linkmore.LINKTYPES)), data=st.binary(max_size=200))
def test_fuzz_random_bytes_less_common_link_types(linktype: int, data: bytes) -> None:
    r = linkmore.decode(linktype, data)
    assert r is None or isinstance(r, IPPacket | Fragment)
