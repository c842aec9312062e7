"""QUIC Initial decryption and ClientHello extraction (egresswatch.decode.quic).

Known answers come from the RFCs (RFC 9001 Appendix A for v1, RFC 9369
Appendix A for v2); the other Initials are built here with the same
primitives and fed through the tracker; the corpus tests compare with tshark.
"""

from __future__ import annotations

import json
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egresswatch.capture.pcapfile import read_frames
from egresswatch.decode import quic
from egresswatch.decode.link import decode
from egresswatch.decode.quic import V1, V2, QuicTracker, encode_varint, seal_client_initial
from egresswatch.decode.tls import ClientHello
from egresswatch.model import IPPacket
from tests.corpus import corpus_dir

CLIENT = ("192.0.2.10", 50123, "198.51.100.7", 443)
SERVER = (CLIENT[2], CLIENT[3], CLIENT[0], CLIENT[1])
DRAFT29 = 0xFF00001D

# RFC 9001 Appendix A.2: client Initial for DCID 0x8394c8f03e515708 (pn 2, 4-byte pn).
RFC_DCID = bytes.fromhex("8394c8f03e515708")
RFC_PAYLOAD = bytes.fromhex(
    "060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868"
    "04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578"
    "616d706c652e636f6dff01000100000a00080006001d00170018001000070005"
    "04616c706e000500050100000000003300260024001d00209370b2c9caa47fba"
    "baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400"
    "0d0010000e0403050306030203080408050806002d00020101001c0002400100"
    "3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000"
    "75300901100f088394c8f03e51570806048000ffff"
) + bytes(917)
# The protected packet's first 32 bytes (header + start of the sample) and its AEAD tag.
RFC9001_PREFIX = "c000000001088394c8f03e5157080000449e7b9aec34d1b1c98dd7689fb8ec11"
RFC9001_TAG = "e221af44860018ab0856972e194cd934"
RFC9369_PREFIX = "d76b3343cf088394c8f03e5157080000449ea0c95e82ffe67b6abcdb4298b485"
RFC9369_TAG = "a18b2faa745b6fe189cf772a9f84cbfc"
# RFC 9001 Appendix A.3: the server's Initial (protected with *server* keys).
RFC9001_SERVER = bytes.fromhex(
    "cf000000010008f067a5502a4262b5004075c0d95a482cd0991cd25b0aac406a"
    "5816b6394100f37a1c69797554780bb38cc5a99f5ede4cf73c3ec2493a1839b3"
    "dbcba3f6ea46c5b7684df3548e7ddeb9c3bf9c73cc3f3bded74b562bfb19fb84"
    "022f8ef4cdd93795d77d06edbb7aaf2f58891850abbdca3d20398c276456cbc4"
    "2158407dd074ee"
)
EXAMPLE = ClientHello(sni="example.com", alpn=("alpn",), ech=False, versions=(0x0304,))


def _ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def make_hello(sni: str, size: int = 0, alpn: str = "h3") -> bytes:
    """A TLS 1.3 ClientHello handshake message as QUIC clients send it,
    padded with a padding extension to ``size`` bytes (0: no padding)."""
    name = sni.encode()
    exts = [
        _ext(0x0000, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name),
        _ext(0x000A, bytes.fromhex("0004001d0017")),
        _ext(0x0010, struct.pack("!HB", len(alpn) + 1, len(alpn)) + alpn.encode()),
        _ext(0x002B, bytes.fromhex("020304")),
        _ext(0x0033, bytes.fromhex("0024001d0020") + bytes(range(32))),
        _ext(0x0039, bytes.fromhex("0104000075300304800005dc")),
    ]
    body = b"\x03\x03" + bytes(32) + b"\x00" + bytes.fromhex("0006130113021303") + b"\x01\x00"
    ext = b"".join(exts)
    if size:
        fill = size - 4 - len(body) - 2 - len(ext) - 4
        assert fill >= 0
        ext += _ext(0x0015, bytes(fill))
    body += struct.pack("!H", len(ext)) + ext
    return b"\x01" + len(body).to_bytes(3, "big") + body


