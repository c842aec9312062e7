"""The kernel capture filter, run by the real kernel.

Crafted frames are transmitted on a lab veth with a packet socket (so they pass
the capture socket's filter as PACKET_OUTGOING frames with any VLAN tags still
in the data) and raw IP packets are written into a tun device; each frame has
a unique marker (its source port, or the IP id of fragments) and the test
checks exactly which markers the filter let through.
"""

from __future__ import annotations

import fcntl
import os
import socket
import struct
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from scapy.layers.inet import ICMP, IP, TCP, UDP  # noqa: I001
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    IPv6ExtHdrSegmentRouting,
)
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether
from scapy.packet import Packet, Raw

from egresswatch.capture import bpf
from egresswatch.capture.filters import EBPF
from egresswatch.capture.gate import MAX_RECORD, follow
from egresswatch.capture.live import HelloGate, LiveSource
from tests.helpers.netlab import Lab, require_live, run, wait_for

A4, B4 = "198.18.250.1", "198.18.250.2"
A6, B6 = "fd00:e9e5:0:fa::1", "fd00:e9e5:0:fa::2"


def rnd(n: int, first: bytes = b"") -> bytes:
    body = os.urandom(n - len(first))
    # random tails must not start like a TLS record (keeps the cases deterministic)
    if not first and len(body) > 1 and body[1] == 3:
        body = b"\x00" + body[1:]
    return first + body


def hello_start(n: int) -> bytes:
    return b"\x16\x03\x01" + struct.pack("!H", 2000) + b"\x01" + os.urandom(n - 6)


def cases(incoming: bool = False) -> list[tuple[str, bool, Packet]]:
    """(name, expected to pass, L3 packet); the marker is added later. ``incoming``:
    the packets arrive at this host rather than leave it, so hello continuations
    (sent by local clients) do not pass."""
    c: list[tuple[str, bool, Packet]] = []
    # IPv6 behind extension headers: an unprivileged socket may add a routing
    # header to every packet (IPV6_RTHDR, a segment routing header)
    srh = IPv6(src=A6, dst=B6) / IPv6ExtHdrSegmentRouting(addresses=[B6], segleft=0)
    hbh = IPv6(src=A6, dst=B6) / IPv6ExtHdrHopByHop() / IPv6ExtHdrRouting() / IPv6ExtHdrDestOpt()
    for v, ip in (
        ("v4", IP(src=A4, dst=B4)),
        ("v6", IPv6(src=A6, dst=B6)),
        ("v6 srh", srh),
        ("v6 3 ext", hbh),
    ):
        c += [
            (f"{v} dns query", True, ip / UDP(dport=53) / rnd(30)),
            (f"{v} dns answer", True, ip / UDP(dport=5000) / rnd(60)),  # sport set to 53 below
            (f"{v} udp other", False, ip / UDP(dport=9999) / rnd(1000)),
            (f"{v} quic initial", True, ip / UDP(dport=443) / rnd(1250, b"\xc3\x00\x00\x00\x01")),
            (f"{v} quic-like short", False, ip / UDP(dport=443) / rnd(300, b"\xc3\x00\x00\x00\x01")),
            (f"{v} rtp", False, ip / UDP(dport=443) / rnd(1250, b"\x80\x60")),
            (f"{v} syn", True, ip / TCP(dport=8443, flags="S")),
            (f"{v} syn-ack", False, ip / TCP(dport=8443, flags="SA")),
            (f"{v} bare ack", False, ip / TCP(dport=8443, flags="A")),
            (f"{v} hello start", True, ip / TCP(dport=9999, flags="A") / hello_start(1400)),
            (f"{v} bulk segment", False, ip / TCP(dport=9999, flags="A") / rnd(1400)),
            (f"{v} hello tail", not incoming, ip / TCP(dport=9999, flags="PA") / rnd(560)),
            (f"{v} tls appdata", False, ip / TCP(dport=443, flags="PA") / rnd(100, b"\x17\x03\x03")),
            (f"{v} tls alert", False, ip / TCP(dport=443, flags="PA") / rnd(31, b"\x15\x03\x03")),
            (f"{v} long psh", False, ip / TCP(dport=9999, flags="PA") / rnd(1400)),
            # a client may write a hello's first byte, or its record header, alone; or its last byte
            (f"{v} tls first byte alone", True, ip / TCP(dport=9999, flags="PA") / b"\x16"),
            (f"{v} tls header alone", True, ip / TCP(dport=9999, flags="PA") / b"\x16\x03\x01\x07\xd0"),
            (f"{v} one byte psh", not incoming, ip / TCP(dport=9999, flags="PA") / b"\x00"),
            (f"{v} ssh", False, ip / TCP(dport=22, flags="PA") / rnd(100)),
            (f"{v} dns over tcp", True, ip / TCP(dport=53, flags="A") / rnd(40)),
            (f"{v} icmp", False, ip / ICMP()) if v == "v4" else (f"{v} no next header", False, ip / Raw(b"")),
        ]
    c += [
        ("v4 options syn", True, IP(src=A4, dst=B4, options=b"\x01\x01\x01\x00") / TCP(dport=80, flags="S")),
        ("v4 udp fragment tail", True, IP(src=A4, dst=B4, proto=17, frag=100) / rnd(200)),
        ("v4 tcp fragment tail", False, IP(src=A4, dst=B4, proto=6, frag=100) / rnd(200)),
        ("v6 udp fragment", True, IPv6(src=A6, dst=B6) / IPv6ExtHdrFragment(nh=17, offset=100) / rnd(200)),
        ("v6 srh udp fragment", True, srh / IPv6ExtHdrFragment(nh=17, offset=100) / rnd(200)),
        (
            "v6 5 ext syn (beyond V6_EXT_MAX)",
            False,
            hbh / IPv6ExtHdrDestOpt() / IPv6ExtHdrDestOpt() / TCP(dport=80, flags="S"),
        ),
    ]
    return c


