"""DNS-over-TCP framing: a reassembled byte stream -> DNS messages.

Pure: no I/O, no clock.
"""

from __future__ import annotations

__all__ = ["TcpDnsFramer"]


class TcpDnsFramer:
    """Splits a reassembled DNS-over-TCP byte stream into messages (RFC 1035
    4.2.2: 2-byte length prefix). Feed contiguous stream bytes in order; each
    call returns the messages completed by them. Buffers at most ``cap`` bytes
    of one unfinished message (a DNS message is at most 65535 bytes)."""

    __slots__ = ("buf", "cap")

    def __init__(self, cap: int = 65537) -> None:
        self.buf = bytearray()
        self.cap = cap

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        out: list[bytes] = []
        off = 0
        n = len(buf)
        while off + 2 <= n:
            ln = (buf[off] << 8) | buf[off + 1]
            if off + 2 + ln > n:
                break
            out.append(bytes(buf[off + 2 : off + 2 + ln]))
            off += 2 + ln
        if off:
            del buf[:off]
        if len(buf) > self.cap:
            buf.clear()
        return out

    @property
    def pending(self) -> int:
        """Bytes of an unfinished message held."""
        return len(self.buf)