def crypto(off: int, data: bytes) -> bytes:
    return b"\x06" + encode_varint(off) + encode_varint(len(data)) + data


def initials(hello: bytes, dcid: bytes, parts: int, version: int = V1, reverse: bool = True) -> list[bytes]:
    """The hello over ``parts`` Initial packets (one datagram each), later CRYPTO data first."""
    step = -(-len(hello) // parts)
    chunks = [(o, hello[o : o + step]) for o in range(0, len(hello), step)]
    if reverse:
        chunks.reverse()
    return [
        seal_client_initial(version, dcid, b"\x11" * 4, pn, crypto(o, d), pad_to=1200)
        for pn, (o, d) in enumerate(chunks)
    ]


def feed_all(t: QuicTracker, datagrams: list[bytes], flow=CLIENT) -> list[list[tuple[ClientHello, int]]]:
    return [t.feed(float(i), flow, d) for i, d in enumerate(datagrams)]


# -- RFC known answers ------------------------------------------------------------


def test_rfc9001_keys_and_packet() -> None:
    key, iv, hp = quic.client_keys(quic.VERSIONS[V1], RFC_DCID)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "1f369613dd76d5467730efcbe3b1a22d",
        "fa044b2f42a3fd3b46fb255c",
        "9f50449e04a0e810283a1e9933adedd2",
    )
    pkt = seal_client_initial(V1, RFC_DCID, b"", 2, RFC_PAYLOAD, pn_len=4)
    assert len(pkt) == 1200
    assert pkt[:32].hex() == RFC9001_PREFIX and pkt[-16:].hex() == RFC9001_TAG
    t = QuicTracker()
    assert t.feed(1.0, CLIENT, pkt) == [(EXAMPLE, V1)]
    assert t.counters["quic_decrypted"] == 1


def test_rfc9369_v2_keys_and_packet() -> None:
    key, iv, hp = quic.client_keys(quic.VERSIONS[V2], RFC_DCID)
    assert (key.hex(), iv.hex(), hp.hex()) == (
        "8b1a0bc121284290a29e0971b5cd045d",
        "91f73e2351d8fa91660e909f",
        "45b95e15235d6f45a6b19cbcb0294ba9",
    )
    pkt = seal_client_initial(V2, RFC_DCID, b"", 2, RFC_PAYLOAD, pn_len=4)
    assert pkt[:32].hex() == RFC9369_PREFIX and pkt[-16:].hex() == RFC9369_TAG
    assert (pkt[0] >> 4) & 3 == 1  # v2 Initial packet type bits
    assert QuicTracker().feed(1.0, CLIENT, pkt) == [(EXAMPLE, V2)]


def test_packet_number_decoding_rfc9000_example() -> None:
    assert quic.decode_packet_number(0xA82F30EA, 0x9B32, 16) == 0xA82F9B32
    assert quic.decode_packet_number(-1, 0, 8) == 0
    assert quic.decode_packet_number(255, 1, 8) == 257


def test_server_initial_skipped_or_rejected() -> None:
    t = QuicTracker()
    # Unknown connection: the server packet fails authentication with client keys.
    assert t.feed(0.5, SERVER, RFC9001_SERVER) == []
    assert t.counters["quic_auth_failed"] == 1
    # Once the client Initial (SCID empty) is known, the answer (DCID empty) is skipped without crypto.
    t.feed(1.0, CLIENT, seal_client_initial(V1, RFC_DCID, b"", 2, RFC_PAYLOAD, pn_len=4))
    assert t.feed(1.1, SERVER, RFC9001_SERVER) == []
    assert t.counters["quic_server_initial_skipped"] == 1
    assert t.counters["quic_auth_failed"] == 1


# -- reassembly -----------------------------------------------------------------------


