"""DNS message parsing and DNS-over-TCP framing (egresswatch.decode.dns, dnsname, dnsrdata, dnstcp)."""

from __future__ import annotations

import struct

import dnslib
from dnslib import QTYPE, RR, DNSRecord
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.decode.dns import parse_message
from egresswatch.decode.dnsname import read_name
from egresswatch.decode.dnstcp import TcpDnsFramer
from egresswatch.model import DnsRecord


def answer(qname: str, qtype: str, zone: list[str], rcode: int = 0) -> bytes:
    r = DNSRecord.question(qname, qtype).reply()
    r.header.rcode = rcode
    for line in zone:
        r.add_answer(*RR.fromZone(line))
    return bytes(r.pack())


def header(qd: int = 1, an: int = 0, flags: int = 0x0100, msg_id: int = 0x1234) -> bytes:
    return struct.pack("!HHHHHH", msg_id, flags, qd, an, 0, 0)


# -- well-formed messages ------------------------------------------------------------


def test_query() -> None:
    q = DNSRecord.question("www.Example.com", "AAAA")
    m = parse_message(bytes(q.pack()))
    assert m is not None
    assert (m.qr, m.id, m.rcode, m.opcode) == (False, q.header.id, 0, 0)
    assert (m.qname, m.qtype, m.answers, m.records, m.malformed) == ("www.Example.com", 28, (), (), None)


def test_cname_chain_a_aaaa_in_wire_order() -> None:
    wire = answer(
        "www.example.com",
        "A",
        [
            "www.example.com. 300 IN CNAME cdn.example.net.",
            "cdn.example.net. 60 IN CNAME edge.example.org.",
            "edge.example.org. 20 IN A 192.0.2.7",
            "edge.example.org. 20 IN AAAA 2001:db8::7",
            "edge.example.org. 20 IN TXT hello",
        ],
    )
    m = parse_message(wire)
    assert m is not None and m.qr
    assert m.answers == ("cdn.example.net", "edge.example.org", "192.0.2.7", "2001:db8::7")
    assert m.records[0] == DnsRecord("www.example.com", 5, 300, "cdn.example.net")
    assert m.records[3] == DnsRecord("edge.example.org", 28, 20, "2001:db8::7")
    assert m.records[4] == DnsRecord("edge.example.org", 16, 20, '"hello"')


def test_record_types_presentation() -> None:
    wire = answer(
        "example.com",
        "ANY",
        [
            "example.com. 60 IN MX 10 mail.example.com.",
            "example.com. 60 IN SOA ns1.example.com. host.example.com. 1 2 3 4 5",
            "_x._tcp.example.com. 60 IN SRV 1 2 443 t.example.com.",
            'example.com. 60 IN CAA 0 issue "letsencrypt.org"',
            "example.com. 60 IN NS ns2.example.com.",
            "1.2.0.192.in-addr.arpa. 60 IN PTR host.example.com.",
            "example.com. 300 IN HTTPS 1 . alpn=h2,h3 ipv4hint=192.0.2.1",
            'example.com. 60 IN TXT "v=spf1 -all" "a\\"b"',
        ],
    )
    m = parse_message(wire)
    assert m is not None and m.malformed is None
    assert [r.data for r in m.records] == [
        "10 mail.example.com",
        "ns1.example.com host.example.com 1 2 3 4 5",
        "1 2 443 t.example.com",
        '0 issue "letsencrypt.org"',
        "ns2.example.com",
        "host.example.com",
        "1 . alpn=h2,h3 ipv4hint=192.0.2.1",
        '"v=spf1 -all" "a\\"b"',
    ]
    assert m.answers == ()


def test_unknown_type_generic_form() -> None:
    wire = (
        header(an=1, flags=0x8180)
        + b"\x00\x00\x01\x00\x01"
        + b"\x00"
        + struct.pack("!HHIH", 65280, 1, 7, 3)
        + b"abc"
    )
    m = parse_message(wire)
    assert m is not None and m.qname == "."
    assert m.records == (DnsRecord(".", 65280, 7, "\\# 3 616263"),)


