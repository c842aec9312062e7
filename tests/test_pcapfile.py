"""capture.pcapfile: classic pcap + pcapng readers, checked against scapy-written
files, hand-built blocks, tshark on the public corpus, truncation and fuzzing."""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.layers.dns import DNS, DNSQR
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from egresswatch.capture.pcapfile import read_frames
from egresswatch.errors import CaptureFileError
from egresswatch.model import Frame


def corpus_dir() -> Path:
    return Path(__file__).resolve().parents[1].parent / "shared" / "corpus"


CORPUS = corpus_dir()
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason="shared corpus not present")
needs_tshark = pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark not installed")


def dns_packets(n: int) -> list[Ether]:
    pkts = []
    for i in range(n):
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.0.0.1", dst="10.0.0.53")
        p = p / UDP(sport=40000 + i, dport=53) / DNS(id=i, rd=1, qd=DNSQR(qname=f"host{i}.example.com"))
        p.time = 1700000000 + i + 0.123456
        pkts.append(p)
    return pkts


def classic_pcap(
    records: list[tuple[int, int, bytes, int]], endian: str, nano: bool, linktype: int = 1
) -> bytes:
    """A classic pcap written with struct: records are (sec, frac, data, orig_len)."""
    magic = 0xA1B23C4D if nano else 0xA1B2C3D4
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for sec, frac, data, orig in records:
        out.append(struct.pack(endian + "IIII", sec, frac, len(data), orig) + data)
    return b"".join(out)


def read_all(path: Path) -> list[Frame]:
    return list(read_frames(path))


# --- classic pcap ------------------------------------------------------------------
def test_scapy_written_pcap(tmp_path: Path) -> None:
    pkts = dns_packets(5)
    f = tmp_path / "a.pcap"
    wrpcap(str(f), pkts)
    frames = read_all(f)
    assert [fr.index for fr in frames] == [1, 2, 3, 4, 5]
    for fr, p in zip(frames, pkts, strict=True):
        raw = bytes(p)
        # frames built by the fast path equal frames built by the dataclass constructor
        assert fr == Frame(
            ts=fr.ts, data=raw, linktype=1, index=fr.index, orig_len=len(raw), ifname=None, comment=None
        )
        assert fr.ts == pytest.approx(float(p.time), abs=1e-6)
        assert type(fr.data) is bytes


@pytest.mark.parametrize("endian", ["<", ">"])
@pytest.mark.parametrize("nano", [False, True])
def test_byte_orders_and_resolutions(tmp_path: Path, endian: str, nano: bool) -> None:
    frac = 123456789 if nano else 123456
    recs = [(1700000000, frac, b"\x45" + bytes(39), 60), (1700000001, 0, b"abc", 3)]
    f = tmp_path / "x.pcap"
    f.write_bytes(classic_pcap(recs, endian, nano, linktype=101))
    frames = read_all(f)
    per = 10**9 if nano else 10**6
    assert [fr.ts for fr in frames] == [(1700000000 * per + frac) / per, 1700000001.0]
    assert [fr.data for fr in frames] == [recs[0][2], b"abc"]
    assert [fr.orig_len for fr in frames] == [60, 3]
    assert {fr.linktype for fr in frames} == {101}


def test_fcs_bits_of_linktype_masked(tmp_path: Path) -> None:
    f = tmp_path / "fcs.pcap"
    # FCS length 4 (upper nibble) + F bit: still Ethernet
    f.write_bytes(classic_pcap([(1, 0, bytes(20), 20)], "<", False, linktype=(4 << 28) | (1 << 26) | 1))
    assert read_all(f)[0].linktype == 1


@needs_tshark
@pytest.mark.parametrize("endian", ["<", ">"])
def test_nanosecond_timestamps_match_tshark(tmp_path: Path, endian: str) -> None:
    raw = bytes(dns_packets(1)[0])
    f = tmp_path / "ns.pcap"
    f.write_bytes(classic_pcap([(1700000000, 987654321, raw, len(raw))], endian, True))
    out = subprocess.run(
        ["tshark", "-r", str(f), "-T", "fields", "-e", "frame.time_epoch"], capture_output=True, text=True
    ).stdout.split()
    assert read_all(f)[0].ts == float(out[0])