@pytest.mark.parametrize("version", [V1, V2, DRAFT29])
def test_hello_over_two_initials_reverse_order(version: int) -> None:
    hello = make_hello("two-packets.example", size=2000)
    pkts = initials(hello, bytes.fromhex("0102030405060708"), 2, version)
    t = QuicTracker()
    results = feed_all(t, pkts)
    assert results[0] == []
    assert [(h.sni, v) for h, v in results[1]] == [("two-packets.example", version)]
    assert t.counters["quic_key_derivations"] == 1  # cached per DCID


def test_scrambled_overlapping_and_duplicate_frames_in_one_packet() -> None:
    hello = make_hello("scrambled.example", size=1100)
    rng = random.Random(7)
    pieces = []
    off = 0
    while off < len(hello):
        n = rng.randint(1, 90)
        pieces.append(crypto(off, hello[off : off + n + 10]))  # 10 bytes overlap the next piece
        off += n
    pieces += pieces[:5]  # duplicates
    rng.shuffle(pieces)
    frames = b"\x01" + b"".join(pieces)
    t = QuicTracker()
    pkt = seal_client_initial(V1, b"\x42" * 8, b"", 0, frames, pad_to=1200)
    assert len(pkt) > 1200  # the frames themselves overflow the minimum size
    assert [h.sni for h, _ in t.feed(0.0, CLIENT, pkt)] == ["scrambled.example"]


def test_three_packets_middle_last_and_retransmission() -> None:
    hello = make_hello("three.example", size=2600)
    p0, p1, p2 = initials(hello, b"\x09" * 8, 3, reverse=False)
    t = QuicTracker()
    assert t.feed(0.0, CLIENT, p0) == [] and t.feed(0.1, CLIENT, p2) == []
    assert t.feed(0.2, CLIENT, p0) == []  # retransmission
    assert [h.sni for h, _ in t.feed(0.3, CLIENT, p1)] == ["three.example"]
    assert t.feed(0.4, CLIENT, p1) == []  # reported once per connection


def test_later_initial_with_server_chosen_dcid_uses_original_keys() -> None:
    hello = make_hello("switch.example", size=1800)
    odcid = b"\x0a" * 8
    p1 = seal_client_initial(V1, odcid, b"\x33" * 4, 0, crypto(0, hello[:900]), pad_to=1200)
    # The second Initial carries the server's CID but is protected with the original DCID's keys.
    p2 = seal_client_initial(V1, b"\x5a" * 5, b"\x33" * 4, 1, crypto(900, hello[900:]), key_dcid=odcid)
    t = QuicTracker()
    assert t.feed(0.0, CLIENT, p1) == []
    assert [h.sni for h, _ in t.feed(0.1, CLIENT, p2)] == ["switch.example"]
    assert t.counters["quic_auth_failed"] == 0


def test_retry_resend_reported_once_but_a_different_hello_is_not_hidden() -> None:
    hello = make_hello("retry.example")
    t = QuicTracker()
    assert [h.sni for h, _ in t.feed(0.0, CLIENT, initials(hello, b"\x01" * 8, 1)[0])] == ["retry.example"]
    # After a Retry the client re-sends the same hello under a new DCID: not a new event.
    assert t.feed(0.1, CLIENT, initials(hello, b"\x02" * 8, 1)[0]) == []
    assert t.counters["quic_hello_resent"] == 1
    # A different hello on the same 4-tuple is reported.
    other = initials(make_hello("hidden.example"), b"\x03" * 8, 1)[0]
    assert [h.sni for h, _ in t.feed(0.2, CLIENT, other)] == ["hidden.example"]
    # The same hello from another client port is another connection.
    flow2 = (CLIENT[0], CLIENT[1] + 1, CLIENT[2], CLIENT[3])
    assert [h.sni for h, _ in t.feed(0.3, flow2, initials(hello, b"\x04" * 8, 1)[0])] == ["retry.example"]


# -- packets and frames ----------------------------------------------------------------


def _long(ptype_bits: int, version: int, body: bytes) -> bytes:
    """An unprotected (opaque) long-header packet of some other type."""
    return (
        bytes([0xC0 | (ptype_bits << 4)])
        + version.to_bytes(4, "big")
        + b"\x04abcd\x00"
        + encode_varint(len(body))
        + body
    )


