"""The capture's fast lane: which queued frames jump the backlog.

During a flood the pipeline handles frames in capture order, so a packet
that arrives after 100,000 flood packets waits for all of them. While ring
blocks are queued behind the one being read, :class:`~egresswatch.capture.live.LiveSource`
scans them once and hands over first the frames this predicate picks: a DNS
query (UDP port 53) with a label longer than the exfiltration detector's
``max_label_len``, the shape of a query that itself carries data. The cost is
a few byte reads per queued frame; nothing is dropped or reordered otherwise.
"""

from __future__ import annotations

LINKTYPE_ETHERNET = 1


def long_label_query(linktype: int, data: bytes, limit: int) -> bool:
    """True for an IPv4/IPv6 UDP DNS query to port 53 with a label longer than ``limit``."""
    try:
        off = 0
        if linktype == LINKTYPE_ETHERNET:
            off = 12
            while data[off : off + 2] in (b"\x81\x00", b"\x88\xa8") and off < 20:  # VLAN tags
                off += 4
            off += 2
        version = data[off] >> 4
        if version == 4:
            proto, l4 = data[off + 9], off + (data[off] & 15) * 4
        elif version == 6:
            proto, l4 = data[off + 6], off + 40
        else:
            return False
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
