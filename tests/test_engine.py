"""The decode engine (egresswatch.decode.engine): frames -> observations."""

from __future__ import annotations

import struct
import subprocess
import sys
from pathlib import Path

import pytest
from dnslib import RR, DNSRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.inet import IP, TCP, UDP
from scapy.layers.inet6 import IPv6
from scapy.layers.l2 import Ether
from scapy.packet import Packet

from egresswatch.capture.pcapfile import read_frames
from egresswatch.decode.engine import Engine
from egresswatch.decode.tcpflows import TLS_CAP
from egresswatch.model import Frame, IPPacket, Observation
from tests.test_tls import build_hello, python_hello, records

CLIENT, SERVER = "10.0.0.2", "192.0.2.10"
ETH = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")


def frames_of(pkts: list[Packet], t0: float = 1000.0) -> list[Frame]:
    return [Frame(ts=t0 + i * 0.01, data=bytes(p), linktype=1, index=i + 1) for i, p in enumerate(pkts)]


def run(pkts: list[Packet], engine: Engine | None = None, finish: bool = True) -> list[Observation]:
    eng = engine or Engine()
    out: list[Observation] = []
    for fr in frames_of(pkts):
        out += eng.feed(fr)
    if finish:
        out += eng.finish()
    return out


def tcp(
    sport: int, dport: int, flags: str, seq: int, payload: bytes = b"", v6: bool = False, rev: bool = False
) -> Packet:
    src, dst = (SERVER, CLIENT) if rev else (CLIENT, SERVER)
    ip = IPv6(src="2001:db8::2", dst="2001:db8::10") if v6 else IP(src=src, dst=dst)
    return ETH / ip / TCP(sport=sport, dport=dport, flags=flags, seq=seq, ack=1) / payload


def udp(sport: int, dport: int, payload: bytes, rev: bool = False) -> Packet:
    src, dst = (SERVER, CLIENT) if rev else (CLIENT, SERVER)
    return ETH / IP(src=src, dst=dst) / UDP(sport=sport, dport=dport) / payload


def kinds(obs: list[Observation]) -> list[tuple[int, str, str | None]]:
    return [
        (o.frame, o.kind, o.sni if o.kind in ("tls_sni", "tls_incomplete", "quic_sni") else o.qname)
        for o in obs
    ]


ISN = 1000


def hello_segments(msg: bytes, sizes: tuple[int, ...]) -> list[tuple[int, bytes]]:
    stream = records(msg)
    out, off = [], 0
    for n in sizes:
        out.append((ISN + 1 + off, stream[off : off + n]))
        off += n
    out.append((ISN + 1 + off, stream[off:]))
    return [(s, d) for s, d in out if d]


# -- DNS ------------------------------------------------------------------------------


def test_dns_udp_query_and_answer() -> None:
    q = DNSRecord.question("www.example.com", "A")
    a = q.reply()
    a.add_answer(*RR.fromZone("www.example.com. 60 IN CNAME edge.example.net."))
    a.add_answer(*RR.fromZone("edge.example.net. 60 IN A 192.0.2.33"))
    obs = run([udp(40000, 53, bytes(q.pack())), udp(53, 40000, bytes(a.pack()), rev=True)])
    assert [o.kind for o in obs] == ["dns_query", "dns_answer"]
    query, ans = obs
    assert (query.src, query.sport, query.dport, query.proto, query.qtype) == (CLIENT, 40000, 53, "udp", 1)
    assert ans.answers == ("edge.example.net", "192.0.2.33") and ans.dns_id == q.header.id
    assert ans.records[1].data == "192.0.2.33" and ans.frame == 2 and ans.ts == pytest.approx(1000.01)
    assert ans.local() == (CLIENT, 40000)


def test_mdns_and_llmnr_are_not_dns() -> None:
    q = bytes(DNSRecord.question("printer.local", "A").pack())
    assert run([udp(5353, 5353, q), udp(5355, 5355, q)]) == []


def test_dns_header_too_short_is_counted() -> None:
    eng = Engine()
    assert run([udp(40000, 53, b"\x00\x01\x02")], eng) == []
    assert eng.counters["malformed_dns"] == 1


def _tcp_dns(msgs: list[bytes]) -> bytes:
    return b"".join(struct.pack("!H", len(m)) + m for m in msgs)