@pytest.mark.parametrize("version", [V1, V2])
def test_coalesced_packets_and_padding(version: int) -> None:
    zero_rtt, handshake = (1, 2) if version == V1 else (2, 3)
    init = seal_client_initial(version, b"\x07" * 8, b"", 0, crypto(0, make_hello("coalesced.example")))
    dgram = (
        _long(handshake, version, b"\xaa" * 50) + init + _long(zero_rtt, version, b"\xbb" * 300) + bytes(400)
    )
    t = QuicTracker()
    assert [(h.sni, v) for h, v in t.feed(0.0, CLIENT, dgram)] == [("coalesced.example", version)]
    assert t.counters["quic_initial"] == 1


def test_ack_ecn_ping_close_frames_then_unknown_frame_stops() -> None:
    hello = make_hello("frames.example")
    ack = b"\x02" + encode_varint(5) + encode_varint(100) + encode_varint(1) + encode_varint(2) + b"\x00\x01"
    ack_ecn = (
        b"\x03" + b"\x05\x10\x01\x02\x00\x01" + encode_varint(3) + encode_varint(0) + encode_varint(70000)
    )
    close = b"\x1c\x00\x06" + encode_varint(4) + b"oops"
    frames = ack + b"\x01" + ack_ecn + bytes(5) + close + crypto(0, hello)
    t = QuicTracker()
    assert [h.sni for h, _ in t.feed(0.0, CLIENT, seal_client_initial(V1, b"\x08" * 8, b"", 0, frames))] == [
        "frames.example"
    ]
    stopped = b"\x01\x08\x00\x01" + crypto(0, hello)  # STREAM frame type 0x08 is not allowed in an Initial
    t2 = QuicTracker()
    assert t2.feed(0.0, CLIENT, seal_client_initial(V1, b"\x08" * 8, b"", 0, stopped)) == []
    assert t2.counters["quic_frame_unexpected"] == 1


def test_ignored_packets() -> None:
    t = QuicTracker()
    vn = b"\x80\x00\x00\x00\x00\x04abcd\x04efgh\x00\x00\x00\x01"
    gquic = b"\xc3Q050\x08" + bytes(8) + b"\x00" + bytes(1200)
    short = b"\x40" + bytes(40)
    for d in (vn, gquic, short, b"", b"\xc0"):
        assert t.feed(0.0, CLIENT, d) == []
    assert t.counters["quic_version_negotiation"] == 1 and t.counters["quic_unknown_version"] == 1
    assert t.counters["quic_decrypted"] == 0


def test_truncated_and_corrupted_initials() -> None:
    pkt = initials(make_hello("cut.example"), b"\x06" * 8, 1)[0]
    t = QuicTracker()
    assert t.feed(0.0, CLIENT, pkt[:-1]) == []
    assert t.counters["quic_truncated"] == 1
    bad = bytearray(pkt)
    bad[600] ^= 1
    assert t.feed(0.0, CLIENT, bytes(bad)) == []
    assert t.counters["quic_auth_failed"] == 1


# -- caps and time ------------------------------------------------------------------------


def test_idle_expiry_uses_frame_time() -> None:
    p1, p2 = initials(make_hello("late.example", size=2000), b"\x05" * 8, 2)
    t = QuicTracker(idle_timeout=30.0)
    t.feed(1000.0, CLIENT, p1, frame=1)
    assert t.feed(1031.0, CLIENT, p2, frame=2) == []  # first half expired: the hello never completes
    assert t.counters["quic_conns_expired"] == 1
    (expired,) = t.take_incomplete()  # p1 held the hello's second half: nothing from offset 0
    assert (expired.frame, expired.received, expired.hello) == (1, 0, None)
    assert t.take_incomplete() == []
    (still_open,) = t.finish()  # p2 started a new connection with the first half
    assert still_open.frame == 2 and still_open.hello is not None and still_open.hello.sni == "late.example"
    t2 = QuicTracker(idle_timeout=30.0)
    t2.feed(1000.0, CLIENT, p1)
    assert [h.sni for h, _ in t2.feed(1029.0, CLIENT, p2)] == ["late.example"]


