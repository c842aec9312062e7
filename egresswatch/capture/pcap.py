"""Classic pcap files: records -> :class:`Frame`.

Both byte orders, microsecond (a1b2c3d4) and nanosecond (a1b23c4d)
timestamps; the link type comes from the file header (the FCS bits in the
upper half of that field are masked off). Hand-written with ``struct`` over
the file's bytes: this loop is the hot loop of replay. A corrupt record raises
:class:`CaptureFileError` naming the file and the byte offset, after every
frame before it was yielded.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import Any

from egresswatch.capture.frames import _S_COM, _S_DATA, _S_IDX, _S_IF, _S_LT, _S_OL, _S_TS, Skip, _new
from egresswatch.errors import CaptureFileError
from egresswatch.model import Frame

__all__ = ["MAX_RECORD", "PCAP_MAGICS", "read_pcap"]

# Largest packet record accepted regardless of the header's snaplen (libpcap's
# MAXIMUM_SNAPLEN). A bigger length field means the file is corrupt.
MAX_RECORD = 262144

PCAP_MAGICS: dict[bytes, tuple[str, int]] = {
    b"\xd4\xc3\xb2\xa1": ("<", 1_000_000),
    b"\xa1\xb2\xc3\xd4": (">", 1_000_000),
    b"\x4d\x3c\xb2\xa1": ("<", 1_000_000_000),
    b"\xa1\xb2\x3c\x4d": (">", 1_000_000_000),
}


def read_pcap(name: str, buf: Any, skip: Skip | None = None) -> Iterator[Frame]:
    size = len(buf)
    if size < 24:
        raise CaptureFileError(f"{name}: truncated pcap file header at byte 0")
    endian, per_sec = PCAP_MAGICS[bytes(buf[:4])]
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