def test_dns_over_tcp_split_and_batched_both_directions() -> None:
    q1 = bytes(DNSRecord.question("one.example", "A").pack())
    q2 = bytes(DNSRecord.question("two.example", "AAAA").pack())
    r1 = DNSRecord.parse(q1).reply()
    r1.add_answer(*RR.fromZone("one.example. 5 IN A 192.0.2.1"))
    a1 = bytes(r1.pack())
    cs, ss = _tcp_dns([q1, q2]), _tcp_dns([a1])
    pkts = [
        tcp(41000, 53, "S", ISN),
        tcp(53, 41000, "SA", 5000, rev=True),
        tcp(41000, 53, "PA", ISN + 1, cs),  # two queries in one segment
        tcp(53, 41000, "PA", 5001, ss[:5], rev=True),  # answer split in three
        tcp(53, 41000, "PA", 5001 + 5, ss[5:20], rev=True),
        tcp(53, 41000, "PA", 5001 + 20, ss[20:], rev=True),
    ]
    obs = [o for o in run(pkts) if o.kind != "connect"]
    assert kinds(obs) == [
        (3, "dns_query", "one.example"),
        (3, "dns_query", "two.example"),
        (6, "dns_answer", "one.example"),
    ]
    assert obs[2].proto == "tcp" and obs[2].answers == ("192.0.2.1",)


def test_dns_over_tcp_without_handshake_and_reordered() -> None:
    q = bytes(DNSRecord.question("late.example", "TXT").pack())
    s = _tcp_dns([q])
    pkts = [
        tcp(41001, 53, "PA", 77, s[:4]),
        tcp(41001, 53, "PA", 77 + 10, s[10:]),
        tcp(41001, 53, "PA", 77 + 4, s[4:10]),
    ]
    assert kinds(run(pkts)) == [(3, "dns_query", "late.example")]


# -- TLS ------------------------------------------------------------------------------


def test_single_segment_hello_and_connect() -> None:
    rec = python_hello("single.example")
    obs = run(
        [tcp(50000, 443, "S", ISN), tcp(443, 50000, "SA", 9, rev=True), tcp(50000, 443, "PA", ISN + 1, rec)]
    )
    assert kinds(obs) == [(1, "connect", None), (3, "tls_sni", "single.example")]
    hello = obs[1]
    assert hello.alpn == ("h2", "http/1.1") and 0x0304 in hello.tls_versions and not hello.ech
    assert (hello.src, hello.sport, hello.dst, hello.dport, hello.proto) == (
        CLIENT,
        50000,
        SERVER,
        443,
        "tcp",
    )


def test_pq_hello_two_segments_sni_in_second() -> None:
    msg = build_hello("second-half.example", key_share=1400, sni_first=False)
    segs = hello_segments(msg, (1448,))
    pkts = [tcp(50001, 443, "S", ISN)] + [tcp(50001, 443, "PA", s, d) for s, d in segs]
    assert kinds(run(pkts)) == [(1, "connect", None), (3, "tls_sni", "second-half.example")]


def test_reordered_retransmitted_overlapping_hello_reported_once() -> None:
    msg = build_hello("shuffled.example", key_share=1400, ech=True)
    segs = hello_segments(msg, (600, 600))  # three segments
    (s1, d1), (s2, d2), (s3, d3) = segs
    pkts = [
        tcp(50002, 8443, "S", ISN),
        tcp(50002, 8443, "PA", s3, d3),  # last first
        tcp(50002, 8443, "PA", s1, d1),
        tcp(50002, 8443, "PA", s1, d1),  # retransmission
        tcp(50002, 8443, "PA", s1 + 300, d1[300:] + d2[:100]),  # overlap
        tcp(50002, 8443, "PA", s2, d2),  # fills the hole: event here
        tcp(50002, 8443, "PA", s1, d1 + d2 + d3),  # full retransmission later
    ]
    obs = run(pkts)
    assert kinds(obs) == [(1, "connect", None), (6, "tls_sni", "shuffled.example")]
    assert obs[1].ech


def test_hello_without_syn_on_nonstandard_port() -> None:
    obs = run([tcp(50003, 2083, "PA", 123456, records(build_hello("odd-port.example")))])
    assert kinds(obs) == [(1, "tls_sni", "odd-port.example")]