def test_connection_cap_is_lru() -> None:
    t = QuicTracker(max_conns=3)
    halves = [initials(make_hello(f"c{i}.example", size=2000), bytes([i]) * 8, 2) for i in range(4)]
    for i, (first, _) in enumerate(halves):
        t.feed(float(i), CLIENT, first)
    assert t.counters["quic_conns_evicted"] == 1
    assert t.feed(9.0, CLIENT, halves[0][1]) == []  # oldest was evicted
    assert [h.sni for h, _ in t.feed(9.0, CLIENT, halves[3][1])] == ["c3.example"]


def test_crypto_byte_cap() -> None:
    hello = make_hello("big.example", size=3000)
    t = QuicTracker(max_crypto=2048)
    assert feed_all(t, initials(hello, b"\x0b" * 8, 3))[-1] == []
    assert t.counters["quic_crypto_cap"] + t.counters["quic_hello_too_large"] >= 1
    far = seal_client_initial(V1, b"\x0c" * 8, b"", 0, crypto(10**9, b"x" * 10))
    assert t.feed(1.0, CLIENT, far) == []


def test_total_byte_budget_evicts_oldest_connections() -> None:
    t = QuicTracker(max_total_bytes=3000)
    firsts = [initials(make_hello(f"b{i}.example", size=2000), bytes([0x20 + i]) * 8, 2) for i in range(3)]
    for i, (first, _) in enumerate(firsts):
        t.feed(float(i), CLIENT, first)  # each holds ~1000 bytes of the hello's second half
    assert t.counters["quic_conns_evicted"] == 0
    t.feed(3.0, CLIENT, initials(make_hello("b3.example", size=2000), b"\x23" * 8, 2)[0])
    assert t.counters["quic_conns_evicted"] == 1
    assert [h.sni for h, _ in t.feed(4.0, CLIENT, firsts[1][1])] == ["b1.example"]
    assert t.feed(4.0, CLIENT, firsts[0][1]) == []  # its first half was evicted
    assert t._held <= 3000


def test_finish_reports_incomplete_hello_with_partial_sni() -> None:
    hello = make_hello("partial.example", size=2000)
    p_first = initials(hello, b"\x0d" * 8, 2, reverse=False)[0]
    t = QuicTracker()
    t.feed(5.0, CLIENT, p_first, frame=17)
    (pending,) = t.finish()
    assert pending.flow == CLIENT and pending.version == V1 and (pending.ts, pending.frame) == (5.0, 17)
    assert pending.needed == len(hello) and 0 < pending.received < len(hello)
    assert pending.hello is not None and pending.hello.sni == "partial.example"


# -- robustness ---------------------------------------------------------------------------------

_REAL = initials(make_hello("fuzz.example", size=1500), b"\x0e" * 8, 2)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=1500))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    t = QuicTracker()
    assert t.feed(0.0, CLIENT, data) == []
    assert t.counters["quic_errors"] == 0
    assert t.feed(0.0, CLIENT, b"\xc0\x00\x00\x00\x01" + data) == []
    assert t.counters["quic_errors"] == 0


@settings(max_examples=300, deadline=None)
@given(
    st.integers(0, 1),
    st.lists(st.tuples(st.integers(0, 1300), st.integers(1, 255)), max_size=4),
    st.integers(0, 1300),
)
def test_mutated_real_initials_never_raise_or_lie(which: int, flips: list[tuple[int, int]], cut: int) -> None:
    pkt = bytearray(_REAL[which])
    for pos, x in flips:
        if pos < len(pkt):
            pkt[pos] ^= x
    t = QuicTracker()
    out = t.feed(0.0, CLIENT, bytes(pkt[: max(cut, 1)])) + t.feed(0.1, CLIENT, _REAL[1 - which])
    assert t.counters["quic_errors"] == 0
    assert all(h.sni == "fuzz.example" for h, _ in out)


# -- corpus (tshark oracle) -----------------------------------------------------------------------

