"""Neutralise control characters that come from packets or configs before they
reach a terminal, a notification or a log line."""

from __future__ import annotations

import logging
import re
from typing import Any

_UNSAFE = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\ufeff]")


def _esc(m: re.Match[str]) -> str:
    c = ord(m.group(0))
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(text: object) -> str:
    """Return ``text`` as a string with control, bidi-override and line-breaking
    characters shown escaped (``\\x1b``, ``\\u202e``); backslashes are kept as is."""
    s = "" if text is None else str(text)
    return _UNSAFE.sub(_esc, s)


class SafeFormatter(logging.Formatter):
    """The log formatter of every egresswatch command: the message (with its
    arguments: paths from users' configs, process names, names from packets)
    is escaped with :func:`safe`, so no log record can carry a terminal escape
    or start a forged line; tracebacks keep their line breaks, each line escaped."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = safe(record.message)
        return super().formatMessage(record)

    def formatException(self, ei: Any) -> str:  # noqa: N802
        return "\n".join(safe(line) for line in super().formatException(ei).split("\n"))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "\n".join(safe(line) for line in super().formatStack(stack_info).split("\n"))