def test_hello_without_sni_is_reported_like_tshark() -> None:
    obs = run([tcp(50004, 443, "PA", 5, records(build_hello(None)))])
    assert kinds(obs) == [(1, "tls_sni", None)]


def test_incomplete_hello_on_fin_keeps_first_part_sni() -> None:
    msg = build_hello("cut-short.example", key_share=1400)
    (s1, d1), _ = hello_segments(msg, (700,))
    obs = run([tcp(50005, 443, "S", ISN), tcp(50005, 443, "PA", s1, d1), tcp(50005, 443, "FA", s1 + len(d1))])
    assert kinds(obs) == [(1, "connect", None), (3, "tls_incomplete", "cut-short.example")]
    assert obs[1].note is not None and "FIN" in obs[1].note


def test_incomplete_hello_on_rst_from_server_and_at_finish() -> None:
    msg = build_hello("reset.example", key_share=1400)
    (s1, d1), _ = hello_segments(msg, (700,))
    obs = run([tcp(50006, 443, "PA", s1, d1), tcp(443, 50006, "R", 1, rev=True)])
    assert kinds(obs) == [(2, "tls_incomplete", "reset.example")]
    assert obs[0].note is not None and "reset" in obs[0].note
    obs2 = run([tcp(50007, 443, "PA", s1, d1)])
    assert kinds(obs2) == [(1, "tls_incomplete", "reset.example")]
    assert obs2[0].note is not None and "capture ended" in obs2[0].note


def test_incomplete_hello_expires_by_frame_time() -> None:
    msg = build_hello("slow.example", key_share=1400)
    (s1, d1), _ = hello_segments(msg, (700,))
    eng = Engine(flow_timeout=5.0)
    first = eng.feed(frames_of([tcp(50008, 443, "PA", s1, d1)])[0])
    later = Frame(ts=1100.0, data=bytes(udp(1, 2, b"x")), linktype=1, index=2)
    expired = eng.feed(later)
    assert first == [] and kinds(expired) == [(2, "tls_incomplete", "slow.example")]
    assert eng.finish() == []


def test_hello_after_starttls_connect_and_socks_preambles() -> None:
    for preamble in (
        b"EHLO me\r\nSTARTTLS\r\n",
        b"CONNECT proxied.example:443 HTTP/1.1\r\nHost: proxied.example\r\n\r\n",
        b"\x05\x01\x00\x05\x01\x00\x03\x0fproxied.example\x01\xbb",
    ):
        stream = preamble + records(build_hello("proxied.example"))
        pkts = [
            tcp(50010, 1080, "S", ISN),
            tcp(50010, 1080, "PA", ISN + 1, stream[:10]),
            tcp(50010, 1080, "PA", ISN + 11, stream[10:]),
        ]
        assert kinds(run(pkts)) == [(1, "connect", None), (3, "tls_sni", "proxied.example")], preamble


def test_second_hello_after_hello_retry_request() -> None:
    h1 = records(build_hello("hrr.example"))
    ccs = b"\x14\x03\x03\x00\x01\x01"
    h2 = records(build_hello("hrr.example", alpn=("h2",)))
    appdata = b"\x17\x03\x03\x00\x05hello"
    pkts = [
        tcp(50011, 443, "S", ISN),
        tcp(50011, 443, "PA", ISN + 1, h1),
        tcp(50011, 443, "PA", ISN + 1 + len(h1), ccs + h2),
        tcp(50011, 443, "PA", ISN + 1 + len(h1) + len(ccs) + len(h2), appdata),
        tcp(50011, 443, "PA", ISN + 1, h1),  # late retransmission: not reported again
    ]
    obs = run(pkts)
    assert kinds(obs) == [(1, "connect", None), (2, "tls_sni", "hrr.example"), (3, "tls_sni", "hrr.example")]
    assert obs[2].alpn == ("h2",)