def with_marker(name: str, pkt: Packet, marker: int) -> Packet:
    pkt = pkt.copy()
    if TCP in pkt:
        pkt[TCP].sport = marker
    elif UDP in pkt:
        pkt[UDP].sport = 53 if "answer" in name else marker
        if "answer" in name:
            pkt[UDP].dport = marker
    if IP in pkt:
        pkt[IP].id = marker
    if IPv6ExtHdrFragment in pkt:
        pkt[IPv6ExtHdrFragment].id = marker
    if IPv6 in pkt:
        pkt[IPv6].fl = marker
    return pkt


def marker_of(data: bytes, raw_ip: bool = False) -> int | None:
    pkt: Packet = IP(data) if raw_ip and data[0] >> 4 == 4 else IPv6(data) if raw_ip else Ether(data)
    if IP in pkt:
        return int(pkt[IP].id)
    if IPv6 in pkt:
        return int(pkt[IPv6].fl)
    return None


def collect(
    src: LiveSource, sentinel: int, raw_ip: bool = False, linktypes: set[int] | None = None
) -> set[int]:
    seen: set[int] = set()

    def poll() -> bool:
        for f in src.frames(0.2):
            if linktypes is not None:
                linktypes.add(f.linktype)
            m = marker_of(f.data, raw_ip)
            if m is not None:
                seen.add(m)
        return sentinel in seen

    wait_for(poll, 10, "sentinel frame")
    return seen


def test_program_is_accepted_by_the_kernel_verifier() -> None:
    prog = bpf.build_program()
    assert 0 < len(prog) < bpf.MAX_INSNS
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # any socket takes a filter
        assert bpf.attach(s, prog) == len(prog)
    assert len(bpf.disassemble(prog).splitlines()) == len(prog)


def test_bad_program_is_rejected() -> None:
    bad = [bpf.Insn(bpf.LD | bpf.W | bpf.MEM, 0, 0, 99)]  # scratch slot out of range, no return
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s, pytest.raises(OSError):
        bpf.attach(s, bad)


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


