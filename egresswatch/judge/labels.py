"""The shape of one DNS label: its wire length, entropy and encoding signals
(long, binary, entropy, hex, base32, base64) that DNS tunnels leave.

Pure: no I/O, no clock. The DNS exfiltration detector
(:mod:`egresswatch.judge.exfil`) combines these over names and time.
"""

from __future__ import annotations

import math
import re
from collections import Counter

from egresswatch.config import ExfilConfig

_HEX = re.compile(r"[0-9a-f]{16,}")
_B32 = re.compile(r"[a-z2-7]{16,}=*|[0-9a-v]{16,}=*")
_B64 = re.compile(r"[A-Za-z0-9+/_=-]{16,}")
_LDH = re.compile(r"[a-z0-9_*-]*")
_ESCAPE = re.compile(r"\\(\d{3}|.)")
#: The encoding signals of :func:`label_signals`.
ENCODINGS = frozenset({"hex", "base32", "base64", "binary"})


def wire_len(label: str) -> int:
    """Length in bytes of a presentation-form label (``\\DDD`` and ``\\X`` are one byte)."""
    return len(_ESCAPE.sub("x", label))


def shannon_entropy(text: str) -> float:
    """Bits per character."""
    if not text:
        return 0.0
    n = len(text)
    return -sum(c / n * math.log2(c / n) for c in Counter(text).values())


def label_signals(label: str, cfg: ExfilConfig) -> tuple[str, ...]:
    """The exfiltration-shape signals one DNS label carries (empty for normal labels)."""
    out: list[str] = []
    low = label.lower()
    if wire_len(label) > cfg.max_label_len:
        out.append("long")
    if not _LDH.fullmatch(low):
        out.append("binary")  # bytes outside letters/digits/hyphen/underscore (or escapes)
    if len(label) >= 16:
        # hyphens mark word-built names (ELB, CDN edge names): entropy says little there
        if "-" not in low and shannon_entropy(low) >= cfg.entropy_threshold:
            out.append("entropy")
        digits = sum(ch.isdigit() for ch in low)
        if _HEX.fullmatch(low) and digits >= 2 and digits < len(low):
            out.append("hex")
        elif _B32.fullmatch(low) and digits >= 2 and len(low) - digits >= 4 and "-" not in low:
            out.append("base32")
        elif (
            _B64.fullmatch(label)
            and any(c.isupper() for c in label)
            and any(c.islower() for c in label)
            and digits >= 1
        ):
            out.append("base64")
    return tuple(out)