def test_no_hello_in_first_bytes_gives_up_at_cap() -> None:
    eng = Engine()
    chunk = b"x" * 1000
    pkts = [tcp(50012, 80, "S", ISN)] + [
        tcp(50012, 80, "PA", ISN + 1 + i * 1000, chunk) for i in range(TLS_CAP // 1000 + 3)
    ]
    assert kinds(run(pkts, eng)) == [(1, "connect", None)]
    # a hello after the cap is not looked for
    late = tcp(50012, 80, "PA", ISN + 1 + 40000, records(build_hello("late.example"))[:5] + b"zz")
    assert run([late], eng) == []


# -- connect --------------------------------------------------------------------------


def test_connect_syn_retransmit_synack_and_ipv6() -> None:
    pkts = [
        tcp(50020, 443, "S", ISN),
        tcp(50020, 443, "S", ISN),  # retransmitted SYN
        tcp(443, 50020, "SA", 77, rev=True),  # SYN-ACK: not a connect
        tcp(50021, 22, "S", 5, v6=True),
        tcp(50020, 443, "S", ISN + 99999),  # new connection on the same ports
    ]
    eng = Engine()
    obs = run(pkts, eng)
    assert kinds(obs) == [(1, "connect", None), (4, "connect", None), (5, "connect", None)]
    assert (obs[1].src, obs[1].dport, obs[1].proto) == ("2001:db8::2", 22, "tcp")
    assert eng.counters["syn_retransmitted"] == 1


# -- engine-wide ----------------------------------------------------------------------


def test_counters_non_ip_and_frames() -> None:
    eng = Engine()
    eng.feed(Frame(ts=1.0, data=b"\x00" * 20, linktype=1, index=1))
    eng.finish()
    assert eng.counters["frames"] == 1 and eng.counters["non_ip"] == 1


def test_flow_table_cap_evicts_with_incomplete_report() -> None:
    msg = build_hello("evicted.example", key_share=1400)
    (s1, d1), _ = hello_segments(msg, (700,))
    eng = Engine(max_flows=1)
    obs = run([tcp(50030, 443, "PA", s1, d1), tcp(50031, 443, "S", ISN)], eng)
    assert kinds(obs) == [(2, "connect", None), (2, "tls_incomplete", "evicted.example")]
    assert eng.counters["flows_evicted"] == 1


def test_deterministic_output() -> None:
    msg = build_hello("det.example", key_share=1400)
    segs = hello_segments(msg, (500, 500))
    q = bytes(DNSRecord.question("det.example", "A").pack())
    pkts = (
        [tcp(50040, 443, "S", ISN)]
        + [tcp(50040, 443, "PA", s, d) for s, d in reversed(segs)]
        + [udp(4000, 53, q)]
    )
    a, b = run(pkts), run(pkts)
    assert a == b and [o.frame for o in a] == sorted(o.frame for o in a)


def test_feed_packet_with_hand_built_packets() -> None:
    eng = Engine()
    rec = records(build_hello("hand.example"))
    pkt = IPPacket(
        src="10.1.1.1", dst="10.2.2.2", proto="tcp", sport=1234, dport=443, payload=rec, tcp_flags=0x18, seq=9
    )
    obs = eng.feed_packet(5.0, 42, pkt)
    assert kinds(obs) == [(42, "tls_sni", "hand.example")] and obs[0].ts == 5.0


# -- never raise ----------------------------------------------------------------------

_PAYLOADS = [
    records(build_hello("fuzz.example", key_share=1400)),
    bytes(DNSRecord.question("fuzz.example", "A").pack()),
    b"\xc0\x00\x00\x00\x01\x08" + bytes(40),  # QUIC-like long header
]


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["tcp", "udp"]),
            st.sampled_from([53, 443, 8443, 5353]),
            st.integers(0, 0xFF),
            st.integers(0, 3000),
            st.integers(0, 2),
            st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=4),
            st.integers(1, 3000),
        ),
        max_size=12,
    )
)
def test_feed_packet_never_raises(
    specs: list[tuple[str, int, int, int, int, list[tuple[int, int]], int]],
) -> None:
    eng = Engine(max_flows=4)
    for i, (proto, port, flags, seq, which, edits, cut) in enumerate(specs):
        b = bytearray(_PAYLOADS[which])
        for pos, val in edits:
            b[pos % len(b)] = val
        pkt = IPPacket(
            src="10.0.0.1",
            dst="10.0.0.2",
            proto=proto,  # type: ignore[arg-type]
            sport=40000,
            dport=port,
            payload=bytes(b[:cut]),
            tcp_flags=flags,
            seq=ISN + seq,
        )
        for o in eng.feed_packet(float(i), i + 1, pkt):
            assert o.frame == i + 1
    eng.finish()
    assert eng.counters["engine_errors"] == 0