def test_nxdomain_and_rcode_low_bits() -> None:
    m = parse_message(answer("nope.example", "A", [], rcode=3))
    assert m is not None and (m.rcode, m.answers, m.qname) == (3, (), "nope.example")
    m2 = parse_message(header(flags=0x81F5) + b"\x00\x00\x01\x00\x01")
    assert m2 is not None and m2.rcode == 5 and m2.opcode == 0


def test_root_and_escaping() -> None:
    m = parse_message(header() + b"\x00\x00\x02\x00\x01")
    assert m is not None and m.qname == "."
    name = b"\x05a\x04b c\x03\xc3\xa9x\x01.\x00"
    m2 = parse_message(header() + name + b"\x00\x01\x00\x01")
    assert m2 is not None and m2.qname == "a\\004b\\032c.\\195\\169x.\\."
    # "." and "\\" inside a label are escaped: the form is lossless
    m3 = parse_message(header() + b"\x03a.b\x03c\\d\x00\x00\x01\x00\x01")
    assert m3 is not None and m3.qname == "a\\.b.c\\\\d"


def test_no_question() -> None:
    m = parse_message(header(qd=0))
    assert m is not None and (m.qname, m.qtype) == (None, None)


# -- hostile names ---------------------------------------------------------------------


def test_pointer_loop() -> None:
    # question name is a pointer to itself
    m = parse_message(header() + b"\xc0\x0c\x00\x01\x00\x01")
    assert m is not None and m.qname is None and m.qtype == 1 and m.malformed == "pointer loop"
    # two pointers pointing at each other
    m2 = parse_message(header() + b"\x01a\xc0\x14\x00\x01\x00\x01" + b"\xc0\x0c")
    assert m2 is not None and m2.qname is None and m2.malformed == "pointer loop"


def test_forward_pointer_is_followed() -> None:
    # answer owner points forward to a name placed after the record (tshark accepts this)
    q = b"\x03www\x07example\x00\x00\x01\x00\x01"
    rr_at = 12 + len(q)
    target = rr_at + 2 + 10 + 4
    rr = struct.pack("!H", 0xC000 | target) + struct.pack("!HHIH", 1, 1, 5, 4) + bytes([192, 0, 2, 9])
    m = parse_message(header(an=1, flags=0x8180) + q + rr + b"\x03fwd\x07example\x00")
    assert m is not None and m.records == (DnsRecord("fwd.example", 1, 5, "192.0.2.9"),)
    assert m.answers == ("192.0.2.9",)


def test_pointer_into_header_and_bad_label_type() -> None:
    m = parse_message(header() + b"\xc0\x02\x00\x01\x00\x01")
    assert m is not None and m.malformed == "pointer into header" and m.qtype == 1
    m2 = parse_message(header() + b"\x41abc\x00\x00\x01\x00\x01")
    assert m2 is not None and m2.malformed == "bad label type"


def test_name_too_long_keeps_other_records() -> None:
    long_name = b"".join(b"\x3f" + b"x" * 63 for _ in range(5)) + b"\x00"  # 321 octets
    q = b"\x03www\x02xt\x03com\x00\x00\x01\x00\x01"
    rr1 = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 0, 4) + bytes([66, 66, 66, 66])
    rr2 = b"\xc0\x0c" + struct.pack("!HHIH", 5, 1, 0, len(long_name)) + long_name
    m = parse_message(header(an=2, flags=0x8180) + q + rr1 + rr2)
    assert m is not None and m.qname == "www.xt.com"
    assert m.answers == ("66.66.66.66",)
    assert m.malformed == "name too long" and len(m.records) == 2


def _chain_message(depth: int) -> bytes:
    """A response whose answer owner name is a chain of ``depth`` pointers
    (each to the previous one, placed after the record) ending at "a"."""
    q = b"\x01a\x00\x00\x01\x00\x01"
    chain_at = 12 + len(q) + 16
    chain = bytearray()
    prev = 12
    for i in range(depth):
        chain += struct.pack("!H", 0xC000 | prev)
        prev = chain_at + 2 * i
    rr = struct.pack("!H", 0xC000 | prev) + struct.pack("!HHIH", 1, 1, 0, 4) + b"\x01\x02\x03\x04"
    return header(an=1, flags=0x8180) + q + rr + bytes(chain)