# --- pcapng -----------------------------------------------------------------------
def _opt(e: str, code: int, value: bytes) -> bytes:
    return struct.pack(e + "HH", code, len(value)) + value + bytes(-len(value) % 4)


def _block(e: str, btype: int, body: bytes) -> bytes:
    n = 12 + len(body)
    return struct.pack(e + "II", btype, n) + body + struct.pack(e + "I", n)


def shb(e: str) -> bytes:
    return _block(e, 0x0A0D0D0A, struct.pack(e + "IHHq", 0x1A2B3C4D, 1, 0, -1) + _opt(e, 0, b""))


def idb(e: str, linktype: int, name: str, tsresol: int | None = None, tsoffset: int = 0) -> bytes:
    opts = _opt(e, 2, name.encode())
    if tsresol is not None:
        opts += _opt(e, 9, bytes([tsresol]))
    if tsoffset:
        opts += _opt(e, 14, struct.pack(e + "q", tsoffset))
    return _block(e, 1, struct.pack(e + "HHI", linktype, 0, 0) + opts + _opt(e, 0, b""))


def epb(
    e: str, ifid: int, ts: int, data: bytes, comments: tuple[str, ...] = (), orig: int | None = None
) -> bytes:
    body = struct.pack(e + "IIIII", ifid, ts >> 32, ts & 0xFFFFFFFF, len(data), orig or len(data))
    body += data + bytes(-len(data) % 4)
    if comments:
        body += b"".join(_opt(e, 1, c.encode()) for c in comments) + _opt(e, 0, b"")
    return _block(e, 6, body)


def spb(e: str, data: bytes) -> bytes:
    return _block(e, 3, struct.pack(e + "I", len(data)) + data + bytes(-len(data) % 4))


def old_pb(e: str, ifid: int, ts: int, data: bytes) -> bytes:
    body = struct.pack(e + "HHIIII", ifid, 0, ts >> 32, ts & 0xFFFFFFFF, len(data), len(data))
    return _block(e, 2, body + data + bytes(-len(data) % 4))


RAW_IP = bytes(
    IP(src="192.0.2.1", dst="192.0.2.53") / UDP(sport=1234, dport=53) / DNS(qd=DNSQR(qname="a.test"))
)
ETH = bytes(dns_packets(1)[0])


def multi_section_pcapng(sections: int = 2) -> bytes:
    """Two sections (LE then BE), two interfaces each, every packet block type, skipped blocks."""
    first = [
        shb("<"),
        idb("<", 101, "tun0"),  # default resolution: microseconds
        idb("<", 1, "eth0", tsresol=9),  # nanoseconds
        _block("<", 4, _opt("<", 0, b"")),  # name resolution block: skipped
        epb("<", 0, 1700000000_123456, RAW_IP, ("first comment", "second ünïcode")),
        epb("<", 1, 1700000001_000000001, ETH),
        _block("<", 5, struct.pack("<III", 0, 0, 0)),  # interface statistics: skipped
        spb("<", RAW_IP),
        _block("<", 0x80000042, b"local!!!"),  # local-use block type: skipped
    ]
    second = [
        shb(">"),
        idb(">", 1, "eth1", tsresol=0x80 | 20, tsoffset=1000),  # 2^-20 s units, +1000 s
        idb(">", 101, "tun1"),
        old_pb(">", 1, 5_000_000, RAW_IP),
        epb(">", 0, 3 << 20, ETH, ("big-endian comment",)),
    ]
    return b"".join(first + (second if sections == 2 else []))


