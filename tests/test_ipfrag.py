"""decode.ipfrag: reassembly in any order, overlaps, caps, expiry, tunnels, and
the public corpus's fragmented DNS answers against tshark's expected events."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import IP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import GRE, Ether
from scapy.packet import Packet

from egresswatch.capture.pcapfile import read_frames
from egresswatch.decode.ipfrag import Defragmenter
from egresswatch.decode.link import decode
from egresswatch.decode.wire import Fragment
from egresswatch.model import IPPacket


def corpus_dir() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


CORPUS = corpus_dir()

BIG_ANSWER = DNS(
    id=9,
    qr=1,
    qd=DNSQR(qname="big.example.com", qtype="TXT"),
    an=[DNSRR(rrname="big.example.com", type="TXT", rdata=[b"x" * 200]) for _ in range(8)],
)
UDP4 = IP(src="10.9.9.53", dst="10.1.2.3", id=777) / UDP(sport=53, dport=40000) / BIG_ANSWER
UDP6 = IPv6(src="2001:db8::53", dst="2001:db8::1") / IPv6ExtHdrFragment(id=4242) / UDP(sport=53, dport=40001)
UDP6 = UDP6 / BIG_ANSWER
ANSWER_BYTES = bytes(BIG_ANSWER)


def frags4(pkt: Packet = UDP4, size: int = 304) -> list[Fragment]:
    out = []
    for p in fragment(IP(bytes(pkt)), fragsize=size):
        r = decode(101, bytes(p))
        assert isinstance(r, Fragment)
        out.append(r)
    return out


def frags6() -> list[Fragment]:
    out = []
    for p in fragment6(IPv6(bytes(UDP6)), 500):
        r = decode(101, bytes(p))
        assert isinstance(r, Fragment)
        out.append(r)
    return out


def feed_all(d: Defragmenter, frags: list[Fragment], ts: float = 100.0) -> list[tuple[int, IPPacket]]:
    done = []
    for i, f in enumerate(frags):
        r = d.feed(f, ts + i * 0.001)
        if r is not None:
            done.append((i, r))
    return done


@pytest.mark.parametrize("order", ["forward", "reverse", "shuffled"])
@pytest.mark.parametrize("version", [4, 6])
def test_reassembles_in_any_order(order: str, version: int) -> None:
    frags = frags4() if version == 4 else frags6()
    assert len(frags) >= 3
    if order == "reverse":
        frags.reverse()
    elif order == "shuffled":
        random.Random(1).shuffle(frags)
    d = Defragmenter()
    done = feed_all(d, frags)
    assert len(done) == 1
    idx, pkt = done[0]
    assert idx == len(frags) - 1  # reported on the fragment that completes it
    assert pkt.payload == ANSWER_BYTES and pkt.proto == "udp" and pkt.sport == 53
    assert pkt.ip_version == version
    assert d.counters["fragments"] == len(frags) and d.counters["reassembled"] == 1
    assert len(d) == 0


def test_duplicates_and_overlaps_first_wins() -> None:
    base = dict(ip_version=4, src="1.1.1.1", dst="2.2.2.2", ident=5, proto_number=17)
    hdr = bytes(UDP(sport=53, dport=999, len=8 + 24, chksum=0))
    d = Defragmenter()
    assert d.feed(Fragment(**base, offset_bytes=0, more_fragments=True, data=hdr + b"A" * 8), 1.0) is None
    assert d.feed(Fragment(**base, offset_bytes=0, more_fragments=True, data=hdr + b"A" * 8), 1.0) is None
    # overlaps the first fragment's tail with different bytes: the first ones stay
    assert d.feed(Fragment(**base, offset_bytes=8, more_fragments=True, data=b"B" * 16), 1.0) is None
    r = d.feed(Fragment(**base, offset_bytes=24, more_fragments=False, data=b"C" * 8), 1.0)
    assert isinstance(r, IPPacket)
    assert r.payload == b"A" * 8 + b"B" * 8 + b"C" * 8
    assert d.counters["dropped_overlap"] == 2


def test_conflicting_last_fragment_keeps_first_data() -> None:
    base = dict(ip_version=4, src="1.1.1.1", dst="2.2.2.2", ident=6, proto_number=17)
    d = Defragmenter()
    d.feed(Fragment(**base, offset_bytes=16, more_fragments=True, data=b"z" * 16), 1.0)
    # claims the datagram ends at 8 although bytes up to 32 are held
    assert d.feed(Fragment(**base, offset_bytes=0, more_fragments=False, data=b"y" * 8), 1.0) is None
    assert d.counters["dropped_overlap"] == 1


def test_different_datagrams_do_not_mix() -> None:
    a = frags4()
    b = frags4(IP(src="10.9.9.53", dst="10.1.2.3", id=778) / UDP(sport=53, dport=40002) / BIG_ANSWER)
    d = Defragmenter()
    mixed = [x for pair in zip(a, b, strict=True) for x in pair]
    done = feed_all(d, mixed)
    assert sorted(p.dport for _, p in done) == [40000, 40002]


def test_expiry_uses_frame_time() -> None:
    frags = frags4()
    d = Defragmenter(timeout=30.0)
    d.feed(frags[0], 1000.0)
    assert d.feed(frags[1], 1029.0) is None
    assert len(d) == 1
    for f in frags[2:]:
        assert d.feed(f, 1031.5) is None  # the datagram expired before these arrived
    assert d.counters["expired"] == 1


def test_max_datagrams_evicts_oldest() -> None:
    d = Defragmenter(max_datagrams=2)
    for ident in (1, 2, 3):
        d.feed(Fragment(4, "1.1.1.1", "2.2.2.2", ident, 0, True, 17, b"a" * 8), 1.0)
    assert len(d) == 2 and d.counters["dropped_cap"] == 1
    # ident 1 was evicted: its last fragment cannot complete it
    assert d.feed(Fragment(4, "1.1.1.1", "2.2.2.2", 1, 8, False, 17, b"b" * 8), 1.0) is None


def test_max_bytes_and_max_fragments() -> None:
    d = Defragmenter()
    assert d.feed(Fragment(4, "1.1.1.1", "2.2.2.2", 1, 65528, False, 17, b"a" * 16), 1.0) is None
    assert d.counters["dropped_cap"] == 1
    d = Defragmenter(max_fragments=4)
    for i in range(6):
        d.feed(Fragment(4, "1.1.1.1", "2.2.2.2", 2, 8 * (i + 1), True, 17, b"a" * 8), 1.0)
    assert d.counters["dropped_cap"] >= 1 and len(d) <= 1


def test_total_buffer_cap() -> None:
    d = Defragmenter(max_total_bytes=4000)
    for ident in range(10):
        d.feed(Fragment(4, "1.1.1.1", "2.2.2.2", ident, 0, True, 17, b"a" * 1000), 1.0)
    assert len(d) <= 4 and d.counters["dropped_cap"] >= 6


def test_truncated_fragment_is_dropped() -> None:
    d = Defragmenter()
    assert d.feed(Fragment(4, "1.1.1.1", "2.2.2.2", 1, 0, True, 17, b"a" * 8, truncated=True), 1.0) is None
    assert d.counters["dropped_truncated"] == 1 and len(d) == 0


def test_fragmented_gre_tunnel_gives_inner_dns() -> None:
    inner = IP(src="10.1.2.3", dst="10.9.9.53") / UDP(sport=5000, dport=53) / BIG_ANSWER
    outer = IP(src="192.0.2.1", dst="192.0.2.2", id=31) / GRE() / inner
    d = Defragmenter()
    done = feed_all(d, frags4(outer, 400))
    assert len(done) == 1
    pkt = done[0][1]
    assert (pkt.src, pkt.dst, pkt.dport, pkt.payload) == ("10.1.2.3", "10.9.9.53", 53, ANSWER_BYTES)


def test_non_udp_tcp_reassembly_gives_none() -> None:
    d = Defragmenter()
    frags = frags4(IP(src="1.1.1.1", dst="2.2.2.2", id=3, proto=1) / (b"\x08\x00" + b"p" * 900), 304)
    assert feed_all(d, frags) == []
    assert d.counters["reassembled"] == 1


@settings(max_examples=200, deadline=None)
@given(seed=st.integers(0, 2**32), dup=st.integers(0, 3), version=st.sampled_from([4, 6]))
def test_fuzz_permutations_with_duplicates(seed: int, dup: int, version: int) -> None:
    frags = frags4() if version == 4 else frags6()
    rng = random.Random(seed)
    seq = frags + [rng.choice(frags) for _ in range(dup)]
    rng.shuffle(seq)
    d = Defragmenter()
    done = feed_all(d, seq)
    assert len(done) >= 1
    assert done[0][1].payload == ANSWER_BYTES


FRAG = st.builds(
    Fragment,
    ip_version=st.sampled_from([4, 6]),
    src=st.sampled_from(["1.1.1.1", "::1"]),
    dst=st.just("2.2.2.2"),
    ident=st.integers(0, 3),
    offset_bytes=st.integers(0, 70000).map(lambda x: x & ~7),
    more_fragments=st.booleans(),
    proto_number=st.sampled_from([17, 6, 47, 4, 41, 1]),
    data=st.binary(max_size=64),
    truncated=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(frags=st.lists(FRAG, max_size=30), times=st.lists(st.floats(0, 100), min_size=30, max_size=30))
def test_fuzz_arbitrary_fragments_never_raise(frags: list[Fragment], times: list[float]) -> None:
    d = Defragmenter(max_datagrams=4)
    for f, t in zip(frags, sorted(times), strict=False):
        r = d.feed(f, t)
        assert r is None or isinstance(r, IPPacket)
    assert len(d) <= 4


# --- public corpus ---------------------------------------------------------------------
FRAG_FILES = [
    "public/zeek/ipv6-fragmented-dns.pcap",
    "public/zeek/dns-edns-ecs.pcap",
    "public/ndpi/dns_fragmented.pcap",
]


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")
@pytest.mark.parametrize("name", FRAG_FILES)
def test_corpus_fragmented_dns_matches_tshark_frames(name: str) -> None:
    path = CORPUS / name
    expected_file = (
        CORPUS / "public" / "expected" / (name.removeprefix("public/").replace("/", "__") + ".jsonl")
    )
    expected = {}
    for line in expected_file.read_text().splitlines():
        e = json.loads(line)
        expected.setdefault(e["frame"], set()).add((e["src"], e["dst"], e["sport"], e["dport"]))
    d = Defragmenter()
    fragment_frames = set()
    ours = {}
    for fr in read_frames(path):
        r = decode(fr.linktype, fr.data)
        if isinstance(r, Fragment):
            fragment_frames.add(fr.index)
            pkt = d.feed(r, fr.ts)
            if pkt is not None:
                ours[fr.index] = (pkt.src, pkt.dst, pkt.sport, pkt.dport)
    assert ours, "no datagram reassembled"
    for frame, tup in ours.items():
        assert tup in expected.get(frame, set()), frame
    # every tshark event on a fragment frame is one we reassembled on that frame
    assert {f for f in expected if f in fragment_frames} == set(ours)


def test_ethernet_wrapped_fragments() -> None:
    d = Defragmenter()
    results = [
        d.feed(r, 1.0)
        for p in fragment(UDP4, fragsize=304)
        if isinstance(r := decode(1, bytes(Ether() / p)), Fragment)
    ]
    assert [type(x).__name__ for x in results][-1] == "IPPacket"


GOLDEN = Path(__file__).resolve().parents[1] / "pcaps"


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")
def test_golden_ipv6_ext_frag_matches_tshark() -> None:
    """Both fragmented answers (IPv6, and IPv4 in reverse order) complete on tshark's frames."""
    path = GOLDEN / "ipv6-ext-frag.pcap"
    args = ["tshark", "-n", "-r", str(path), "-Y", "dns", "-T", "fields", "-E", "occurrence=l"]
    for f in ("frame.number", "udp.srcport", "udp.dstport"):
        args += ["-e", f]
    out = subprocess.run(args, capture_output=True, text=True, check=True).stdout
    expected = {(int(n), int(s), int(d)) for n, s, d in (line.split("\t") for line in out.splitlines())}
    d = Defragmenter()
    ours = set()
    for fr in read_frames(path):
        r = decode(fr.linktype, fr.data)
        if isinstance(r, Fragment):
            r = d.feed(r, fr.ts)
        if r is not None:
            ours.add((fr.index, r.sport, r.dport))
    assert ours == expected
    assert d.counters["reassembled"] == 2
