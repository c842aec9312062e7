"""The capture's fast lane: which queued frames jump the backlog.

During a flood the pipeline handles frames in capture order, so a packet
that arrives after 100,000 flood packets waits for all of them. While ring
blocks are queued behind the one being read, :class:`~egresswatch.capture.live.LiveSource`
scans them once and hands over first the frames this predicate picks
(:func:`jumps_queue`): the frames that start sending data out,

- a DNS query (UDP port 53) with a label longer than the exfiltration
  detector's ``max_label_len``, the shape of a query that itself carries data;
- a TLS ClientHello complete in one TCP segment (any port): the hello of a
  connection about to carry data (an HTTPS POST). A hello split over several
  segments is left in place: its continuation would still come in order.

A hello handed over before its SYN decides its flow at once; the SYN that
follows is linked to that flow (egresswatch.judge.flows). The cost is a few
byte reads per queued frame; nothing is dropped or reordered otherwise.
"""

from __future__ import annotations

LINKTYPE_ETHERNET = 1
V6_EXT_MAX = 4  # egresswatch.capture.bpf.V6_EXT_MAX


def _l4(linktype: int, data: bytes) -> tuple[int, int]:
    """(IP protocol, offset of the transport header); (0, 0) for anything else."""
    off = 0
    if linktype == LINKTYPE_ETHERNET:
        off = 12
        while data[off : off + 2] in (b"\x81\x00", b"\x88\xa8") and off < 20:  # VLAN tags
            off += 4
        off += 2
    version = data[off] >> 4
    if version == 4:
        return data[off + 9], off + (data[off] & 15) * 4
    if version == 6:
        nh, p = data[off + 6], off + 40
        for _ in range(V6_EXT_MAX):  # as the capture filter walks them
            if nh not in (0, 43, 60):
                break
            nh, p = data[p], p + ((data[p + 1] + 1) << 3)
        return nh, p
    return 0, 0


def long_label_query(linktype: int, data: bytes, limit: int) -> bool:
    """True for an IPv4/IPv6 UDP DNS query to port 53 with a label longer than ``limit``."""
    try:
        proto, l4 = _l4(linktype, data)
        if proto != 17 or data[l4 + 2] != 0 or data[l4 + 3] != 53:
            return False
        p = l4 + 8 + 12  # the question name after the DNS header
        end = len(data)
        while p < end:
            n = data[p]
            if n == 0 or n >= 64:
                return False
            if n > limit:
                return p + n < end  # the whole label is there
            p += n + 1
    except IndexError:
        return False
    return False


def whole_client_hello(linktype: int, data: bytes) -> bool:
    """True for a TCP segment holding a whole TLS ClientHello record."""
    try:
        proto, l4 = _l4(linktype, data)
        if proto != 6:
            return False
        p = l4 + (data[l4 + 12] >> 4) * 4  # the TCP payload
        if data[p] != 0x16 or data[p + 1] != 3 or data[p + 5] != 1:  # handshake record, ClientHello
            return False
        return p + 5 + (data[p + 3] << 8 | data[p + 4]) <= len(data)
    except IndexError:
        return False


def jumps_queue(linktype: int, data: bytes, limit: int) -> bool:
    """The fast lane's choice: a data-carrying DNS query or a whole ClientHello."""
    return long_label_query(linktype, data, limit) or whole_client_hello(linktype, data)
