"""Less common link types: (linktype, frame bytes) -> innermost UDP/TCP packet.

The hot link types (Ethernet, Linux cooked, raw IP, BSD null) live in
:mod:`egresswatch.decode.link`; the engine asks this module only when
``link.decode`` does not know a frame's link type. Same rules: pure functions
of bytes, bad input gives None, never an exception.

- 802.11 data frames (105), also behind radiotap (127), PPI (192), Prism (119)
  and AVS (163) headers: LLC/SNAP, QoS, four-address and HT-control headers,
  the first A-MSDU subframe. Protected (encrypted) frames give None.
- Linux NFLOG (239, ``tcpdump -i nflog``): the payload TLV.
- PPP (9), PPP in HDLC framing (50), PPPoE session (51), Cisco HDLC (104).
- OpenBSD/macOS pflog (117) and OpenBSD enc (109).
"""

from __future__ import annotations

import struct

from egresswatch.decode import link
from egresswatch.decode.ip import _ethertype, _ip, _ppp
from egresswatch.decode.wire import Fragment
from egresswatch.model import IPPacket

__all__ = ["LINKTYPES", "decode"]

LINKTYPE_PPP = 9
LINKTYPE_PPP_HDLC = 50
LINKTYPE_PPP_ETHER = 51
LINKTYPE_C_HDLC = 104
LINKTYPE_IEEE802_11 = 105
LINKTYPE_ENC = 109
LINKTYPE_PFLOG = 117
LINKTYPE_PRISM = 119
LINKTYPE_RADIOTAP = 127
LINKTYPE_AVS = 163
LINKTYPE_PPI = 192
LINKTYPE_NFLOG = 239

_SNAP = b"\xaa\xaa\x03"
_H_LE = struct.Struct("<H")
_I_LE = struct.Struct("<I")
_I_BE = struct.Struct("!I")
_NFLOG_PAYLOAD = 9

Result = IPPacket | Fragment | None


def _dot11(data: bytes, off: int = 0) -> Result:
    """An 802.11 frame at ``off``: data frames with an LLC/SNAP payload only."""
    fc0, fc1 = data[off], data[off + 1]
    if (fc0 >> 2) & 3 != 2:  # not a data frame
        return None
    subtype = fc0 >> 4
    if subtype & 4 or fc1 & 0x40:  # no payload (null function), or protected
        return None
    p = off + (30 if fc1 & 3 == 3 else 24)  # four addresses when both DS bits are set
    amsdu = False
    if subtype & 8:  # QoS data: 2-byte QoS control, then HT control when "order" is set
        amsdu = bool(data[p] & 0x80)
        p += 2
        if fc1 & 0x80:
            p += 4
    if amsdu:  # first A-MSDU subframe: DA, SA, length, then LLC/SNAP
        p += 14
    if data[p : p + 3] != _SNAP:
        return None
    return _ethertype(data, p + 6, 0)


def _radiotap(data: bytes) -> Result:
    (hlen,) = _H_LE.unpack_from(data, 2)
    return _dot11(data, hlen) if data[0] == 0 and hlen >= 8 else None


def _ppi(data: bytes) -> Result:
    (hlen,) = _H_LE.unpack_from(data, 2)
    (dlt,) = _I_LE.unpack_from(data, 4)
    if hlen < 8 or dlt == LINKTYPE_PPI:
        return None
    if dlt in link.LINKTYPES:
        return link.decode(dlt, data[hlen:])
    return decode(dlt, data[hlen:])


def _prism(data: bytes) -> Result:
    (hlen,) = _I_LE.unpack_from(data, 4)  # msglen, 144 in practice
    return _dot11(data, hlen) if 8 <= hlen < len(data) else None


def _avs(data: bytes) -> Result:
    (hlen,) = _I_BE.unpack_from(data, 4)  # header length, 64 in practice
    return _dot11(data, hlen) if 8 <= hlen < len(data) else None


def _nflog(data: bytes) -> Result:
    """NFLOG: 4-byte header (family, version, resource id), then TLVs whose
    length and type are in host byte order (little-endian on the machines that
    write these) and padded to 4 bytes; type 9 holds the packet."""
    p = 4
    for _ in range(64):
        if p + 4 > len(data):
            return None
        tlen, ttype = struct.unpack_from("<HH", data, p)
        if tlen < 4:
            return None
        if ttype & 0x7FFF == _NFLOG_PAYLOAD:
            return _ip(data[p + 4 : p + tlen], 0, 0)
        p += (tlen + 3) & ~3
    return None


def _pflog(data: bytes) -> Result:
    hlen = (data[0] + 3) & ~3  # pfloghdr length, padded to 4 bytes
    return _ip(data, hlen, 0) if hlen >= 4 else None


_DECODERS = {
    LINKTYPE_PPP: lambda d: _ppp(d, 0, 0),
    LINKTYPE_PPP_HDLC: lambda d: _ppp(d, 0, 0),
    LINKTYPE_PPP_ETHER: lambda d: _ppp(d, 6, 0),  # PPPoE session header, then PPP
    LINKTYPE_C_HDLC: lambda d: _ethertype(d, 2, 0),  # address, control, ethertype
    LINKTYPE_IEEE802_11: _dot11,
    LINKTYPE_ENC: lambda d: _ip(d, 12, 0),  # af, spi, flags
    LINKTYPE_PFLOG: _pflog,
    LINKTYPE_PRISM: _prism,
    LINKTYPE_RADIOTAP: _radiotap,
    LINKTYPE_AVS: _avs,
    LINKTYPE_PPI: _ppi,
    LINKTYPE_NFLOG: _nflog,
}
LINKTYPES = frozenset(_DECODERS)


def decode(linktype: int, data: bytes) -> Result:
    """Decode one frame of one of :data:`LINKTYPES` (others: None)."""
    fn = _DECODERS.get(linktype)
    if fn is None:
        return None
    try:
        return fn(data)
    except (IndexError, struct.error, ValueError, OSError):
        return None
