"""Tunnels: the packet inside VXLAN, GTP-U, Geneve, Teredo and GRE.

- UDP tunnels by port: VXLAN (4789), GTP-U (2152), Geneve (6081, RFC 8926),
  Teredo (3544, RFC 4380). A tunnel decoder returns :data:`NOT_TUNNEL` when
  the datagram is not that tunnel after all (it is then plain UDP).
- GRE (checksum, key, sequence; enhanced GRE v1 with PPP; ERSPAN I/II/III).

The inner packet is handed back to the layer decoders of :mod:`ip`, which in
turn call the tunnels: :func:`decoders` binds the two together once, at
import of :mod:`ip` (so the modules do not import each other). Pure: no I/O,
no clock.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from egresswatch.decode.wire import (
    _ETH_ERSPAN2,
    _ETH_ERSPAN3,
    _ETH_IPV4,
    _ETH_IPV6,
    _ETH_MPLS,
    _ETH_PPP,
    _ETH_TEB,
    _H,
    _MAX_EXT,
    Fragment,
)
from egresswatch.model import IPPacket

__all__ = ["NOT_TUNNEL", "decoders"]

Result = IPPacket | Fragment | None
# (data, offset, depth) -> packet; _ethertype takes the offset of the ethertype field
Layer = Callable[[bytes, int, int], Result]
# (data, payload start, end, depth) -> inner packet, None, or NOT_TUNNEL
Tunnel = Callable[[bytes, int, int, int], object]

NOT_TUNNEL = object()
_NOT_TUNNEL = NOT_TUNNEL


def decoders(
    _ethertype: Layer, _ip: Layer, _ipv4: Layer, _ipv6: Layer, _ppp: Layer, _mpls: Layer
) -> tuple[dict[int, Tunnel], dict[int, Tunnel], Callable[[bytes, int], Result]]:
    """The tunnel decoders over the given layer decoders: (UDP tunnels by
    destination port, UDP tunnels by source port, GRE)."""

    def _vxlan(data: bytes, p: int, end: int, depth: int) -> object:
        if p + 8 + 14 > end or not data[p] & 0x08:
            return _NOT_TUNNEL
        inner = data[p + 8 : end]
        return _ethertype(inner, 12, depth)

    def _geneve(data: bytes, p: int, end: int, depth: int) -> object:
        """Geneve (RFC 8926, AWS Gateway Load Balancer): options, then Ethernet or IP."""
        if p + 8 > end or data[p] >> 6 != 0:
            return _NOT_TUNNEL
        q = p + 8 + ((data[p] & 0x3F) << 2)
        (etype,) = _H.unpack_from(data, p + 2)
        if q >= end:
            return _NOT_TUNNEL
        if etype == _ETH_TEB:
            return _ethertype(data[q:end], 12, depth)
        if etype in (_ETH_IPV4, _ETH_IPV6):
            return _ip(data[q:end], 0, depth)
        return _NOT_TUNNEL

    def _teredo(data: bytes, p: int, end: int, depth: int) -> object:
        """Teredo (RFC 4380, UDP 3544): optional authentication and origin
        indicators, then an IPv6 packet."""
        if p + 2 <= end and data[p] == 0 and data[p + 1] == 1:  # authentication
            if p + 4 > end:
                return _NOT_TUNNEL
            p += 4 + data[p + 2] + data[p + 3] + 9  # id, auth value, nonce (8), confirmation (1)
        if p + 2 <= end and data[p] == 0 and data[p + 1] == 0:  # origin indication
            p += 8
        if p + 40 > end or data[p] >> 4 != 6:
            return _NOT_TUNNEL
        return _ipv6(data[p:end], 0, depth)

    def _gtpu(data: bytes, p: int, end: int, depth: int) -> object:
        if p + 8 > end:
            return _NOT_TUNNEL
        flags = data[p]
        if flags >> 5 != 1 or not flags & 0x10:  # GTP version 1, protocol type GTP
            return _NOT_TUNNEL
        if data[p + 1] != 0xFF:  # only G-PDU messages carry user packets
            return _NOT_TUNNEL
        q = p + 8
        if flags & 0x07:  # sequence number, N-PDU number, next extension type
            if q + 4 > end:
                return None
            nxt = data[q + 3]
            q += 4
            for _ in range(_MAX_EXT):
                if nxt == 0:
                    break
                if q >= end:
                    return None
                elen = data[q] << 2
                if elen == 0 or q + elen > end:
                    return None
                nxt = data[q + elen - 1]
                q += elen
            else:
                return None
        if q >= end:
            return None
        return _ip(data[q:end], 0, depth)

    # UDP tunnels: (data, payload start, end, depth) -> inner packet, None, or _NOT_TUNNEL
    _TUNNEL_DPORT: dict[int, Tunnel] = {4789: _vxlan, 2152: _gtpu, 6081: _geneve, 3544: _teredo}
    _TUNNEL_SPORT: dict[int, Tunnel] = {2152: _gtpu, 3544: _teredo}

    def _gre(data: bytes, depth: int) -> IPPacket | Fragment | None:
        flags, etype = struct.unpack_from("!HH", data, 0)
        version = flags & 7
        p = 4
        if version == 0:
            if flags & 0x4000:  # legacy source routing: not supported
                return None
            if flags & 0x8000:
                p += 4  # checksum + reserved
            if flags & 0x2000:
                p += 4  # key
            if flags & 0x1000:
                p += 4  # sequence number
        elif version == 1:  # enhanced GRE (PPTP): key = payload length + call id
            if etype != _ETH_PPP or not flags & 0x2000:
                return None
            p += 4
            if flags & 0x1000:
                p += 4
            if flags & 0x0080:
                p += 4  # acknowledgement number
        else:
            return None
        if p >= len(data):
            return None
        if etype == _ETH_IPV4:
            return _ipv4(data, p, depth)
        if etype == _ETH_IPV6:
            return _ipv6(data, p, depth)
        if etype == _ETH_TEB:
            return _ethertype(data[p:], 12, depth)
        if etype == _ETH_PPP:
            return _ppp(data, p, depth)
        if etype in _ETH_MPLS:
            return _mpls(data, p, depth)
        if etype == _ETH_ERSPAN2:  # type I (no sequence number) or II (8-byte header)
            p += 8 if flags & 0x1000 else 0
            return _ethertype(data[p:], 12, depth)
        if etype == _ETH_ERSPAN3:  # 12-byte header, 8 more with the platform sub-header
            if p + 12 > len(data):
                return None
            p += 20 if data[p + 11] & 1 else 12
            return _ethertype(data[p:], 12, depth)
        return None

    return _TUNNEL_DPORT, _TUNNEL_SPORT, _gre