QUIC_CAPTURES = [
    "arkime/quicietf.pcap",
    "arkime/quicietfooo.pcap",
    "illustrated-quic/captures/capture.pcap",
    "ndpi/doq_adguard.pcapng",
    "ndpi/quic-v2.pcapng",
    "ndpi/quic_frags_ch_out_of_order_same_packet_craziness.pcapng",
    "ndpi/sites.pcapng",
    "retina/quic_kyber.pcapng",
    "suricata-verify/ja4-tls-quic/input.pcap",
    "suricata-verify/quic-frag-unordered/input.pcap",
    "suricata-verify/quic-frag/input.pcap",
    "suricata-verify/quic-retry/input.pcap",
    "suricata-verify/quic-v2/input.pcap",
    "zeek/quic/chromium-115.0.5790.110-api-cirrus-com.pcap",
    "zeek/quic/chromium-115.0.5790.110-google-de-fragmented.pcap",
    "zeek/quic/chromium-dpd-custom-port-4433.pcap",
    "zeek/quic/quic-multiple-initial-fragmented-crypto.pcap",
    "zeek/quic/quicv2-echo-443.pcap",
]


def _replay(path: Path) -> list[tuple[int, str | None, tuple[str, int, str, int]]]:
    t = QuicTracker()
    got = []
    for frame in read_frames(path):
        pkt = decode(frame.linktype, frame.data)
        if isinstance(pkt, IPPacket) and pkt.proto == "udp":
            flow = (pkt.src, pkt.sport, pkt.dst, pkt.dport)
            got += [(frame.index, hello.sni, flow) for hello, _ in t.feed(frame.ts, flow, pkt.payload)]
    assert t.counters["quic_errors"] == 0
    return got


def _expected(path: Path) -> list[tuple[int, str | None, tuple[str, int, str, int]]]:
    events = [json.loads(line) for line in path.read_text().splitlines()]
    return [
        (e["frame"], e["sni"], (e["src"], e["sport"], e["dst"], e["dport"]))
        for e in events
        if e["kind"] == "quic_sni"
    ]


@pytest.mark.corpus
@pytest.mark.parametrize("rel", QUIC_CAPTURES)
def test_corpus_matches_tshark(rel: str) -> None:
    public = corpus_dir() / "public"
    expected = _expected(public / "expected" / (rel.replace("/", "__") + ".jsonl"))
    assert expected, "every listed capture has QUIC events"
    assert sorted(_replay(public / rel)) == sorted(expected)


@pytest.mark.corpus
def test_corpus_lists_every_quic_capture() -> None:
    expected_dir = corpus_dir() / "public" / "expected"
    with_quic = {
        p.name[: -len(".jsonl")]
        for p in expected_dir.glob("*.jsonl")
        if '"kind": "quic_sni"' in p.read_text()
    }
    assert with_quic == {rel.replace("/", "__") for rel in QUIC_CAPTURES}


@pytest.mark.corpus
def test_bench_capture_matches_truth() -> None:
    bench = corpus_dir() / "bench"
    expected = _expected(bench / "mixed-100k.truth.jsonl")
    assert len(expected) == 250
    assert sorted(_replay(bench / "mixed-100k.pcap")) == sorted(expected)


# -- generated captures (pcaps/make_quic.py) ---------------------------------------------------------

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"


def test_make_quic_is_deterministic_and_decodes(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(PCAPS / "make_quic.py"), str(tmp_path)], check=True)
    names = ["quic-v1-multi-initial.pcap", "quic-v2.pcap"]
    for name in names:
        assert (tmp_path / name).read_bytes() == (PCAPS / name).read_bytes(), name
    multi = _replay(tmp_path / names[0])
    assert [(frame, sni) for frame, sni, _ in multi] == [
        (2, "multi-initial-v4.example"),
        (4, "multi-initial-v6.example"),
    ]
    assert multi[1][2] == ("2001:db8::10", 51001, "2001:db8:1::20", 443)
    assert [(frame, sni) for frame, sni, _ in _replay(tmp_path / names[1])] == [(1, "quic-v2.example")]
