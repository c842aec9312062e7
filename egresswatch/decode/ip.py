"""Below the link header: ethertype -> IP -> UDP/TCP, the innermost packet.

- Ethertype dispatch: 802.1Q, QinQ 0x88a8/0x9100 stacked tags, 802.3
  LLC/SNAP, PPPoE session, MPLS; PPP frames.
- IPv4 (header length, total length: Ethernet padding never leaks into the
  payload) and IPv6 extension headers (hop-by-hop, routing, destination
  options, AH, mobility; stop at no-next-header and ESP).
- Fragments are returned as :class:`~egresswatch.decode.wire.Fragment`.
- UDP and TCP give an :class:`IPPacket`; IP-in-IP, 6in4 and GRE, and the UDP
  tunnels of :mod:`tunnels` (innermost IP wins, as in tshark), decode on.
  ICMP errors quoting a UDP/DNS packet give None: they are ICMP, not UDP.

The Ethernet/IPv4/TCP case is the hot path (~90% of packets are bulk TCP):
``_ipv4`` builds that ``IPPacket`` inline through its slot descriptors.
Callers (:mod:`link`, :mod:`linkmore`) catch the ``IndexError`` /
``struct.error`` that short input raises here.
"""

from __future__ import annotations

import struct

from egresswatch.decode import tunnels
from egresswatch.decode.wire import (
    _ETH_IPV4,
    _ETH_IPV6,
    _ETH_MPLS,
    _ETH_PPPOE,
    _ETH_VLAN,
    _H,
    _I_BE,
    _MAX_DEPTH,
    _MAX_EXT,
    _MAX_TAGS,
    _P_ACK,
    _P_DPORT,
    _P_DST,
    _P_FLAGS,
    _P_PAY,
    _P_PROTO,
    _P_SEQ,
    _P_SPORT,
    _P_SRC,
    _P_TRUNC,
    _P_VER,
    _TCP,
    _UDP,
    Fragment,
    _addr,
    _addr_cache,
    _new,
    _packet,
)
from egresswatch.model import IPPacket

_V4 = struct.Struct("!BxHHHxBxx4s4s")  # ver/ihl, total length, ident, flags/frag offset, proto, src, dst
_V6 = struct.Struct("!HB")  # payload length, next header (at offset 4)

_SERVICE_PORTS = frozenset({53, 443, 853, 5353, 5355})  # never treated as tunnel endpoints


# --- link-layer payloads ------------------------------------------------------------
def _ethertype(data: bytes, at: int, depth: int, payload_at: int = -1) -> IPPacket | Fragment | None:
    """Dispatch on the ethertype stored at ``at``; the payload follows it (or is at ``payload_at``)."""
    (etype,) = _H.unpack_from(data, at)
    off = payload_at if payload_at >= 0 else at + 2
    tags = 0
    while etype in _ETH_VLAN and tags < _MAX_TAGS:
        (etype,) = _H.unpack_from(data, off + 2)
        off += 4
        tags += 1
    if etype <= 1500 and data[off : off + 3] == b"\xaa\xaa\x03":  # 802.3 length + LLC/SNAP
        (etype,) = _H.unpack_from(data, off + 6)
        off += 8
    if etype == _ETH_IPV4:
        return _ipv4(data, off, depth)
    if etype == _ETH_IPV6:
        return _ipv6(data, off, depth)
    if etype == _ETH_PPPOE:
        # ver/type, code, session id, length, then the PPP protocol field
        if data[off] != 0x11 or data[off + 1] != 0:
            return None
        return _ppp(data, off + 6, depth)
    if etype in _ETH_MPLS:
        return _mpls(data, off, depth)
    return None


def _mpls(data: bytes, off: int, depth: int) -> IPPacket | Fragment | None:
    for _ in range(_MAX_TAGS):
        bottom = data[off + 2] & 1
        off += 4
        if bottom:
            return _ip(data, off, depth)
    return None


def _ppp(data: bytes, off: int, depth: int) -> IPPacket | Fragment | None:
    """A PPP frame (optional ff 03 address/control, 1- or 2-byte protocol)."""
    if data[off] == 0xFF and data[off + 1] == 0x03:
        off += 2
    if data[off] & 1:  # protocol field compressed to one byte
        proto = data[off]
        off += 1
    else:
        (proto,) = _H.unpack_from(data, off)
        off += 2
    if proto == 0x21:
        return _ipv4(data, off, depth)
    if proto == 0x57:
        return _ipv6(data, off, depth)
    return None


# --- IP ---------------------------------------------------------------------------
def _ip(data: bytes, off: int, depth: int) -> IPPacket | Fragment | None:
    v = data[off] >> 4
    if v == 4:
        return _ipv4(data, off, depth)
    if v == 6:
        return _ipv6(data, off, depth)
    return None