@pytest.mark.live
@pytest.mark.parametrize("encap", ["plain", "vlan", "qinq"])
@pytest.mark.parametrize("ebpf", [True, False], ids=["ebpf", "classic"])
def test_filter_on_ethernet(lab: Lab, encap: str, ebpf: bool) -> None:
    table = cases()
    with LiveSource(interfaces=[lab.veth_host], dedupe_window=0, hello_gate=False, ebpf=ebpf) as src:
        assert src.kernel_filter is not None and (src.kernel_filter.mode == EBPF) == ebpf, src.filter_info()
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind((lab.veth_host, 0))
        expected: dict[int, tuple[str, bool]] = {}
        for i, (name, passes, pkt) in enumerate(table):
            marker = 41000 + i
            expected[marker] = (name, passes)
            l3 = with_marker(name, pkt, marker)
            eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
            if encap == "vlan":
                frame = eth / Dot1Q(vlan=7) / l3
            elif encap == "qinq":
                frame = eth / Dot1AD(vlan=3) / Dot1Q(vlan=7) / l3
            else:
                frame = eth / l3
            tx.send(bytes(frame))
        sentinel = 41999
        tx.send(bytes(Ether() / with_marker("s", IP(src=A4, dst=B4) / TCP(dport=1, flags="S"), sentinel)))
        tx.close()
        seen = collect(src, sentinel)
    wrong = [(name, passes) for m, (name, passes) in expected.items() if (m in seen) != passes]
    assert wrong == [], f"{encap}: (case, expected to pass) decided wrongly: {wrong}"


TUNSETIFF = 0x400454CA
IFF_TUN, IFF_NO_PI = 0x0001, 0x1000


@pytest.mark.live
def test_filter_on_raw_ip_tun() -> None:
    require_live()
    name = f"ewtun{os.getpid() % 10000}"
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
        run("ip", "link", "set", name, "up")
        with LiveSource(interfaces=[name], dedupe_window=0, hello_gate=False) as src:
            expected: dict[int, tuple[str, bool]] = {}
            for i, (label, passes, pkt) in enumerate(cases(incoming=True)):  # written to tun: arriving
                marker = 42000 + i
                expected[marker] = (label, passes)
                os.write(fd, bytes(with_marker(label, pkt, marker)))
            sentinel = 42999
            os.write(fd, bytes(with_marker("s", IP(src=A4, dst=B4) / TCP(dport=1, flags="S"), sentinel)))
            frames_linktype: set[int] = set()
            seen = collect(src, sentinel, raw_ip=True, linktypes=frames_linktype)
    finally:
        os.close(fd)
        run("ip", "link", "del", name, check=False)
    assert frames_linktype == {101}
    wrong = [(label, passes) for m, (label, passes) in expected.items() if (m in seen) != passes]
    assert wrong == [], f"tun: decided wrongly: {wrong}"


@pytest.mark.live
def test_non_ip_is_dropped(lab: Lab) -> None:
    with LiveSource(interfaces=[lab.veth_host], dedupe_window=0, hello_gate=False) as src:
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind((lab.veth_host, 0))
        tx.send(bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / ARP(pdst=B4)))
        sentinel = 43999
        tx.send(bytes(Ether() / with_marker("s", IP(src=A4, dst=B4) / TCP(dport=1, flags="S"), sentinel)))
        tx.close()
        frames = []

        def poll() -> bool:
            frames.extend(src.frames(0.2))
            return any(marker_of(f.data) == sentinel for f in frames)

        wait_for(poll, 10, "sentinel")
    assert all(Ether(f.data).type in (0x0800, 0x86DD) for f in frames)


def _seg(payload: bytes, sport: int = 50000, flags: str = "PA") -> bytes:
    return bytes(Ether() / IP(src=A4, dst=B4) / TCP(sport=sport, dport=443, flags=flags) / payload)


def test_hello_gate_keeps_only_continuations_of_announced_hellos() -> None:
    gate = HelloGate(max_flows=2, ttl=5.0)
    record = b"\x16\x03\x01" + struct.pack("!H", 1999) + b"\x01" + os.urandom(1998)
    assert gate.admit(1, _seg(rnd(500)), 100.0) is False  # a bulk tail: no hello announced it
    assert gate.admit(1, _seg(record[:1448], flags="A"), 100.0) is True  # hello start: 556 bytes to come
    assert gate.admit(1, _seg(rnd(300), sport=50001), 100.0) is False  # another flow
    assert gate.admit(1, _seg(record[1448:1748]), 100.001) is True
    assert gate.admit(1, _seg(record[1748:]), 100.002) is True  # the record is complete now
    assert gate.admit(1, _seg(rnd(200)), 100.003) is False
    # DNS over TCP, SYNs and non-TCP always pass; only the continuation shape is gated
    assert gate.admit(
        1, bytes(Ether() / IP(src=A4, dst=B4) / TCP(sport=53, dport=5000, flags="PA") / rnd(50)), 1.0
    )
    assert gate.admit(1, bytes(Ether() / IP(src=A4, dst=B4) / UDP(sport=5, dport=443) / rnd(50)), 1.0)


