"""Neutralise control characters that come from packets or configs before they
reach a terminal, a notification or a log line."""

from __future__ import annotations

import re

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\ufeff]")


def _esc(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(text: object) -> str:
    """Return ``text`` as a string with control, bidi-override and line-breaking
    characters shown escaped (``\\x1b``, ``\\u202e``); backslashes are kept as is."""
    s = "" if text is None else str(text)
    return _UNSAFE.sub(_esc, s)
