"""Classic pcap and pcapng file readers: capture file -> :class:`Frame`.

Hand-written with ``struct`` over the file's bytes (an ``mmap`` for big files). scapy's readers are
10-300x slower (measured-facts.md: RawPcapReader 174k pkt/s, PcapReader 4.8k,
rdpcap 3.6k; plain struct 1.6-2.6M pkt/s), and replaying a large capture is
dominated by this loop.

The format is detected by magic number, never by file extension:

- classic pcap: both byte orders, microsecond (a1b2c3d4) and nanosecond
  (a1b23c4d) timestamps; the link type comes from the file header (the FCS
  bits in the upper half of that field are masked off).
- pcapng: any number of sections, each with its own byte order; any number of
  interfaces per section (link type, snaplen, ``if_name``, ``if_tsresol`` in
  both the power-of-10 and power-of-2 forms, ``if_tsoffset``); Enhanced,
  Simple and obsolete Packet Blocks. Other block types are skipped. The
  ``opt_comment`` options of a packet block become ``Frame.comment`` (several
  joined by newlines).

``Frame.index`` counts packet records from 1, as tshark numbers frames (tshark
4.0 also gives pcapng custom blocks a frame number: they are not yielded, but
they use up an index so frame numbers stay tshark's). On a
corrupt or truncated file every frame that could be read is yielded first, then
:class:`CaptureFileError` is raised with one line naming the file and the byte
offset of the bad record.
"""

from __future__ import annotations

import mmap
import os
import stat
import struct
from collections.abc import Callable, Iterator
from dataclasses import fields
from pathlib import Path
from typing import Any, BinaryIO

from egresswatch.errors import CaptureFileError
from egresswatch.model import Frame

__all__ = ["read_frames", "detect_format", "MAX_RECORD"]

# Largest packet record accepted regardless of the header's snaplen (libpcap's
# MAXIMUM_SNAPLEN). A bigger length field means the file is corrupt.
MAX_RECORD = 262144
# Files larger than this are mapped instead of read into memory.
_MMAP_MIN = 64 * 1024 * 1024
# Most bytes read from a pipe or other non-regular file.
_MAX_STREAM = 1024 * 1024 * 1024
# Largest pcapng block accepted (a block holds one packet plus options).
_MAX_BLOCK = 16 * 1024 * 1024

