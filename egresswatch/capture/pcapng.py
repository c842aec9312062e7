"""pcapng files: blocks -> :class:`Frame`.

Any number of sections, each with its own byte order; any number of
interfaces per section (link type, snaplen, ``if_name``, ``if_tsresol`` in
both the power-of-10 and power-of-2 forms, ``if_tsoffset``); Enhanced, Simple
and obsolete Packet Blocks. Other block types are skipped. The
``opt_comment`` options of a packet block become ``Frame.comment`` (several
joined by newlines). Custom blocks are not yielded but use up a frame index,
as tshark 4.0 numbers them. A corrupt block raises :class:`CaptureFileError`
naming the file and the byte offset, after every frame before it was yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from egresswatch.capture.frames import Skip, make_frame
from egresswatch.errors import CaptureFileError
from egresswatch.model import Frame

__all__ = ["read_pcapng"]

# Largest pcapng block accepted (a block holds one packet plus options).
_MAX_BLOCK = 16 * 1024 * 1024

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


def read_pcapng(name: str, buf: Any, skip: Skip | None = None) -> Iterator[Frame]:
    size = len(buf)
    off = 0
    e = "<"
    hdr = struct.Struct("<II").unpack_from
    epb = struct.Struct("<IIIII").unpack_from
    u32 = struct.Struct("<I").unpack_from
    ifaces: list[_Interface] = []
    index = 0
    make = make_frame
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