def test_pcapng_sections_interfaces_blocks(tmp_path: Path) -> None:
    f = tmp_path / "m.pcapng"
    f.write_bytes(multi_section_pcapng())
    frames = read_all(f)
    assert [fr.index for fr in frames] == [1, 2, 3, 4, 5]
    assert [fr.linktype for fr in frames] == [101, 1, 101, 101, 1]
    assert [fr.ifname for fr in frames] == ["tun0", "eth0", "tun0", "tun1", "eth1"]
    assert [fr.data for fr in frames] == [RAW_IP, ETH, RAW_IP, RAW_IP, ETH]
    assert frames[0].comment == "first comment\nsecond ünïcode"
    assert frames[1].comment is None
    assert frames[4].comment == "big-endian comment"
    assert frames[0].ts == 1700000000.123456
    assert frames[1].ts == 1700000001.000000001
    assert frames[3].ts == 5.0
    assert frames[4].ts == 1000 + 3.0


@needs_tshark
def test_pcapng_matches_tshark(tmp_path: Path) -> None:
    # one section: tshark 4.0 numbers interfaces across sections without resetting
    f = tmp_path / "m.pcapng"
    f.write_bytes(multi_section_pcapng(sections=1))
    rows = tshark_rows(f, ["frame.cap_len", "frame.interface_name", "frame.comment"])
    frames = read_all(f)
    assert len(rows) == len(frames)
    for fr, (caplen, ifname, comment) in zip(frames, rows, strict=True):
        assert len(fr.data) == int(caplen)
        assert fr.ifname == ifname
        assert (fr.comment or "") == comment.replace("\x1f", "\n")


@needs_tshark
def test_custom_block_keeps_tshark_frame_numbers(tmp_path: Path) -> None:
    f = tmp_path / "c.pcapng"
    custom = _block("<", 0x00000BAD, struct.pack("<I", 32473) + b"data")
    f.write_bytes(shb("<") + idb("<", 101, "t") + epb("<", 0, 1, RAW_IP) + custom + epb("<", 0, 2, ETH[14:]))
    frames = read_all(f)
    assert [fr.index for fr in frames] == [1, 3]
    rows = tshark_rows(f, ["frame.number", "frame.cap_len"])
    by_number = {int(r[0]): int(r[1]) for r in rows}
    assert len(by_number) == 3  # the custom block is tshark's frame 2
    assert [by_number[fr.index] for fr in frames] == [len(fr.data) for fr in frames]


def test_bad_option_lengths_keep_packet(tmp_path: Path) -> None:
    body = struct.pack("<IIIII", 0, 0, 1, 3, 3) + b"abc\0" + struct.pack("<HH", 1, 200) + b"xx\0\0"
    f = tmp_path / "o.pcapng"
    f.write_bytes(shb("<") + idb("<", 1, "e") + _block("<", 6, body))
    (fr,) = read_all(f)
    assert fr.data == b"abc" and fr.comment is None


# --- errors -----------------------------------------------------------------------
def test_truncated_classic_pcap_at_many_offsets(tmp_path: Path) -> None:
    full = tmp_path / "full.pcap"
    wrpcap(str(full), dns_packets(3))
    blob = full.read_bytes()
    ends = []  # byte offset where each record ends
    off = 24
    while off < len(blob):
        (caplen,) = struct.unpack_from("<I", blob, off + 8)
        off += 16 + caplen
        ends.append(off)
    for cut in sorted({1, 3, 23, 24 + 5, 24 + 16, ends[0] - 1, ends[0] + 7, ends[1] + 20, ends[2] - 1}):
        f = tmp_path / f"cut{cut}.pcap"
        f.write_bytes(blob[:cut])
        got: list[Frame] = []
        with pytest.raises(CaptureFileError) as ei:
            for fr in read_frames(f):
                got.append(fr)
        assert len(got) == sum(1 for e in ends if e <= cut)
        msg = str(ei.value)
        assert msg.startswith(f"{f}: ") and "\n" not in msg
        assert "truncated" in msg or "not a pcap" in msg


