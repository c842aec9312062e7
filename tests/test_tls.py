"""TLS ClientHello parsing and the TCP record layer (egresswatch.decode.tls, .tlsstream)."""

from __future__ import annotations

import ssl
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.decode import tls, tlsstream
from egresswatch.decode.tls import ClientHello
from egresswatch.decode.tlsstream import BAD, DONE, NEED_MORE

# -- builders (also used by test_engine) -------------------------------------------


def _ext(etype: int, data: bytes) -> bytes:
    return struct.pack("!HH", etype, len(data)) + data


def build_hello(
    sni: str | bytes | None = "example.com",
    alpn: tuple[str, ...] = ("h2", "http/1.1"),
    versions: tuple[int, ...] | None = (0x1A1A, 0x0304, 0x0303),
    ech: bool = False,
    esni: bool = False,
    key_share: int = 32,
    legacy: int = 0x0303,
    sni_first: bool = True,
) -> bytes:
    """One ClientHello handshake message (type 1 + 3-byte length + body).
    ``key_share`` bytes of key material (1216+32 for an X25519MLKEM768 hello);
    ``sni_first=False`` puts server_name last, after the big key share."""
    exts: list[bytes] = [_ext(0x0A0A, b"")]  # GREASE
    sni_ext = b""
    if sni is not None:
        name = sni.encode() if isinstance(sni, str) else sni
        entry = b"\x00" + struct.pack("!H", len(name)) + name
        sni_ext = _ext(0x0000, struct.pack("!H", len(entry)) + entry)
    if sni_first and sni_ext:
        exts.append(sni_ext)
    if alpn:
        lst = b"".join(bytes([len(p)]) + p.encode() for p in alpn)
        exts.append(_ext(0x0010, struct.pack("!H", len(lst)) + lst))
    if versions is not None:
        vs = b"".join(struct.pack("!H", v) for v in versions)
        exts.append(_ext(0x002B, bytes([len(vs)]) + vs))
    ks = (
        struct.pack("!HH", 0x11EC, key_share)
        + bytes(range(256)) * (key_share // 256)
        + bytes(key_share % 256)
    )
    exts.append(_ext(0x0033, struct.pack("!H", len(ks)) + ks))
    if ech:
        exts.append(_ext(0xFE0D, b"\x00\x00\x01\x00\x01\x42\x00\x20" + bytes(32) + b"\x00\x10" + bytes(16)))
    if esni:
        exts.append(_ext(0xFFCE, bytes(40)))
    if not sni_first and sni_ext:
        exts.append(sni_ext)
    ext_block = b"".join(exts)
    body = (
        struct.pack("!H", legacy)
        + bytes(range(32))
        + b"\x20"
        + bytes(32)
        + struct.pack("!H", 6)
        + b"\x13\x01\x13\x02\x13\x03"
        + b"\x01\x00"
        + struct.pack("!H", len(ext_block))
        + ext_block
    )
    return b"\x01" + len(body).to_bytes(3, "big") + body


def records(msg: bytes, size: int = 16384, version: int = 0x0301) -> bytes:
    """Wrap handshake bytes in TLS handshake records of at most ``size`` bytes."""
    out = b""
    for i in range(0, len(msg), size):
        chunk = msg[i : i + size]
        out += b"\x16" + struct.pack("!HH", version, len(chunk)) + chunk
    return out


def python_hello(server_hostname: str = "example.org") -> bytes:
    """A real ClientHello record from the ssl module (OpenSSL)."""
    ctx = ssl.create_default_context()
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    sock = ctx.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    with pytest.raises(ssl.SSLWantReadError):
        sock.do_handshake()
    return outgoing.read()


# -- parse_client_hello ---------------------------------------------------------------


def test_real_openssl_hello() -> None:
    rec = python_hello("example.org")
    state, hello, msg, end = tlsstream.hello_from_stream(rec)
    assert state == DONE and end == len(rec)
    assert hello is not None
    assert hello == ClientHello(
        sni="example.org", alpn=("h2", "http/1.1"), ech=False, versions=hello.versions
    )
    assert 0x0304 in hello.versions and 0x0303 in hello.versions
    assert tls.handshake_length(msg) == len(msg) == len(rec) - 5


def test_fields_grease_removed() -> None:
    h = tls.parse_client_hello(build_hello("a.example", alpn=("h3",), versions=(0x2A2A, 0x0304)))
    assert h == ClientHello(sni="a.example", alpn=("h3",), ech=False, versions=(0x0304,))


def test_no_sni_and_no_supported_versions() -> None:
    h = tls.parse_client_hello(build_hello(None, alpn=(), versions=None, legacy=0x0301))
    assert h == ClientHello(sni=None, alpn=(), ech=False, versions=(0x0301,))


@pytest.mark.parametrize(("ech", "esni"), [(True, False), (False, True)])
def test_ech_and_draft_esni(ech: bool, esni: bool) -> None:
    h = tls.parse_client_hello(build_hello("public.example", ech=ech, esni=esni))
    assert h is not None and h.ech and h.sni == "public.example"


def test_non_ascii_sni_in_the_dns_presentation_form() -> None:
    """The same lossless \\DDD form as DNS names (one form for both, no U+FFFD)."""
    from egresswatch.decode.dns import parse_message

    h = tls.parse_client_hello(build_hello(b"caf\xc3\xa9.example"))
    assert h is not None and h.sni == "caf\\195\\169.example"
    header = b"\x00\x01\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
    m = parse_message(header + b"\x05caf\xc3\xa9\x07example\x00\x00\x01\x00\x01")
    assert m is not None and m.qname == h.sni
    h2 = tls.parse_client_hello(build_hello(b"a\\b.example"))
    assert h2 is not None and h2.sni == "a\\\\b.example"


def test_trailing_bytes_ignored_and_truncation_rejected() -> None:
    msg = build_hello()
    assert tls.parse_client_hello(msg + b"\x16\x03") is not None
    for cut in (0, 3, 4, 40, len(msg) - 1):
        assert tls.parse_client_hello(msg[:cut]) is None
    assert tls.parse_client_hello(b"\x02" + msg[1:]) is None  # ServerHello type
    assert tls.handshake_length(b"\x01\x00") is None
    assert tls.handshake_length(b"\x01\x00\x01\x00") == 260


def test_bad_extension_lengths_rejected() -> None:
    msg = bytearray(build_hello())
    ext_len_at = 4 + 2 + 32 + 1 + 32 + 2 + 6 + 2  # after the compression methods
    (ext_len,) = struct.unpack_from("!H", msg, ext_len_at)
    assert ext_len == len(msg) - ext_len_at - 2
    longer = bytearray(msg)
    struct.pack_into("!H", longer, ext_len_at, ext_len + 10)
    assert tls.parse_client_hello(bytes(longer)) is None
    first_ext_len_at = ext_len_at + 2 + 2  # GREASE extension's length field
    bad = bytearray(msg)
    struct.pack_into("!H", bad, first_ext_len_at, 0xFFFF)
    assert tls.parse_client_hello(bytes(bad)) is None
    odd_ciphers = bytearray(msg)
    struct.pack_into("!H", odd_ciphers, 4 + 2 + 32 + 1 + 32, 5)
    assert tls.parse_client_hello(bytes(odd_ciphers)) is None


def test_partial_sni_from_first_part() -> None:
    msg = build_hello("first.example", key_share=1400)
    part = tls.partial_sni(msg[:200])
    assert part is not None and part.sni == "first.example"
    late = build_hello("late.example", key_share=1400, sni_first=False)
    part2 = tls.partial_sni(late[:200])
    assert part2 is not None and part2.sni is None
    assert tls.partial_sni(b"\x01\x00") is None


# -- record layer -------------------------------------------------------------------


def test_hello_split_across_records_and_segments() -> None:
    msg = build_hello("split.example", key_share=1400, sni_first=False)
    assert len(msg) > 1400
    stream = records(msg, size=100)
    for cut in range(0, len(stream), 37):
        state, _, _, _ = tlsstream.hello_from_stream(stream[:cut])
        assert state == NEED_MORE
    state, hello, got, end = tlsstream.hello_from_stream(stream + b"\x17\x03\x03\x00\x01\x00")
    assert state == DONE and got == msg and end == len(stream)
    assert hello is not None and hello.sni == "split.example"


def test_record_layer_rejects_other_content() -> None:
    assert tlsstream.scan_records(b"GET / HTTP/1.1\r\n")[0] == BAD
    assert tlsstream.scan_records(b"\x17\x03\x03\x00\x10")[0] == BAD
    assert tlsstream.scan_records(b"\x16\x03\x03\x00\x05\x02\x00\x00\x01\x00")[0] == BAD  # ServerHello
    assert tlsstream.scan_records(b"\x16\x03\x09")[0] == BAD
    assert tlsstream.scan_records(b"\x16\x03")[0] == NEED_MORE
    assert tlsstream.scan_records(b"")[0] == NEED_MORE


def test_find_record_start_after_proxy_preamble() -> None:
    hello = records(build_hello("behind.proxy"))
    stream = b"CONNECT behind.proxy:443 HTTP/1.1\r\n\x16\x03\x09 noise\r\n\r\n" + hello
    pos = tlsstream.find_record_start(stream)
    assert stream[pos:] == hello
    assert tlsstream.find_record_start(b"no tls here") == -1
    assert tlsstream.looks_like_hello_start(hello[:6])
    assert not tlsstream.looks_like_hello_start(b"\x16\x03\x03\x00\x10\x02")


# -- never raise ----------------------------------------------------------------------

_REAL = [build_hello(), build_hello(None, ech=True, key_share=1400, sni_first=False)]


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_parsers_never_raise_on_random(data: bytes) -> None:
    tls.parse_client_hello(data)
    tls.parse_client_hello(b"\x01" + data)
    tls.partial_sni(b"\x01" + data)
    tlsstream.hello_from_stream(data)
    tlsstream.hello_from_stream(b"\x16\x03\x01" + data)
    tlsstream.find_record_start(data)


@settings(max_examples=300, deadline=None)
@given(
    st.sampled_from(_REAL),
    st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), min_size=1, max_size=8),
    st.integers(0, 3000),
)
def test_parsers_never_raise_on_mutated_hellos(msg: bytes, edits: list[tuple[int, int]], cut: int) -> None:
    b = bytearray(msg)
    for pos, val in edits:
        b[pos % len(b)] = val
    mutated = bytes(b[: max(cut, 4)])
    h = tls.parse_client_hello(mutated)
    assert h is None or isinstance(h, ClientHello)
    tls.partial_sni(mutated)
    state, _, _, _ = tlsstream.hello_from_stream(records(mutated, size=300))
    assert state in (DONE, NEED_MORE, BAD)


