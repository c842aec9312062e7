"""Link layer: (linktype, frame bytes) -> innermost UDP/TCP packet.

The entry points of the link/IP decoders. Pure functions of bytes: no state,
no I/O, no clock. Bad input never raises; anything that cannot be decoded
gives None.

- Link types: 1 Ethernet, 113 Linux SLL, 276 SLL2, 101/12/14 raw IP (version
  nibble), 228 raw IPv4, 229 raw IPv6, 0 BSD null and 108 OpenBSD loopback.
  Other link types (802.11, NFLOG, PPP, pflog, ...): :mod:`linkmore`.
- Below the link header (VLAN, PPPoE, MPLS, IPv4/IPv6, UDP/TCP): :mod:`ip`;
  tunnels: :mod:`tunnels`; the results (``IPPacket``, or a
  :class:`~egresswatch.decode.wire.Fragment` for ``ipfrag.Defragmenter``):
  :mod:`wire`.

The Ethernet/IPv4/TCP case is the hot path (~90% of packets are bulk TCP):
:func:`decode` goes straight to ``ip._ipv4``.
"""

from __future__ import annotations

import struct

from egresswatch.decode.ip import _ethertype, _ip, _ipv4, _ipv6, _l4, _v6_chain
from egresswatch.decode.wire import _I_BE, Fragment
from egresswatch.model import IPPacket

__all__ = ["decode", "decode_ip", "transport", "LINKTYPES"]

LINKTYPE_NULL = 0
LINKTYPE_ETHERNET = 1
LINKTYPE_RAW_12 = 12
LINKTYPE_RAW_14 = 14
LINKTYPE_RAW = 101
LINKTYPE_LOOP = 108
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
LINKTYPE_LINUX_SLL2 = 276
LINKTYPES = frozenset({0, 1, 12, 14, 101, 108, 113, 228, 229, 276})


_I_LE = struct.Struct("<I")
_NULL_V4 = frozenset({2})
_NULL_V6 = frozenset({10, 24, 28, 30})  # Linux, NetBSD/OpenBSD, FreeBSD, Darwin


# --- public entry points ------------------------------------------------------------
def decode(linktype: int, data: bytes) -> IPPacket | Fragment | None:
    """Decode one captured frame of LINKTYPE ``linktype``; None if it is not UDP/TCP over IP."""
    try:
        if linktype == 1:  # Ethernet (a literal: a global lookup costs on the hot path)
            if data[12:14] == b"\x08\x00":  # fast path: plain IPv4
                return _ipv4(data, 14, 0)
            return _ethertype(data, 12, 0)
        if linktype == LINKTYPE_LINUX_SLL:
            return _ethertype(data, 14, 0) if len(data) >= 16 else None
        if linktype == LINKTYPE_LINUX_SLL2:
            return _ethertype(data, 0, 0, payload_at=20) if len(data) >= 20 else None
        if linktype in (LINKTYPE_RAW, LINKTYPE_RAW_12, LINKTYPE_RAW_14):
            return _ip(data, 0, 0)
        if linktype == LINKTYPE_IPV4:
            return _ipv4(data, 0, 0) if data and data[0] >> 4 == 4 else None
        if linktype == LINKTYPE_IPV6:
            return _ipv6(data, 0, 0) if data and data[0] >> 4 == 6 else None
        if linktype in (LINKTYPE_NULL, LINKTYPE_LOOP):
            return _null(data)
        return None
    except (IndexError, struct.error, ValueError, OSError):
        return None


def decode_ip(data: bytes | memoryview, offset: int = 0) -> IPPacket | Fragment | None:
    """Decode an IPv4/IPv6 packet starting at ``offset`` (version nibble decides)."""
    raw = data.tobytes() if isinstance(data, memoryview) else bytes(data)
    try:
        return _ip(raw, offset, 0)
    except (IndexError, struct.error, ValueError, OSError):
        return None


def transport(
    ip_version: int, src: str, dst: str, proto_number: int, payload: bytes, truncated: bool = False
) -> IPPacket | Fragment | None:
    """The packet carried by a reassembled datagram: UDP/TCP (or a tunnel inside it).

    ``payload`` is everything after the IP header (IPv4) or after the fragment
    header (IPv6; further extension headers are walked)."""
    try:
        data = bytes(payload)
        if ip_version == 6:
            return _v6_chain(data, 0, len(data), proto_number, src, dst, truncated, 0)
        return _l4(data, 0, len(data), proto_number, src, dst, 4, truncated, 0)
    except (IndexError, struct.error, ValueError, OSError):
        return None


# --- BSD null / OpenBSD loopback ---------------------------------------------------
def _null(data: bytes) -> IPPacket | Fragment | None:
    if len(data) < 5:
        return None
    (le,) = _I_LE.unpack_from(data, 0)
    (be,) = _I_BE.unpack_from(data, 0)
    if le in _NULL_V4 or be in _NULL_V4:
        return _ipv4(data, 4, 0)
    if le in _NULL_V6 or be in _NULL_V6:
        return _ipv6(data, 4, 0)
    return None