def test_truncated_pcapng(tmp_path: Path) -> None:
    blob = multi_section_pcapng()
    for cut in (10, 40, len(blob) // 2, len(blob) - 1):
        f = tmp_path / f"cut{cut}.pcapng"
        f.write_bytes(blob[:cut])
        got: list[Frame] = []
        with pytest.raises(CaptureFileError, match=r"truncated"):
            for fr in read_frames(f):
                got.append(fr)
        assert got == read_all_prefix(blob, len(got), tmp_path)


def read_all_prefix(blob: bytes, n: int, tmp_path: Path) -> list[Frame]:
    whole = tmp_path / "whole.pcapng"
    whole.write_bytes(blob)
    return read_all(whole)[:n]


def test_corrupt_record_length(tmp_path: Path) -> None:
    f = tmp_path / "bad.pcap"
    recs = [(1, 0, b"abcd", 4), (2, 0, b"efgh", 4)]
    blob = bytearray(classic_pcap(recs, "<", False))
    struct.pack_into("<I", blob, 24 + 16 + 4 + 8, 0x7FFFFFFF)  # second record's caplen
    f.write_bytes(bytes(blob))
    got = []
    with pytest.raises(CaptureFileError, match=r"record length .* at byte 44$"):
        for fr in read_frames(f):
            got.append(fr.data)
    assert got == [b"abcd"]


@pytest.mark.parametrize("content", [b"", b"hello, this is not a capture file at all", b"\x00" * 100])
def test_not_a_capture(tmp_path: Path, content: bytes) -> None:
    f = tmp_path / "junk.pcap"
    f.write_bytes(content)
    with pytest.raises(CaptureFileError, match=r"not a pcap or pcapng file"):
        read_all(f)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(CaptureFileError, match=r"No such file"):
        read_all(tmp_path / "nope.pcap")
    with pytest.raises(CaptureFileError, match=r"Is a directory"):
        read_all(tmp_path)


def test_fifo_is_read_without_mmap(tmp_path: Path) -> None:
    import os
    import threading

    blob = classic_pcap([(1, 0, b"abcd", 4)], "<", False)
    fifo = tmp_path / "p.pcap"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(blob,))
    writer.start()
    frames = read_all(fifo)
    writer.join(timeout=10)
    assert [fr.data for fr in frames] == [b"abcd"]


def test_devices_are_refused_before_reading() -> None:
    for dev in ("/dev/zero", "/dev/urandom"):
        with pytest.raises(CaptureFileError, match=rf"^{dev}: not a regular file or a pipe$"):
            read_all(Path(dev))


def test_pipe_without_capture_magic_is_refused_at_once(tmp_path: Path) -> None:
    import os
    import threading

    fifo = tmp_path / "zeros"
    os.mkfifo(fifo)
    writer = threading.Thread(target=fifo.write_bytes, args=(b"\0" * 4096,))
    writer.start()
    with pytest.raises(CaptureFileError, match=r"zeros: not a pcap or pcapng file$"):
        read_all(fifo)
    writer.join(timeout=10)


def test_endless_stream_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import os
    import threading

    from egresswatch.capture import pcapfile

    monkeypatch.setattr(pcapfile, "_MAX_STREAM", 4 << 20)
    fifo = tmp_path / "endless.pcap"
    os.mkfifo(fifo)

    def feed() -> None:
        try:
            with open(fifo, "wb") as fh:
                fh.write(classic_pcap([], "<", False))
                for _ in range(8):
                    fh.write(b"\0" * (1 << 20))
        except BrokenPipeError:
            pass

    writer = threading.Thread(target=feed)
    writer.start()
    with pytest.raises(CaptureFileError, match=r"endless.pcap: more than 4 MiB from a non-regular file$"):
        read_all(fifo)
    writer.join(timeout=10)