# -- the generated captures (pcaps/make_tls_dns.py) -----------------------------------

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"

EXPECTED_CAPTURES: dict[str, list[tuple[int, str, str | None]]] = {
    "tls-pq-split.pcap": [(1, "connect", None), (6, "tls_sni", "pq-split.example.com")],
    "tls-reorder-retrans.pcap": [(1, "connect", None), (8, "tls_sni", "reordered.example.com")],
    "tls-ech.pcap": [(1, "connect", None), (4, "tls_sni", "public.ech.example.net")],
    "tls-incomplete.pcap": [(1, "connect", None), (6, "tls_incomplete", "never-finished.example.com")],
    "tls-nonstd-port.pcap": [
        (1, "connect", None),
        (4, "tls_sni", "alt-port.example.com"),
        (6, "connect", None),
        (9, "tls_sni", "cpanel-port.example.com"),
    ],
    "dns-tcp-split.pcap": [
        (1, "connect", None),
        (4, "dns_query", "one.example.com"),
        (4, "dns_query", "two.example.com"),
        (5, "dns_answer", "one.example.com"),
        (5, "dns_answer", "two.example.com"),
        (8, "dns_query", "three.example.com"),
        (11, "dns_answer", "three.example.com"),
    ],
    "dns-answers.pcap": [
        (frame, kind, f"{name}.example.com")
        for i, name in enumerate(("a", "aaaa", "www.chain", "svc", "txt", "nope"))
        for frame, kind in ((2 * i + 1, "dns_query"), (2 * i + 2, "dns_answer"))
    ],
    "connect.pcap": [(1, "connect", None), (5, "connect", None), (8, "connect", None)],
}


def test_generated_captures_are_reproducible(tmp_path: Path) -> None:
    subprocess.run(
        [sys.executable, str(PCAPS / "make_tls_dns.py"), str(tmp_path)], check=True, capture_output=True
    )
    for name in EXPECTED_CAPTURES:
        assert (tmp_path / name).read_bytes() == (PCAPS / name).read_bytes(), name


@pytest.mark.parametrize("name", sorted(EXPECTED_CAPTURES))
def test_generated_captures_events(name: str) -> None:
    eng = Engine()
    obs: list[Observation] = []
    for fr in read_frames(PCAPS / name):
        obs += eng.feed(fr)
    obs += eng.finish()
    assert kinds(obs) == EXPECTED_CAPTURES[name]
    if name == "tls-ech.pcap":
        assert obs[1].ech and obs[1].alpn == ("h2",) and obs[1].src == "2001:db8:20::2"
    if name == "dns-answers.pcap":
        answers = [o.answers for o in obs if o.kind == "dns_answer"]
        assert answers == [
            ("192.0.2.10", "192.0.2.11"),
            ("2001:db8::10",),
            ("edge.chain.example.net", "e1.cdn.example.org", "203.0.113.7"),
            (),
            (),
            (),
        ]
        assert [o.rcode for o in obs if o.kind == "dns_answer"] == [0, 0, 0, 0, 0, 3]
        assert [r.rtype for o in obs for r in o.records] == [1, 1, 28, 5, 5, 1, 65, 16]


def test_scanning_keeps_little_and_memory_budget_sheds_oldest() -> None:
    eng = Engine()
    pkts = [tcp(50050, 25, "S", ISN)] + [
        tcp(50050, 25, "PA", ISN + 1 + i * 1000, b"y" * 1000) for i in range(10)
    ]
    run(pkts, eng, finish=False)
    assert eng.buffered_bytes <= 5  # only a possible record-header prefix is kept while scanning
    msg = build_hello("budget.example", key_share=1400)
    (s1, d1), _ = hello_segments(msg, (1200,))
    small = Engine(max_buffered=2000)
    obs = run([tcp(50051, 443, "PA", s1, d1), tcp(50052, 443, "PA", s1, d1)], small, finish=False)
    assert kinds(obs) == [(2, "tls_incomplete", "budget.example")]
    assert obs[0].src == CLIENT and obs[0].sport == 50051
    assert obs[0].note is not None and "memory budget" in obs[0].note
    assert small.buffered_bytes == 1200 and small.counters["flows_shed"] == 1


