"""The capture's fast lane: a data-carrying DNS query or a whole ClientHello jumps a queued flood."""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator

import pytest
from dnslib import DNSRecord
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6, IPv6ExtHdrSegmentRouting
from scapy.layers.l2 import Dot1Q, Ether

from egresswatch.capture.fastlane import jumps_queue, long_label_query, whole_client_hello
from egresswatch.capture.live import LiveSource
from tests.helpers.netlab import Lab, wait_for

LONG = "nbswy3dpeb3w64tmmqqgc3dpnfzhgzlsmvxgizlsnb2gk4tfnzqxi"  # 53 bytes


def query(name: str) -> bytes:
    return DNSRecord.question(name).pack()


def test_predicate_on_real_frames() -> None:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    ip4 = IP(src="10.0.0.2", dst="10.0.0.53")
    for frame, linktype in [
        (eth / ip4 / UDP(sport=40000, dport=53) / query(f"{LONG}.x.test"), 1),
        (eth / Dot1Q(vlan=7) / ip4 / UDP(sport=40000, dport=53) / query(f"a.{LONG}.x.test"), 1),
        (
            IPv6(src="2001:db8::2", dst="2001:db8::53")
            / UDP(sport=40000, dport=53)
            / query(f"{LONG}.x.test"),
            101,
        ),
        (  # behind a routing header, which an unprivileged socket may add (IPV6_RTHDR)
            eth
            / IPv6(src="2001:db8::2", dst="2001:db8::53")
            / IPv6ExtHdrSegmentRouting(addresses=["2001:db8::53"], segleft=0)
            / UDP(sport=40000, dport=53)
            / query(f"{LONG}.x.test"),
            1,
        ),
    ]:
        assert long_label_query(linktype, bytes(frame), 40)
    assert not long_label_query(1, bytes(eth / ip4 / UDP(sport=40000, dport=53) / query("short.x.test")), 40)
    assert not long_label_query(
        1, bytes(eth / ip4 / UDP(sport=53, dport=40000) / query(f"{LONG}.x.test")), 40
    )
    assert not long_label_query(
        1, bytes(eth / ip4 / UDP(sport=40000, dport=53) / query(f"{LONG}.x.test"))[:60], 40
    )
    assert not long_label_query(1, b"", 40)


def client_hello(sni: str) -> bytes:
    """The first flight of a real TLS client (Python's ssl): one ClientHello record."""
    ctx = ssl.create_default_context()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), out := ssl.MemoryBIO(), server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def test_a_whole_client_hello_jumps_and_a_split_one_does_not() -> None:
    eth = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    hello = client_hello("upload.exfil.test")
    assert hello[0] == 0x16 and hello[5] == 1
    tcp = TCP(
        sport=40000, dport=443, flags="PA", options=[("NOP", None), ("NOP", None), ("Timestamp", (1, 2))]
    )
    for frame, linktype in [
        (eth / IP(src="10.0.0.2", dst="10.0.0.9") / tcp / hello, 1),
        (eth / Dot1Q(vlan=7) / IP(src="10.0.0.2", dst="10.0.0.9") / tcp / hello, 1),
        (IPv6(src="2001:db8::2", dst="2001:db8::9") / TCP(sport=40000, dport=8443, flags="PA") / hello, 101),
        (
            IPv6(src="2001:db8::2", dst="2001:db8::9")
            / IPv6ExtHdrSegmentRouting(addresses=["2001:db8::9"], segleft=0)
            / TCP(sport=40000, dport=443, flags="PA")
            / hello,
            101,
        ),
    ]:
        assert whole_client_hello(linktype, bytes(frame)) and jumps_queue(linktype, bytes(frame), 40)
    whole = bytes(eth / IP(src="10.0.0.2", dst="10.0.0.9") / tcp / hello)
    assert not whole_client_hello(1, whole[:-1])  # the hello's end is in a later segment
    assert not whole_client_hello(1, bytes(eth / IP() / TCP(flags="S")))  # a SYN
    assert not whole_client_hello(
        1, bytes(eth / IP() / TCP(flags="PA") / (b"\x17\x03\x03\x00\x05" + b"x" * 5))
    )
    assert not whole_client_hello(1, bytes(eth / IP() / UDP(dport=443) / hello))  # not TCP
    assert not jumps_queue(1, bytes(eth / IP() / UDP(sport=40000, dport=53) / query("short.x.test")), 40)
    assert not whole_client_hello(1, b"")


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def test_a_long_label_query_jumps_the_queued_flood(lab: Lab) -> None:
    with LiveSource(interfaces=[lab.veth_host]) as src:
        src.priority = lambda linktype, data: long_label_query(linktype, data, 40)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i in range(6000):  # nobody reads: the ring queues them in blocks
                s.sendto(query(f"q{i}.flood.test"), (lab.peer4, 53))
            s.sendto(query(f"{LONG}.exfil.test"), (lab.peer4, 53))
            for i in range(6000, 6100):
                s.sendto(query(f"q{i}.flood.test"), (lab.peer4, 53))
        wait_for(lambda: src._ring is not None and src._ring.ready(2), 5, "blocks queued")
        names: list[str] = []

        def read() -> bool:
            for f in src.frames(0.2):
                payload = f.data[42:]
                try:
                    names.append(str(DNSRecord.parse(payload).q.qname).rstrip("."))
                except Exception:
                    continue
            return len(names) >= 6101

        wait_for(read, 20, "every query read")
    where = names.index(f"{LONG}.exfil.test")
    assert where < 6000 - 1000, where  # handed over before most of the flood queued ahead of it
    assert names.count(f"{LONG}.exfil.test") == 1 and src.counters["fast_lane"] == 1
    assert sorted(n for n in names if n.startswith("q")) == sorted(f"q{i}.flood.test" for i in range(6100))
