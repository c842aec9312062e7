"""Capture files: path -> :class:`Frame` iterator (classic pcap or pcapng).

Opens the file (a regular file, mapped with ``mmap`` when big, or a pipe),
detects the format by magic number, never by file extension, and hands the
bytes to :mod:`pcap` or :mod:`pcapng`. Those are hand-written with ``struct``
over the file's bytes: scapy's readers are 10-300x slower (measured-facts.md:
RawPcapReader 174k pkt/s, PcapReader 4.8k, rdpcap 3.6k; plain struct
1.6-2.6M pkt/s), and replaying a large capture is dominated by their loop.

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
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from egresswatch.capture.frames import Skip
from egresswatch.capture.pcap import PCAP_MAGICS, read_pcap
from egresswatch.capture.pcapng import read_pcapng
from egresswatch.errors import CaptureFileError
from egresswatch.model import Frame

__all__ = ["read_frames", "detect_format"]

# Files larger than this are mapped instead of read into memory.
_MMAP_MIN = 64 * 1024 * 1024
# Most bytes read from a pipe or other non-regular file.
_MAX_STREAM = 1024 * 1024 * 1024
_PCAPNG_SHB = b"\x0a\x0d\x0d\x0a"


def detect_format(head: bytes) -> str | None:
    """``"pcap"``, ``"pcapng"`` or None for the first bytes of a file."""
    if head[:4] in PCAP_MAGICS:
        return "pcap"
    if head[:4] == _PCAPNG_SHB:
        return "pcapng"
    return None


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
            yield from read_pcap(name, buf, skip)
        elif kind == "pcapng":
            yield from read_pcapng(name, buf, skip)
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