@pytest.mark.parametrize("size", [1, 7, 300, 16384])
def test_need_is_a_lower_bound(size: int) -> None:
    msg = build_hello("need.example", key_share=600)
    stream = records(msg, size=size)
    for cut in range(0, len(stream), max(1, len(stream) // 97)):
        state, prefix, need = tlsstream.scan_records(stream[:cut])
        assert state == NEED_MORE and msg.startswith(prefix)
        assert cut < need <= len(stream)


def test_hello_scanner_preamble_hrr_and_end() -> None:
    sc = tlsstream.HelloScanner()
    first = records(build_hello("scan.example"), size=200)
    stream = b"CONNECT scan.example:443 HTTP/1.1\r\n\r\n" + first
    got: list[ClientHello] = []
    for i in range(0, len(stream), 50):
        got += sc.feed(stream[i : i + 50])
        assert len(sc.buf) <= 50 + len(first)  # only the hello in progress is kept
    assert [h.sni for h in got] == ["scan.example"] and not sc.in_hello
    second = b"\x14\x03\x03\x00\x01\x01" + records(build_hello("scan.example", alpn=("h2",)))
    assert sc.feed(second[:20]) == [] and sc.in_hello
    assert sc.partial() is None  # the fixed part of the second hello is not there yet
    assert [h.alpn for h in sc.feed(second[20:])] == [("h2",)]
    assert sc.feed(b"\x17\x03\x03\x00\x02hi") == [] and sc.done and not sc.buf


def test_hello_scanner_partial_and_malformed() -> None:
    sc = tlsstream.HelloScanner()
    rec = records(build_hello("part.example", key_share=1400))
    assert sc.feed(rec[:300]) == [] and sc.in_hello
    part = sc.partial()
    assert part is not None and part.sni == "part.example"
    bad = tlsstream.HelloScanner()
    msg = bytearray(build_hello("bad.example"))
    msg[4] = 9  # legacy_version major byte: not TLS
    assert bad.feed(records(bytes(msg))) == [] and bad.malformed == 1 and not bad.in_hello