def test_deep_pointer_chain_is_bounded() -> None:
    ok = parse_message(_chain_message(30))
    assert ok is not None and ok.malformed is None
    assert ok.records == (DnsRecord("a", 1, 0, "1.2.3.4"),)
    deep = parse_message(_chain_message(200))
    assert deep is not None and deep.malformed == "too many compression pointers"
    assert deep.qname == "a" and deep.answers == ("1.2.3.4",)


def test_truncated_messages() -> None:
    full = answer("www.example.com", "A", ["www.example.com. 300 IN A 192.0.2.1"])
    assert parse_message(full[:11]) is None
    for cut in range(12, len(full)):
        m = parse_message(full[:cut])
        assert m is not None and m.id == struct.unpack("!H", full[:2])[0]
        assert m.answers == () and m.malformed is not None


# -- DNS over TCP framing -------------------------------------------------------------


def test_framer_several_messages_and_splits() -> None:
    m1 = bytes(DNSRecord.question("a.example", "A").pack())
    m2 = bytes(DNSRecord.question("b.example", "AAAA").pack())
    stream = struct.pack("!H", len(m1)) + m1 + struct.pack("!H", len(m2)) + m2
    f = TcpDnsFramer()
    assert f.feed(stream) == [m1, m2] and f.pending == 0
    f2 = TcpDnsFramer()
    out: list[bytes] = []
    for i in range(len(stream)):
        out += f2.feed(stream[i : i + 1])
    assert out == [m1, m2]


def test_framer_caps_buffer() -> None:
    f = TcpDnsFramer(cap=100)
    assert f.feed(b"\xff\xff" + bytes(200)) == []
    assert f.pending == 0


# -- never raise ----------------------------------------------------------------------

_SAMPLES = [
    answer(
        "www.example.com",
        "A",
        ["www.example.com. 300 IN CNAME c.example.net.", "c.example.net. 9 IN A 192.0.2.1"],
    ),
    answer("example.com", "HTTPS", ["example.com. 300 IN HTTPS 1 . alpn=h2 ipv4hint=192.0.2.1"]),
    answer("example.com", "MX", ["example.com. 60 IN MX 10 mail.example.com.", 'example.com. 6 IN TXT "x"']),
    answer("example.com", "SOA", ["example.com. 60 IN SOA a.example.com. b.example.com. 1 2 3 4 5"]),
]


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=300))
def test_never_raises_on_random(data: bytes) -> None:
    m = parse_message(data)
    assert m is None or isinstance(m.answers, tuple)
    read_name(data, 0)
    TcpDnsFramer().feed(data)


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(_SAMPLES),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), min_size=1, max_size=6),
)
def test_never_raises_on_mutated(msg: bytes, edits: list[tuple[int, int]]) -> None:
    b = bytearray(msg)
    for pos, val in edits:
        b[pos % len(b)] = val
    m = parse_message(bytes(b))
    assert m is not None
    for r in m.records:
        assert isinstance(r.data, str) and isinstance(r.name, str)


def test_agrees_with_dnslib_on_samples() -> None:
    for wire in _SAMPLES:
        ours = parse_message(wire)
        ref = dnslib.DNSRecord.parse(wire)
        assert ours is not None
        assert ours.qname == str(ref.q.qname).rstrip(".")
        assert ours.qtype == ref.q.qtype
        assert [(r.name, r.rtype, r.ttl) for r in ours.records] == [
            (str(r.rname).rstrip("."), r.rtype, r.ttl) for r in ref.rr
        ]
        assert QTYPE.get(ours.qtype)


def test_svcb_uses_the_https_format() -> None:
    q = b"\x04_dns\x07example\x00\x00\x40\x00\x01"
    rdata = b"\x00\x01" + b"\x03svc\x07example\x00" + b"\x00\x01\x00\x03\x02h2"
    rr = b"\xc0\x0c" + struct.pack("!HHIH", 64, 1, 30, len(rdata)) + rdata
    m = parse_message(header(an=1, flags=0x8180) + q + rr)
    assert m is not None and m.qtype == 64 and m.malformed is None
    assert m.records == (DnsRecord("_dns.example", 64, 30, "1 svc.example. alpn=h2"),)