def test_dns_over_tcp_resumes_after_a_lost_segment() -> None:
    msgs = [bytes(DNSRecord.question(f"q{i}.example", "A").pack()) for i in range(6)]
    framed = [_tcp_dns([m]) for m in msgs]
    offs = [sum(len(f) for f in framed[:i]) for i in range(len(framed))]
    pkts = [tcp(41002, 53, "S", ISN)] + [
        tcp(41002, 53, "PA", ISN + 1 + off, f)
        for i, (off, f) in enumerate(zip(offs, framed, strict=True))
        if i != 1
    ]
    eng = Engine()
    obs = [o for o in run(pkts, eng) if o.kind == "dns_query"]
    # q1 was never captured: q0 at once, q2..q4 once three segments wait behind the hole, then q5
    assert kinds(obs) == [
        (2, "dns_query", "q0.example"),
        (5, "dns_query", "q2.example"),
        (5, "dns_query", "q3.example"),
        (5, "dns_query", "q4.example"),
        (6, "dns_query", "q5.example"),
    ]
    assert eng.counters["dns_tcp_gaps"] == 1


@settings(max_examples=200, deadline=None)
@given(st.sampled_from([0, 1, 101, 113, 228, 276, 999]), st.binary(max_size=200))
def test_feed_never_raises_on_random_frames(linktype: int, data: bytes) -> None:
    eng = Engine()
    eng.feed(Frame(ts=1.0, data=data, linktype=linktype, index=1))
    eng.feed(
        Frame(ts=2.0, data=bytes(tcp(1, 2, "PA", 5, b"\x16\x03\x01\x00\x05" + data)), linktype=1, index=2)
    )
    eng.finish()
    assert eng.counters["engine_errors"] == 0


def test_hello_in_one_byte_records_and_tiny_segments() -> None:
    stream = records(build_hello("tiny.example"), size=1)
    pkts = [tcp(50060, 443, "S", ISN)] + [
        tcp(50060, 443, "PA", ISN + 1 + off, stream[off : off + 4]) for off in range(0, len(stream), 4)
    ]
    obs = run(pkts)
    assert kinds(obs) == [(1, "connect", None), (len(pkts), "tls_sni", "tiny.example")]


def test_raw_fast_path_drops_only_what_decoding_would_drop() -> None:
    """Engine.feed drops bulk TCP on raw bytes; the events must be exactly those
    of decoding every frame (link.decode + feed_packet) on a large mixed capture."""
    from tests.corpus import corpus_dir

    capture = corpus_dir() / "bench" / "mixed-100k.pcap"
    from egresswatch.capture.pcapfile import read_frames
    from egresswatch.decode import link
    from egresswatch.model import IPPacket

    fast, slow = Engine(), Engine()
    got, want = [], []
    for frame in read_frames(capture):
        got += fast.feed(frame)
        pkt = link.decode(frame.linktype, frame.data)
        if isinstance(pkt, IPPacket):
            want += slow.feed_packet(frame.ts, frame.index, pkt)
    got += fast.finish()
    want += slow.finish()
    assert len(got) > 8000
    assert got == want


def test_reader_skip_gives_the_same_events_as_feeding_every_frame() -> None:
    """replay hands Engine.skip_raw to the reader (no Frame for bulk data): the
    events and the frame numbers must not change."""
    from egresswatch.capture.pcapfile import read_frames
    from tests.corpus import corpus_dir

    for capture in (
        corpus_dir() / "bench" / "mixed-100k.pcap",
        corpus_dir() / "public" / "ndpi" / "sites.pcapng",
    ):
        every, skipping = Engine(), Engine()
        want = [o for f in read_frames(capture) for o in every.feed(f)] + every.finish()
        got = [o for f in read_frames(capture, skip=skipping.skip_raw) for o in skipping.feed(f)]
        got += skipping.finish()
        assert got == want and len(got) > 50
        assert skipping.counters["frames"] == every.counters["frames"]
