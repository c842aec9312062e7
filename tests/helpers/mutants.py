"""Mutated capture files for fuzzing `egresswatch replay` (tests/test_fuzz_replay.py,
bench/fuzz_replay.py).

Sources: the golden captures in pcaps/ and, when present, ../shared/corpus/public.
Each mutant is one of:

- ``bitflip``: 1-32 random bits flipped, half of the time inside packet data;
- ``cut-file``: the file ends inside the file header, a record header or a
  packet, at a layer boundary (link, IP, transport, payload) or a random byte;
- ``cut-packet``: one packet's captured length cut at a layer boundary, the
  file otherwise valid (re-written as pcap or pcapng);
- ``length``: a length or count field set to 0 or to its maximum: the record's
  caplen/orig_len, IPv4 IHL/total length, IPv6 payload length, UDP length, TCP
  data offset, DNS counts, TLS record/handshake lengths, QUIC long-header length;
- ``splice``: packets of another capture (any link type) inserted, re-written as
  pcap or pcapng;
- ``block``: a pcapng block's total length (leading or trailing) set to 0, 4,
  13, +-4, 0xffffffff, or an option length set to 0xffff.

:func:`mutants` is deterministic for a given seed.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from egresswatch.capture.pcapfile import read_frames
from egresswatch.errors import CaptureFileError
from egresswatch.model import Frame

REPO = Path(__file__).resolve().parents[2]
KINDS = ("bitflip", "cut-file", "cut-packet", "length", "splice", "block")
_LINK_HDR = {1: 14, 113: 16, 276: 20, 0: 4, 108: 4, 101: 0, 12: 0, 14: 0, 228: 0, 229: 0}


@dataclass(frozen=True)
class Source:
    path: Path
    data: bytes
    frames: tuple[Frame, ...]


@dataclass(frozen=True)
class Mutant:
    source: Path
    kind: str
    detail: str
    data: bytes
    suffix: str  # ".pcap" or ".pcapng" (what it claims to be; content decides)


def source_captures(corpus: Path | None = None) -> list[Path]:
    """pcaps/*.pcap* and every capture under the public corpus (sorted, stable)."""
    corpus = corpus or REPO.parent / "shared" / "corpus" / "public"
    files = sorted(p for p in (REPO / "pcaps").iterdir() if p.suffix in (".pcap", ".pcapng"))
    if corpus.is_dir():
        files += sorted(p for p in corpus.rglob("*") if p.suffix in (".pcap", ".pcapng") and p.is_file())
    return files


def load_sources(paths: list[Path], max_bytes: int = 1 << 20) -> list[Source]:
    out = []
    for p in paths:
        data = p.read_bytes()
        if len(data) > max_bytes:
            continue
        frames: list[Frame] = []
        try:
            for f in read_frames(p):
                frames.append(f)
        except CaptureFileError:
            pass  # truncated.pcap and friends: keep the frames that could be read
        out.append(Source(p, data, tuple(frames)))
    return out


# --- writers -----------------------------------------------------------------------
def write_pcap(frames: list[Frame], linktype: int | None = None) -> bytes:
    lt = linktype if linktype is not None else (frames[0].linktype if frames else 1)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 262144, lt)]
    for f in frames:
        sec = int(f.ts)
        out.append(struct.pack("<IIII", sec, int((f.ts - sec) * 1e6), len(f.data), f.orig_len or len(f.data)))
        out.append(f.data)
    return b"".join(out)


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    n = len(body) + 12
    return struct.pack("<II", btype, n) + body + struct.pack("<I", n)


def write_pcapng(frames: list[Frame]) -> bytes:
    out = [_block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))]
    ifaces: dict[int, int] = {}
    for f in frames:
        if f.linktype not in ifaces:
            ifaces[f.linktype] = len(ifaces)
            out.append(_block(1, struct.pack("<HHI", f.linktype, 0, 0)))
        t = int(f.ts * 1e6)
        body = struct.pack("<IIIII", ifaces[f.linktype], t >> 32, t & 0xFFFFFFFF, len(f.data), len(f.data))
        out.append(_block(6, body + f.data))
    return b"".join(out)


# --- packet layout -----------------------------------------------------------------
def layers(f: Frame) -> list[int]:
    """Byte offsets in ``f.data`` where the link, IP, transport and payload
    headers start (as far as they could be found), plus a few inside the payload."""
    d = f.data
    at = _LINK_HDR.get(f.linktype, 0)
    if f.linktype == 1 and d[12:14] in (b"\x81\x00", b"\x88\xa8"):
        at = 18 if d[16:18] not in (b"\x81\x00", b"\x88\xa8") else 22
    cuts = [0, 1, at]
    if len(d) <= at:
        return cuts
    ver = d[at] >> 4
    if ver == 4:
        t = at + (d[at] & 15) * 4
        proto = d[at + 9] if len(d) > at + 9 else 0
    elif ver == 6:
        t, proto = at + 40, d[at + 6] if len(d) > at + 6 else 0
    else:
        return cuts
    cuts += [at + 1, at + 9, t]
    if proto == 17:
        p = t + 8
    elif proto == 6 and len(d) > t + 12:
        p = t + (d[t + 12] >> 4) * 4
    else:
        return cuts
    cuts += [t + 4, p, p + 2, p + 5, p + 12, p + 40]
    return [c for c in cuts if c <= len(d)]


def length_fields(f: Frame) -> list[tuple[int, int]]:
    """(offset, width) of length/count fields of the packet in ``f.data``."""
    cuts = layers(f)
    if len(cuts) < 6:
        return []
    at, t = cuts[2], cuts[5]
    d = f.data
    fields = [(at, 1)]  # version/IHL byte: IHL 0 or 15
    fields += [(at + 2, 2)] if d[at] >> 4 == 4 else [(at + 4, 2)]
    if len(cuts) > 7:
        p = cuts[7]
        fields += [(t + 4, 2), (t + 12, 1)]  # UDP length / TCP data offset (whichever it is)
        fields += [(p + 4, 2), (p + 6, 2), (p + 8, 2)]  # DNS counts
        fields += [(p + 3, 2), (p + 6, 3), (p + 43, 1)]  # TLS record, handshake, session id
        fields += [(p + 5, 1), (p + 6 + (d[p + 5] if len(d) > p + 5 else 0), 1)]  # QUIC CID lengths
    return [(o, w) for o, w in fields if o + w <= len(d)]


# --- mutations ---------------------------------------------------------------------
def _bitflip(rng: random.Random, s: Source) -> tuple[str, bytes]:
    b = bytearray(s.data)
    k = rng.choice((1, 1, 2, 4, 8, 32))
    lo = 24 if rng.random() < 0.5 and len(b) > 64 else 0
    for _ in range(k):
        i = rng.randrange(lo, len(b))
        b[i] ^= 1 << rng.randrange(8)
    return f"{k} bits", bytes(b)


def _cut_file(rng: random.Random, s: Source) -> tuple[str, bytes]:
    r = rng.random()
    if r < 0.1 or not s.frames:
        n = rng.randrange(1, min(len(s.data), 40))
        return f"at {n} (file header)", s.data[:n]
    # find the chosen packet's bytes in the file and cut at one of its layer boundaries
    f = rng.choice(s.frames[:200])
    start = s.data.find(f.data)
    if start < 0 or r < 0.2:
        n = rng.randrange(1, len(s.data))
        return f"at random byte {n}", s.data[:n]
    if r < 0.3:
        n = start - rng.randrange(1, 16)
        return f"record header of frame {f.index}", s.data[: max(n, 1)]
    c = rng.choice(layers(f))
    return f"frame {f.index} at layer offset {c}", s.data[: start + c]


def _rewrite(rng: random.Random, frames: list[Frame]) -> tuple[bytes, str]:
    if len({f.linktype for f in frames}) > 1 or rng.random() < 0.5:
        return write_pcapng(frames), ".pcapng"
    return write_pcap(frames), ".pcap"


def _replace(f: Frame, data: bytes) -> Frame:
    return Frame(f.ts, data, f.linktype, f.index, f.orig_len, f.ifname, f.comment)


def mutants(seed: int, n: int, sources: list[Source]) -> Iterator[Mutant]:
    """``n`` mutants, the same ones for the same seed and sources."""
    rng = random.Random(seed)
    ng = [s for s in sources if s.data[:4] == b"\x0a\x0d\x0d\x0a"]
    with_frames = [s for s in sources if s.frames]
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        s = rng.choice(ng if kind == "block" and ng else with_frames if kind != "bitflip" else sources)
        suffix = ".pcapng" if s.data[:4] == b"\x0a\x0d\x0d\x0a" else ".pcap"
        frames = list(s.frames[:300])
        if kind == "bitflip":
            detail, data = _bitflip(rng, s)
        elif kind == "cut-file":
            detail, data = _cut_file(rng, s)
        elif kind == "cut-packet":
            j = rng.randrange(len(frames))
            c = rng.choice(layers(frames[j]))
            frames[j] = _replace(frames[j], frames[j].data[:c])
            data, suffix = _rewrite(rng, frames)
            detail = f"frame {j + 1} cut at {c}"
        elif kind == "length":
            data, suffix, detail = _length(rng, s, frames)
        elif kind == "splice":
            other = rng.choice(with_frames)
            take = list(other.frames[: rng.randrange(1, 40)])
            at = rng.randrange(len(frames) + 1)
            frames[at:at] = take
            data, suffix = _rewrite(rng, frames)
            detail = f"{len(take)} frames of {other.path.name} at {at}"
        else:
            detail, data = _pcapng_block(rng, s.data)
        yield Mutant(s.path, kind, detail, data, suffix)


def _length(rng: random.Random, s: Source, frames: list[Frame]) -> tuple[bytes, str, str]:
    value = rng.choice(("zero", "max"))
    candidates = [(j, o, w) for j, f in enumerate(frames[:100]) for o, w in length_fields(f)]
    if not candidates or rng.random() < 0.2:  # the capture record's own lengths
        b = bytearray(write_pcap(frames))
        j = rng.randrange(len(frames))
        off = 24 + sum(16 + len(f.data) for f in frames[:j]) + rng.choice((8, 12))
        b[off : off + 4] = b"\0\0\0\0" if value == "zero" else b"\xff\xff\xff\xff"
        return bytes(b), ".pcap", f"record {j + 1} length field at {off} = {value}"
    j, o, w = rng.choice(candidates)
    d = bytearray(frames[j].data)
    d[o : o + w] = b"\0" * w if value == "zero" else b"\xff" * w
    frames[j] = _replace(frames[j], bytes(d))
    data, suffix = _rewrite(rng, frames)
    return data, suffix, f"frame {j + 1} field at {o} (width {w}) = {value}"


def _pcapng_block(rng: random.Random, data: bytes) -> tuple[str, bytes]:
    blocks = []
    off = 0
    while off + 12 <= len(data) and len(blocks) < 2000:
        btype, blen = struct.unpack_from("<II", data, off)
        if blen < 12 or off + blen > len(data):
            break
        blocks.append((off, btype, blen))
        off += blen
    if not blocks:
        return "no blocks", data
    off, btype, blen = rng.choice(blocks)
    b = bytearray(data)
    r = rng.random()
    if r < 0.15 and btype in (1, 6) and blen > 32:  # an option or the packet length
        o = off + (28 if btype == 6 else 16)
        if btype == 6 and rng.random() < 0.5:
            v = rng.choice((0, 0xFFFFFFFF, blen))
            struct.pack_into("<I", b, off + 20, v)
            return f"EPB at {off} caplen = {v}", bytes(b)
        struct.pack_into("<HH", b, o, 1, 0xFFFF)
        return f"block at {off} option length 0xffff", bytes(b)
    v = rng.choice((0, 4, 13, blen - 4, blen + 4, 0xFFFFFFFF, 0x7FFFFFFC))
    where = off + 4 if rng.random() < 0.6 else off + blen - 4
    struct.pack_into("<I", b, where, v & 0xFFFFFFFF)
    return f"block type {btype:#x} at {off}: length at {where} = {v}", bytes(b)