def test_hello_gate_expires_and_is_bounded() -> None:
    gate = HelloGate(max_flows=2, ttl=1.0)
    start = b"\x16\x03\x01\x07\xd0\x01" + os.urandom(1000)  # announces 2000 bytes, carries 1000
    gate.admit(1, _seg(start, sport=1), 10.0)
    assert gate.admit(1, _seg(rnd(100), sport=1), 11.5) is False  # too late
    for port in (2, 3, 4):
        gate.admit(1, _seg(start, sport=port), 20.0)
    assert len(gate.pending) == 2 and gate.admit(1, _seg(rnd(100), sport=2), 20.1) is False  # evicted oldest
    assert gate.admit(1, _seg(rnd(100), sport=4), 20.1) is True


def test_hello_gate_follows_a_hello_however_its_writes_cut_it() -> None:
    """The writes an attacker chooses: the record's first byte alone, its header
    cut, a full-size middle, a second record starting mid-segment; each later
    segment keeps its flow another ``ttl`` (a slow drip is followed)."""
    msg = b"\x01" + (1995).to_bytes(3, "big") + os.urandom(1995)
    one = b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg
    two = (
        b"\x16\x03\x01\x00\x64" + msg[:100] + b"\x16\x03\x01" + struct.pack("!H", len(msg) - 100) + msg[100:]
    )
    for port, (record, cuts) in enumerate(
        [(one, [1, 3, 1000]), (one, [5, 600, 2048]), (two, [50, 200, 1100]), (two, [50, 1450])], start=60000
    ):
        gate = HelloGate(ttl=5.0)
        ends = [*cuts, len(record)]
        for i, (a, b) in enumerate(zip([0, *cuts], ends, strict=True)):
            assert gate.admit(1, _seg(record[a:b], sport=port), 100.0 + 4 * i), (port, a, b)
        t, after = 100.0 + 4 * len(ends), 0
        while gate.admit(1, _seg(rnd(1000), sport=port), t):  # the hello is over: bulk stays out ...
            after += 1000
        # ... at once, or, when the first write cut the record header (its length
        # unknown there), once the largest record could have ended
        assert after == 0 or (cuts[0] < 5 and after <= 5 + MAX_RECORD), (port, after)
    # a hello record that its segment completes, then bulk: nothing kept
    one = b"\x16\x03\x01" + struct.pack("!H", len(msg)) + msg
    gate = HelloGate()
    assert gate.admit(1, _seg(b"\x16\x03\x01\x00\x10\x01" + os.urandom(15)), 1.0)
    assert gate.admit(1, _seg(rnd(100)), 1.1) is False
    # TCP Fast Open: the hello starts in the SYN
    gate.admit(1, _seg(one[:1000], sport=8, flags="S"), 3.0)
    assert gate.admit(1, _seg(one[1000:], sport=8), 3.1) is True
    assert gate.admit(1, _seg(rnd(100), sport=8), 3.2) is False
    # not a ClientHello (a TLS 1.2 client key exchange): no state
    gate.admit(1, _seg(b"\x16\x03\x03\x07\xd0\x10" + os.urandom(100), sport=7), 2.0)
    assert gate.admit(1, _seg(rnd(100), sport=7), 2.1) is False


@given(st.binary(min_size=1, max_size=64), st.integers(min_value=0, max_value=70000))
def test_follow_stays_within_the_segment_and_the_largest_record(p: bytes, m: int) -> None:
    out = follow(p, m)
    assert -1 <= out <= max(m, 5 + MAX_RECORD)
    if m > len(p):
        assert out == m - len(p)  # a segment inside a record only counts its bytes down
    if out > 0 and m <= len(p):  # the bytes owed are a record's that started in p, after m
        assert p[m] == 0x16, (p, m)
