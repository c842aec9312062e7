"""QUIC Initial packet protection (RFC 9001 section 5, RFC 9369): per-version
salts and labels, Initial keys from the client's DCID, header protection,
AEAD open/seal, variable-length integers and the frames an Initial may carry.
Pure functions; the connection tracking lives in egresswatch.decode.quic.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

V1 = 0x00000001
V2 = 0x6B3343CF
DRAFT29 = 0xFF00001D

_SALT_V1 = bytes.fromhex("38762cf7f55934b34d179ae6a4c80cadccbb7f0a")
_SALT_V2 = bytes.fromhex("0dede3def700a6db819381be6e269dcbf9bd2ed9")
_SALT_D29 = bytes.fromhex("afbfec289993d24c9e9786f19c6111e04390a899")  # drafts 29-32
_SALT_D23 = bytes.fromhex("c3eef712c72ebb5a11a7d2432bb46365bef9f502")  # drafts 23-28


@dataclass(frozen=True, slots=True)
class Version:
    """What differs between QUIC versions for Initial packets."""

    number: int
    salt: bytes
    label_prefix: str  # "quic " or "quicv2 "
    initial_type: int  # long-header packet type bits of Initial
    retry_type: int


def _v1_like(number: int, salt: bytes) -> Version:
    return Version(number, salt, "quic ", 0, 3)


VERSIONS: dict[int, Version] = {
    V1: _v1_like(V1, _SALT_V1),
    V2: Version(V2, _SALT_V2, "quicv2 ", 1, 0),
    **{0xFF000000 + d: _v1_like(0xFF000000 + d, _SALT_D23) for d in range(23, 29)},
    **{0xFF000000 + d: _v1_like(0xFF000000 + d, _SALT_D29) for d in range(29, 33)},
    **{0xFF000000 + d: _v1_like(0xFF000000 + d, _SALT_V1) for d in range(33, 35)},
}

_NONZERO = re.compile(rb"[^\x00]")


def _expand_label(secret: bytes, label: str, length: int) -> bytes:
    """HKDF-Expand-Label (RFC 8446 §7.1) with an empty context, length <= 32."""
    full = b"tls13 " + label.encode()
    info = length.to_bytes(2, "big") + bytes([len(full)]) + full + b"\x00"
    return hmac.new(secret, info + b"\x01", hashlib.sha256).digest()[:length]


def client_keys(version: Version, dcid: bytes) -> tuple[bytes, bytes, bytes]:
    """(key, iv, hp) of the client's Initial packets for this original DCID."""
    initial = hmac.new(version.salt, dcid, hashlib.sha256).digest()  # HKDF-Extract
    secret = _expand_label(initial, "client in", 32)
    p = version.label_prefix
    return (
        _expand_label(secret, p + "key", 16),
        _expand_label(secret, p + "iv", 12),
        _expand_label(secret, p + "hp", 16),
    )


class Keys:
    __slots__ = ("aead", "iv", "hp")

    def __init__(self, version: Version, dcid: bytes) -> None:
        key, iv, hp = client_keys(version, dcid)
        self.aead = AESGCM(key)
        self.iv = int.from_bytes(iv, "big")
        self.hp: Any = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()  # stateless per block


def read_varint(buf: bytes, i: int) -> tuple[int, int]:
    """(value, next index); raises IndexError on truncated input."""
    b = buf[i]
    n = 1 << (b >> 6)
    if i + n > len(buf):
        raise IndexError("truncated varint")
    return int.from_bytes(buf[i : i + n], "big") & ((1 << (8 * n - 2)) - 1), i + n


def encode_varint(v: int) -> bytes:
    for n, top in ((1, 0), (2, 0x40), (4, 0x80), (8, 0xC0)):
        if v < 1 << (8 * n - 2):
            return (v | (top << (8 * n - 8))).to_bytes(n, "big")
    raise ValueError("varint too large")


def decode_packet_number(largest: int, truncated: int, nbits: int) -> int:
    """RFC 9000 Appendix A.3."""
    expected = largest + 1
    win = 1 << nbits
    hwin = win // 2
    candidate = (expected & ~(win - 1)) | truncated
    if candidate <= expected - hwin and candidate < (1 << 62) - win:
        return candidate + win
    if candidate > expected + hwin and candidate >= win:
        return candidate - win
    return candidate