_PCAP_MAGICS: dict[bytes, tuple[str, int]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"

_SHB = 0x0A0D0D0A
_IDB = 0x00000001
_PB = 0x00000002
_SPB = 0x00000003
_EPB = 0x00000006
_BOM = 0x1A2B3C4D
_CUSTOM = (0x00000BAD, 0x40000BAD)  # custom blocks: not packets, but tshark counts them as frames

_OPT_COMMENT = 1
_OPT_IF_NAME = 2
_OPT_IF_TSRESOL = 9
_OPT_IF_TSOFFSET = 14


_FIELDS = ("ts", "data", "linktype", "index", "orig_len", "ifname", "comment")
if tuple(f.name for f in fields(Frame)) != _FIELDS:  # pragma: no cover - guards a model change
    raise ImportError("egresswatch.model.Frame fields changed: update capture/pcapfile.py")
# A frozen slots dataclass's ``__init__`` costs ~750 ns (one object.__setattr__
# per field). Setting the slot descriptors directly costs ~400 ns and builds an
# identical, equal object; this is the hot loop of replay, so the pcap loop
# inlines it. Tests check that frames built this way equal ``Frame(...)``.
_new = object.__new__
_S_TS, _S_DATA, _S_LT, _S_IDX, _S_OL, _S_IF, _S_COM = (Frame.__dict__[n].__set__ for n in _FIELDS)


def _make_frame(
    ts: float, data: bytes, linktype: int, index: int, orig_len: int, ifname: str | None, comment: str | None
) -> Frame:
    f: Frame = _new(Frame)
    _S_TS(f, ts)
    _S_DATA(f, data)
    _S_LT(f, linktype)
    _S_IDX(f, index)
    _S_OL(f, orig_len)
    _S_IF(f, ifname)
    _S_COM(f, comment)
    return f


def detect_format(head: bytes) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None for the first bytes of a file."""
    if head[:4] in _PCAP_MAGICS:
        return "pcap"
    if head[:4] == _PCAPNG_SHB:
        return "pcapng"
    return None


# skip(linktype, buffer, start, end, ts, index) -> True to not yield that frame
Skip = Callable[[int, Any, int, int, float, int], bool]


def read_frames(path: str | Path, skip: Skip | None = None) -> Iterator[Frame]:
    """Yield every frame of a pcap or pcapng file (see the module docstring).

    ``skip`` plays the part the kernel filter plays for live capture: it sees
    each packet record's bytes (``buffer[start:end]``) before a Frame is built
    and returns True for records the decoder has no use for (decode.Engine's
    ``skip_raw``: bulk TCP data of flows it does not track). Frame numbers
    still count skipped records."""
    name = str(path)
    try:
        with open(path, "rb") as fh:
            st = os.fstat(fh.fileno())
            if stat.S_ISDIR(st.st_mode):
                raise CaptureFileError(f"{name}: is a directory")
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISFIFO(st.st_mode):
                # /dev/zero, /dev/urandom, a terminal: never a capture, maybe endless
                raise CaptureFileError(f"{name}: not a regular file or a pipe")
            if not stat.S_ISREG(st.st_mode):  # a pipe or FIFO (tcpdump -w - | ...)
                buf: Any = _read_stream(name, fh)
            elif st.st_size > _MMAP_MIN:
                # Big files are mapped, small ones read. (A mapped file that another
                # process truncates while we read it raises SIGBUS, so mapping is kept
                # for files where copying would cost real memory.)
                buf = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
            else:
                buf = fh.read()
    except OSError as exc:
        raise CaptureFileError(f"{name}: {exc.strerror or exc}") from None
    try:
        if len(buf) == 0:
            raise CaptureFileError(f"{name}: empty file, not a pcap or pcapng file")
        kind = detect_format(bytes(buf[:4]))
        if kind == "pcap":
            yield from _read_pcap(name, buf, skip)
        elif kind == "pcapng":
            yield from _read_pcapng(name, buf, skip)
        else:
            raise CaptureFileError(f"{name}: not a pcap or pcapng file")
    finally:
        if isinstance(buf, mmap.mmap):
            buf.close()


def _read_stream(name: str, fh: BinaryIO) -> bytes:
    """All bytes of a non-regular file (a pipe), refusing endless ones (/dev/zero)."""
    head = fh.read(4)
    if head and detect_format(head) is None:  # refuse at the first bytes, not after 1 GiB
        raise CaptureFileError(f"{name}: not a pcap or pcapng file")
    chunks = [head]
    total = len(head)
    while chunk := fh.read(1 << 20):
        total += len(chunk)
        if total > _MAX_STREAM:
            raise CaptureFileError(f"{name}: more than {_MAX_STREAM >> 20} MiB from a non-regular file")
        chunks.append(chunk)
    return b"".join(chunks)


def _read_pcap(name: str, buf: Any, skip: Skip | None = None) -> Iterator[Frame]:
    size = len(buf)
    if size < 24:
        raise CaptureFileError(f"{name}: truncated pcap file header at byte 0")
    endian, per_sec = _PCAP_MAGICS[bytes(buf[:4])]
    _major, _minor, _zone, _sigfigs, snaplen, linktype_field = struct.unpack_from(endian + "HHiIII", buf, 4)
    linktype = linktype_field & 0x03FFFFFF  # upper 6 bits: FCS length + FCS flag (libpcap LT_LINKTYPE)
    limit = max(snaplen, MAX_RECORD)
    rec = struct.Struct(endian + "IIII").unpack_from
    new, s_ts, s_data, s_lt = _new, _S_TS, _S_DATA, _S_LT
    s_idx, s_ol, s_if, s_com = _S_IDX, _S_OL, _S_IF, _S_COM
    off = 24
    index = 0
    while off + 16 <= size:
        sec, frac, caplen, orig_len = rec(buf, off)
        if caplen > limit:
            raise CaptureFileError(f"{name}: invalid packet record length {caplen} at byte {off}")
        end = off + 16 + caplen
        if end > size:
            raise CaptureFileError(f"{name}: truncated packet record at byte {off}")
        index += 1
        ts = (sec * per_sec + frac) / per_sec  # int arithmetic keeps ts correctly rounded
        if skip is not None and skip(linktype, buf, off + 16, end, ts, index):
            off = end
            continue
        # _make_frame inlined (hot loop)
        f = new(Frame)
        s_ts(f, ts)
        s_data(f, buf[off + 16 : end])
        s_lt(f, linktype)
        s_idx(f, index)
        s_ol(f, orig_len)
        s_if(f, None)
        s_com(f, None)
        yield f
        off = end
    if off != size:
        raise CaptureFileError(f"{name}: truncated packet record header at byte {off}")


class _Interface:
    __slots__ = ("linktype", "snaplen", "name", "per_sec", "offset")

    def __init__(self, linktype: int, snaplen: int, name: str | None, per_sec: int, offset: int) -> None:
        self.linktype = linktype
        self.snaplen = snaplen
        self.name = name
        self.per_sec = per_sec
        self.offset = offset


def _options(buf: Any, off: int, end: int, e: str) -> Iterator[tuple[int, bytes]]:
    """(code, value) of each option in buf[off:end]; stops at opt_endofopt or a bad length."""
    hdr = struct.Struct(e + "HH").unpack_from
    while off + 4 <= end:
        code, length = hdr(buf, off)
        if code == 0:
            return
        vend = off + 4 + length
        if vend > end:
            return  # malformed option list: ignore the rest, keep the packet
        yield code, bytes(buf[off + 4 : vend])
        off += 4 + ((length + 3) & ~3)


def _comment(buf: Any, off: int, end: int, e: str) -> str | None:
    parts = [v.decode("utf-8", errors="replace") for c, v in _options(buf, off, end, e) if c == _OPT_COMMENT]
    return "\n".join(parts) if parts else None


def _interface(buf: Any, off: int, blen: int, e: str) -> _Interface:
    linktype, _res, snaplen = struct.unpack_from(e + "HHI", buf, off + 8)
    name: str | None = None
    per_sec = 1_000_000
    tsoffset = 0
    for code, value in _options(buf, off + 16, off + blen - 4, e):
        if code == _OPT_IF_NAME:
            name = value.rstrip(b"\0").decode("utf-8", errors="replace")
        elif code == _OPT_IF_TSRESOL and len(value) >= 1:
            r = value[0]
            exp = r & 0x7F
            if r & 0x80:
                per_sec = 1 << min(exp, 64)
            else:
                per_sec = 10 ** min(exp, 19)
        elif code == _OPT_IF_TSOFFSET and len(value) >= 8:
            (tsoffset,) = struct.unpack_from(e + "q", value)
    return _Interface(linktype, snaplen, name, per_sec, tsoffset)


def _read_pcapng(name: str, buf: Any, skip: Skip | None = None) -> Iterator[Frame]:
    size = len(buf)
    off = 0
    e = "<"
    hdr = struct.Struct("<II").unpack_from
    epb = struct.Struct("<IIIII").unpack_from
    u32 = struct.Struct("<I").unpack_from
    ifaces: list[_Interface] = []
    index = 0
    make = _make_frame
    while off < size:
        if off + 12 > size:
            raise CaptureFileError(f"{name}: truncated pcapng block at byte {off}")
        btype, blen = hdr(buf, off)
        if btype == _SHB:  # the SHB type reads the same in both byte orders
            bom = bytes(buf[off + 8 : off + 12])
            if bom == b"\x4d\x3c\x2b\x1a":
                e = "<"
            elif bom == b"\x1a\x2b\x3c\x4d":
                e = ">"
            else:
                raise CaptureFileError(f"{name}: bad pcapng byte-order magic at byte {off}")
            hdr = struct.Struct(e + "II").unpack_from
            epb = struct.Struct(e + "IIIII").unpack_from
            u32 = struct.Struct(e + "I").unpack_from
            btype, blen = hdr(buf, off)
            ifaces = []
        if blen < 12 or blen & 3 or blen > _MAX_BLOCK:
            raise CaptureFileError(f"{name}: invalid pcapng block length {blen} at byte {off}")
        body_end = off + blen - 4
        if body_end + 4 > size:
            raise CaptureFileError(f"{name}: truncated pcapng block at byte {off}")
        if u32(buf, body_end)[0] != blen:
            raise CaptureFileError(f"{name}: pcapng block length mismatch at byte {off}")
        if btype == _EPB or btype == _PB:
            if blen < 32:
                raise CaptureFileError(f"{name}: truncated pcapng packet block at byte {off}")
            if btype == _EPB:
                if_id, ts_hi, ts_lo, caplen, orig_len = epb(buf, off + 8)
            else:
                if_id, _drops, ts_hi, ts_lo, caplen, orig_len = struct.unpack_from(e + "HHIIII", buf, off + 8)
            data_end = off + 28 + caplen
            if data_end > body_end:
                raise CaptureFileError(f"{name}: truncated pcapng packet data at byte {off}")
            if if_id >= len(ifaces):
                raise CaptureFileError(f"{name}: packet block for unknown interface {if_id} at byte {off}")
            iface = ifaces[if_id]
            opt_start = off + 28 + ((caplen + 3) & ~3)
            comment = _comment(buf, opt_start, body_end, e) if opt_start + 4 <= body_end else None
            per = iface.per_sec
            index += 1
            ts = (((ts_hi << 32) | ts_lo) + iface.offset * per) / per
            if skip is not None and skip(iface.linktype, buf, off + 28, data_end, ts, index):
                off += blen
                continue
            yield make(
                ts,
                buf[off + 28 : data_end],
                iface.linktype,
                index,
                orig_len,
                iface.name,
                comment,
            )
        elif btype == _SPB:
            if blen < 16:
                raise CaptureFileError(f"{name}: truncated pcapng packet block at byte {off}")
            if not ifaces:
                raise CaptureFileError(f"{name}: packet block for unknown interface 0 at byte {off}")
            iface = ifaces[0]
            (orig_len,) = u32(buf, off + 8)
            caplen = min(orig_len, body_end - (off + 12))
            if iface.snaplen:
                caplen = min(caplen, iface.snaplen)
            index += 1
            # A simple packet block carries no timestamp.
            yield make(
                0.0, buf[off + 12 : off + 12 + caplen], iface.linktype, index, orig_len, iface.name, None
            )
        elif btype == _IDB:
            if blen < 20:
                raise CaptureFileError(f"{name}: truncated pcapng interface block at byte {off}")
            ifaces.append(_interface(buf, off, blen, e))
        elif btype in _CUSTOM:
            index += 1  # tshark numbers custom blocks as frames: keep its frame numbers
        # every other block type (NRB, ISB, DSB, ...) is skipped
        off += blen
