#!/usr/bin/env python3
"""Write the QUIC test captures (deterministic: same bytes on every run).

    python3 pcaps/make_quic.py [OUTDIR]      # default: the folder of this script

- quic-v1-multi-initial.pcap: a ~2 KB post-quantum-sized ClientHello split
  over two QUIC v1 Initial packets, CRYPTO frames in reverse order (the later
  half of the hello is sent first, and inside each packet the frames are
  reversed); once over IPv4 (frames 1-2), once over IPv6 (frames 3-4).
- quic-v2.pcap: one QUIC v2 (RFC 9369) Initial carrying a whole ClientHello.

Packets are protected with the real Initial keys of their fixed DCIDs
(egresswatch.decode.quic.seal_client_initial), so tshark decrypts them too.
Classic pcap, Ethernet, microsecond timestamps, correct IP/UDP checksums.
"""

from __future__ import annotations

import hashlib
import ipaddress
import struct
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from egresswatch.decode.quic import V1, V2, encode_varint, seal_client_initial  # noqa: E402

TS0 = 1767225600  # 2026-01-01T00:00:00Z
MAC_C = bytes.fromhex("020000000001")
MAC_S = bytes.fromhex("020000000002")


def det_bytes(label: str, n: int) -> bytes:
    """n pseudo-random bytes fixed by label."""
    out = b""
    i = 0
    while len(out) < n:
        out += hashlib.sha256(f"{label}/{i}".encode()).digest()
        i += 1
    return out[:n]


def ext(etype: int, body: bytes) -> bytes:
    return struct.pack("!HH", etype, len(body)) + body


def client_hello(sni: str, label: str, pq: bool) -> bytes:
    """A TLS 1.3 ClientHello as a QUIC client sends it (no session id), with an
    X25519MLKEM768 key share (1216 bytes) when pq, which makes it ~1.5 KB, and a
    padding extension to 2000 bytes."""
    name = sni.encode()
    shares = struct.pack("!HH", 0x001D, 32) + det_bytes(label + "/x25519", 32)
    if pq:
        shares = struct.pack("!HH", 0x11EC, 1216) + det_bytes(label + "/mlkem", 1216) + shares
    # max_idle_timeout 30000, max_udp_payload_size 1500, initial_max_data 1 MiB
    tp = bytes.fromhex("01048000753003024" + "5dc040480100000")
    exts = [
        ext(0x0000, struct.pack("!HBH", len(name) + 3, 0, len(name)) + name),
        ext(0x000A, bytes.fromhex("0006") + (b"\x11\xec" if pq else b"\x00\x18") + bytes.fromhex("001d0017")),
        ext(0x000D, bytes.fromhex("0006040308040401")),
        ext(0x0010, bytes.fromhex("000302") + b"h3"),
        ext(0x002B, bytes.fromhex("020304")),
        ext(0x002D, bytes.fromhex("0101")),
        ext(0x0033, struct.pack("!H", len(shares)) + shares),
        ext(0x0039, tp),
    ]
    body = (
        b"\x03\x03"
        + det_bytes(label + "/random", 32)
        + b"\x00"
        + bytes.fromhex("0006130113021303")
        + b"\x01\x00"
    )
    e = b"".join(exts)
    if pq:
        fill = 2000 - 4 - len(body) - 2 - len(e) - 4
        e += ext(0x0015, bytes(fill))
    body += struct.pack("!H", len(e)) + e
    return b"\x01" + len(body).to_bytes(3, "big") + body


def crypto(off: int, data: bytes) -> bytes:
    return b"\x06" + encode_varint(off) + encode_varint(len(data)) + data


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp_frame(src: str, dst: str, sport: int, dport: int, payload: bytes, ident: int) -> bytes:
    s, d = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    ulen = 8 + len(payload)
    if s.version == 4:
        pseudo = s.packed + d.packed + struct.pack("!BBH", 0, 17, ulen)
    else:
        pseudo = s.packed + d.packed + struct.pack("!I3xB", ulen, 17)
    uc = csum(pseudo + struct.pack("!HHHH", sport, dport, ulen, 0) + payload) or 0xFFFF
    udp = struct.pack("!HHHH", sport, dport, ulen, uc) + payload
    if s.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + ulen, ident, 0x4000, 64, 17, 0, s.packed, d.packed)
        hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
        return MAC_S + MAC_C + b"\x08\x00" + hdr + udp
    hdr = struct.pack("!IHBB16s16s", 0x60000000, ulen, 17, 64, s.packed, d.packed)
    return MAC_S + MAC_C + b"\x86\xdd" + hdr + udp


def write_pcap(path: Path, frames: list[tuple[float, bytes]]) -> None:
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for ts, data in frames:
        sec, usec = divmod(round(ts * 1_000_000), 1_000_000)
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
    path.write_bytes(b"".join(out))


def split_reverse_initials(version: int, hello: bytes, dcid: bytes, scid: bytes) -> list[bytes]:
    """Two Initials: hello quarters 3,2 in the first (in that order), 1,0 in the second."""
    q = -(-len(hello) // 4)
    parts = [(o, hello[o : o + q]) for o in range(0, len(hello), q)]
    first = b"".join(crypto(o, d) for o, d in reversed(parts[2:]))
    second = b"".join(crypto(o, d) for o, d in reversed(parts[:2]))
    return [
        seal_client_initial(version, dcid, scid, pn, frames, pad_to=1200)
        for pn, frames in enumerate((first, second))
    ]


def main() -> None:
    outdir = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent
    outdir.mkdir(parents=True, exist_ok=True)

    frames: list[tuple[float, bytes]] = []
    variants = [
        ("192.0.2.10", "198.51.100.20", "multi-initial-v4.example", bytes.fromhex("c0ffee0000000004")),
        ("2001:db8::10", "2001:db8:1::20", "multi-initial-v6.example", bytes.fromhex("c0ffee0000000006")),
    ]
    for i, (src, dst, sni, dcid) in enumerate(variants):
        hello = client_hello(sni, sni, pq=True)
        assert len(hello) == 2000
        for j, pkt in enumerate(split_reverse_initials(V1, hello, dcid, bytes.fromhex("5c1d0001"))):
            frames.append(
                (TS0 + i + j * 0.000250, udp_frame(src, dst, 51000 + i, 443, pkt, 0x100 + 2 * i + j))
            )
    write_pcap(outdir / "quic-v1-multi-initial.pcap", frames)

    hello = client_hello("quic-v2.example", "quic-v2", pq=False)
    pkt = seal_client_initial(
        V2, bytes.fromhex("0b2b2b2b2b2b2b2b"), bytes.fromhex("5c1d0002"), 0, crypto(0, hello), pad_to=1200
    )
    write_pcap(
        outdir / "quic-v2.pcap",
        [(TS0 + 10, udp_frame("192.0.2.11", "198.51.100.21", 52000, 443, pkt, 0x200))],
    )


if __name__ == "__main__":
    main()