def open_packet(keys: Keys, pkt: bytes, pn_off: int, largest: int) -> tuple[int, bytes] | None:
    """Remove header protection and decrypt; None when authentication fails."""
    if pn_off + 20 > len(pkt):
        return None
    mask = keys.hp.update(pkt[pn_off + 4 : pn_off + 20])
    first = pkt[0] ^ (mask[0] & 0x0F)
    pn_len = (first & 3) + 1
    raw = bytes(b ^ m for b, m in zip(pkt[pn_off : pn_off + pn_len], mask[1 : 1 + pn_len], strict=True))
    pn = decode_packet_number(largest, int.from_bytes(raw, "big"), 8 * pn_len)
    header = bytes([first]) + pkt[1:pn_off] + raw
    nonce = (keys.iv ^ pn).to_bytes(12, "big")
    try:
        return pn, keys.aead.decrypt(nonce, pkt[pn_off + pn_len :], header)
    except (InvalidTag, ValueError):
        return None


def crypto_frames(plain: bytes, counters: Counter[str]) -> list[tuple[int, bytes]]:
    """CRYPTO (offset, data) of a decrypted Initial payload; parsing stops at a
    frame type not allowed in an Initial or at a malformed frame."""
    out: list[tuple[int, bytes]] = []
    i, n = 0, len(plain)
    try:
        while i < n:
            t = plain[i]
            if t == 0x00:  # PADDING: jump over the run of zeros
                m = _NONZERO.search(plain, i)
                i = m.start() if m else n
            elif t == 0x01:  # PING
                i += 1
            elif t in (0x02, 0x03):  # ACK, ACK with ECN counts
                _, i = read_varint(plain, i + 1)  # largest acknowledged
                _, i = read_varint(plain, i)  # delay
                count, i = read_varint(plain, i)
                _, i = read_varint(plain, i)  # first range
                if count > n:
                    raise IndexError("ack range count")
                for _ in range(2 * count + (3 if t == 0x03 else 0)):
                    _, i = read_varint(plain, i)
            elif t == 0x06:  # CRYPTO
                off, i = read_varint(plain, i + 1)
                ln, i = read_varint(plain, i)
                if i + ln > n:
                    raise IndexError("crypto frame past packet end")
                out.append((off, plain[i : i + ln]))
                i += ln
            elif t == 0x1C:  # CONNECTION_CLOSE
                _, i = read_varint(plain, i + 1)
                _, i = read_varint(plain, i)
                ln, i = read_varint(plain, i)
                i += ln
            else:
                counters["quic_frame_unexpected"] += 1
                break
    except IndexError:
        counters["quic_frame_malformed"] += 1
    return out


def seal_client_initial(
    version: int,
    dcid: bytes,
    scid: bytes,
    pn: int,
    frames: bytes,
    *,
    token: bytes = b"",
    pn_len: int = 2,
    pad_to: int = 0,
    key_dcid: bytes | None = None,
) -> bytes:
    """Build a protected client Initial packet (for tests and capture generators).

    ``frames`` is the plaintext payload; PADDING frames are appended so that
    the packet is at least ``pad_to`` bytes long and has a full sample. Keys
    come from ``key_dcid`` when given (the client's original DCID, for the
    later Initials that carry the server's chosen CID), else from ``dcid``.
    """
    v = VERSIONS[version]
    key, iv, hp = client_keys(v, dcid if key_dcid is None else key_dcid)
    header_len = 7 + len(dcid) + len(scid) + len(encode_varint(len(token))) + len(token) + 2 + pn_len
    frames += b"\x00" * max(0, 4 - pn_len - len(frames), pad_to - header_len - 16 - len(frames))
    first = 0xC0 | (v.initial_type << 4) | (pn_len - 1)
    header = (
        bytes([first])
        + version.to_bytes(4, "big")
        + bytes([len(dcid)])
        + dcid
        + bytes([len(scid)])
        + scid
        + encode_varint(len(token))
        + token
        + (0x4000 | (pn_len + len(frames) + 16)).to_bytes(2, "big")
    )
    pn_off = len(header)
    header += (pn & ((1 << (8 * pn_len)) - 1)).to_bytes(pn_len, "big")
    nonce = (int.from_bytes(iv, "big") ^ pn).to_bytes(12, "big")
    ct = AESGCM(key).encrypt(nonce, frames, header)
    enc = Cipher(algorithms.AES(hp), modes.ECB()).encryptor()
    mask = enc.update(ct[4 - pn_len : 20 - pn_len])
    h = bytearray(header)
    h[0] ^= mask[0] & 0x0F
    for i in range(pn_len):
        h[pn_off + i] ^= mask[1 + i]
    return bytes(h) + ct