# --- fuzzing ----------------------------------------------------------------------
MAGICS = [b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\x0a\x0d\x0d\x0a", b""]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(magic=st.sampled_from(MAGICS), rest=st.binary(max_size=400))
def test_fuzz_random_bytes(tmp_path: Path, magic: bytes, rest: bytes) -> None:
    f = tmp_path / "fuzz"
    f.write_bytes(magic + rest)
    try:
        for fr in read_frames(f):
            assert isinstance(fr.data, bytes)
    except CaptureFileError as exc:
        assert "\n" not in str(exc)


VALID = [multi_section_pcapng(), classic_pcap([(1, 5, ETH, len(ETH)), (2, 6, RAW_IP, 99)], ">", True)]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    which=st.integers(0, len(VALID) - 1),
    edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=6),
    cut=st.integers(0, 10_000),
)
def test_fuzz_mutated_files(tmp_path: Path, which: int, edits: list[tuple[int, int]], cut: int) -> None:
    blob = bytearray(VALID[which])
    for pos, val in edits:
        blob[pos % len(blob)] = val
    f = tmp_path / "mut"
    f.write_bytes(bytes(blob[: max(cut, len(blob) // 2)]))
    try:
        for fr in read_frames(f):
            assert fr.index >= 1
    except CaptureFileError as exc:
        assert "\n" not in str(exc)


# --- public corpus, checked against tshark ----------------------------------------
def corpus_captures() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    files = [p for p in (CORPUS / "public").rglob("*") if p.suffix in (".pcap", ".pcapng")]
    return sorted(files) + sorted((CORPUS / "ptcpdump").glob("*.pcapng"))


def tshark_rows(path: Path, fields: list[str]) -> list[list[str]]:
    args = ["tshark", "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=\x1f"]
    for fld in fields:
        args += ["-e", fld]
    out = subprocess.run(args, capture_output=True, text=True, check=False).stdout
    return [line.split("\t") for line in out.splitlines()]


@needs_corpus
@needs_tshark
@pytest.mark.corpus
@pytest.mark.parametrize("path", corpus_captures(), ids=lambda p: str(p.relative_to(CORPUS)))
def test_corpus_frames_match_tshark(path: Path) -> None:
    rows = tshark_rows(path, ["frame.time_epoch", "frame.cap_len", "frame.len", "frame.comment"])
    frames = read_all(path)
    assert len(frames) == len(rows)
    for fr, (ts, caplen, length, comment) in zip(frames, rows, strict=True):
        assert fr.ts == pytest.approx(float(ts), abs=1e-6)
        assert (len(fr.data), fr.orig_len) == (int(caplen), int(length))
        # tshark escapes newlines inside a comment and joins several with the aggregator
        assert (fr.comment or "").replace("\n", "\\n") == comment.replace("\x1f", "\\n")


@needs_corpus
@pytest.mark.corpus
def test_ptcpdump_comments_and_interfaces() -> None:
    frames = read_all(CORPUS / "ptcpdump" / "dns.pcapng")
    assert frames and all(fr.comment and "Cmd: /usr/bin/dig" in fr.comment for fr in frames)
    assert {fr.ifname for fr in frames} == {"ens33"}


@needs_corpus
@pytest.mark.corpus
def test_multi_interface_pcapng() -> None:
    frames = read_all(CORPUS / "public" / "zeek" / "pcapng-multi-interface.pcapng")
    assert len(frames) == 6
    assert len({fr.ifname for fr in frames}) >= 2
    assert [fr.index for fr in frames] == list(range(1, 7))


GOLDEN = Path(__file__).resolve().parents[1] / "pcaps"


@needs_tshark
@pytest.mark.parametrize(
    "name", ["vlan-qinq-dns.pcap", "sll2-dns-tls.pcap", "rawip-null.pcapng", "ipv6-ext-frag.pcap"]
)
def test_golden_captures_match_tshark(name: str) -> None:
    test_corpus_frames_match_tshark(GOLDEN / name)


def test_golden_rawip_null_interfaces_and_comments() -> None:
    frames = read_all(GOLDEN / "rawip-null.pcapng")
    assert [(fr.linktype, fr.ifname) for fr in frames] == [
        (101, "tun0"),
        (0, "lo0"),
        (101, "tun0"),
        (0, "lo0"),
    ]
    assert all(fr.comment and fr.comment.startswith("PID: ") and "\nCmd: " in fr.comment for fr in frames)


@needs_tshark
def test_golden_truncated_capture() -> None:
    path = GOLDEN / "truncated.pcap"
    rows = tshark_rows(path, ["frame.cap_len"])  # tshark also stops at the cut record
    got: list[Frame] = []
    with pytest.raises(CaptureFileError, match=r"truncated packet record at byte \d+$"):
        for fr in read_frames(path):
            got.append(fr)
    assert len(got) == len(rows) == 3