def _ipv4(data: bytes, off: int, depth: int) -> IPPacket | Fragment | None:
    vihl, tlen, ident, ff, proto, rsrc, rdst = _V4.unpack_from(data, off)
    ihl = (vihl & 15) << 2
    if vihl >> 4 != 4 or ihl < 20:
        return None
    n = len(data)
    if tlen == 0:  # TSO/GSO super-packet captured before segmentation
        end = n
        truncated = False
    elif tlen < ihl:
        return None
    else:
        end = off + tlen
        truncated = end > n
        if truncated:
            end = n
    p = off + ihl
    if p > end:
        return None
    src = _addr_cache.get(rsrc) or _addr(rsrc)
    dst = _addr_cache.get(rdst) or _addr(rdst)
    if ff & 0x3FFF:  # MF set or non-zero offset
        return Fragment(
            4, src, dst, ident, (ff & 0x1FFF) << 3, bool(ff & 0x2000), proto, data[p:end], truncated
        )
    if proto == 6:  # TCP and _packet() inlined: the hot path
        if p + 20 > end:
            return None
        sport, dport, seq, ack, offflags = _TCP.unpack_from(data, p)
        doff = (offflags >> 12) << 2
        if doff < 20:
            return None
        pkt: IPPacket = _new(IPPacket)
        _P_SRC(pkt, src)
        _P_DST(pkt, dst)
        _P_PROTO(pkt, "tcp")
        _P_SPORT(pkt, sport)
        _P_DPORT(pkt, dport)
        _P_PAY(pkt, data[p + doff : end])
        _P_VER(pkt, 4)
        _P_FLAGS(pkt, offflags & 0xFF)
        _P_SEQ(pkt, seq)
        _P_ACK(pkt, ack)
        _P_TRUNC(pkt, truncated)
        return pkt
    return _l4(data, p, end, proto, src, dst, 4, truncated, depth)


def _ipv6(data: bytes, off: int, depth: int) -> IPPacket | Fragment | None:
    if data[off] >> 4 != 6:
        return None
    plen, nh = _V6.unpack_from(data, off + 4)
    n = len(data)
    if off + 40 > n:
        return None
    p = off + 40
    if plen == 0:  # jumbogram or offloaded: take what was captured
        end = n
        truncated = False
    else:
        end = p + plen
        truncated = end > n
        if truncated:
            end = n
    src = _addr(data[off + 8 : off + 24])
    dst = _addr(data[off + 24 : off + 40])
    return _v6_chain(data, p, end, nh, src, dst, truncated, depth)


def _v6_chain(
    data: bytes, p: int, end: int, nh: int, src: str, dst: str, truncated: bool, depth: int
) -> IPPacket | Fragment | None:
    """Walk IPv6 extension headers from ``p`` with next header ``nh``."""
    for _ in range(_MAX_EXT):
        if nh in (0, 43, 60, 135, 139, 140):  # hop-by-hop, routing, dest opts, mobility, HIP, shim6
            if p + 2 > end:
                return None
            nxt = data[p]
            p += (data[p + 1] + 1) << 3
            nh = nxt
        elif nh == 51:  # AH: length in 4-byte units minus 2
            if p + 2 > end:
                return None
            nxt = data[p]
            p += (data[p + 1] + 2) << 2
            nh = nxt
        elif nh == 44:  # fragment header
            if p + 8 > end:
                return None
            nxt = data[p]
            (offm,) = _H.unpack_from(data, p + 2)
            (ident,) = _I_BE.unpack_from(data, p + 4)
            return Fragment(
                6, src, dst, ident, offm & 0xFFF8, bool(offm & 1), nxt, data[p + 8 : end], truncated
            )
        else:
            break
        if p > end:
            return None
    else:
        return None
    if nh in (59, 50):  # no next header, ESP
        return None
    return _l4(data, p, end, nh, src, dst, 6, truncated, depth)


# --- transport and tunnels ---------------------------------------------------------
def _l4(
    data: bytes, p: int, end: int, proto: int, src: str, dst: str, ver: int, truncated: bool, depth: int
) -> IPPacket | Fragment | None:
    if proto == 17:
        if p + 8 > end:
            return None
        sport, dport, ulen = _UDP.unpack_from(data, p)
        if ulen >= 8 and p + ulen < end:
            end = p + ulen  # trust the UDP length when shorter than the IP payload
        # Tunnels by port, but never when the other end is a service port: a DNS
        # query sent from source port 2152 must stay a DNS query, not a GTP packet.
        if depth < _MAX_DEPTH and sport not in _SERVICE_PORTS and dport not in _SERVICE_PORTS:
            tunnel = _TUNNEL_DPORT.get(dport) or _TUNNEL_SPORT.get(sport)
            if tunnel is not None:
                inner = tunnel(data, p + 8, end, depth + 1)
                if inner is not _NOT_TUNNEL:
                    return inner  # type: ignore[return-value]
        return _packet(src, dst, "udp", sport, dport, data[p + 8 : end], ver, 0, 0, 0, truncated)
    if proto == 6:
        if p + 20 > end:
            return None
        sport, dport, seq, ack, offflags = _TCP.unpack_from(data, p)
        doff = (offflags >> 12) << 2
        if doff < 20:
            return None
        return _packet(
            src, dst, "tcp", sport, dport, data[p + doff : end], ver, offflags & 0xFF, seq, ack, truncated
        )
    if depth >= _MAX_DEPTH:
        return None
    if proto == 4 or proto == 41:  # IP-in-IP, 6in4 (and 6in6 / 4in6)
        return _ip(data[p:end], 0, depth + 1)
    if proto == 47:
        return _gre(data[p:end], depth + 1)
    return None  # ICMP (errors quote packets but are not UDP), ESP, SCTP, ...


# UDP tunnels by port: (data, payload start, end, depth) -> inner packet, None,
# or tunnels.NOT_TUNNEL; GRE: (data, depth) -> inner packet or None
_TUNNEL_DPORT, _TUNNEL_SPORT, _gre = tunnels.decoders(_ethertype, _ip, _ipv4, _ipv6, _ppp, _mpls)
_NOT_TUNNEL = tunnels.NOT_TUNNEL
