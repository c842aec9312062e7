"""Allowlists as TOML: ``[servers.NAME] allow = [...]`` tables ready for
config.toml, with the notes of a suggestion or import as comments (control
characters replaced, names quoted when they are not bare keys).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from egresswatch.judge.allowlist import Notes
from egresswatch.judge.names import is_ip

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _toml_str(s: str) -> str:
    return json.dumps(s)  # a TOML basic string: JSON escapes are valid TOML escapes


def _comment(text: str) -> str:
    return re.sub(r"[\x00-\x1f\x7f]", "?", text)


def render_toml(allow: Mapping[str, list[str]], notes: Notes | None = None, header: str = "") -> str:
    """``[servers.NAME]`` tables with an ``allow`` list each, ready for config.toml."""
    lines = [f"# {_comment(h)}" for h in header.splitlines()]
    for name, entries in allow.items():
        key = name if _BARE_KEY.fullmatch(name) else _toml_str(name)
        if lines:
            lines.append("")
        lines.append(f"[servers.{key}]")
        lines += [f"# {_comment(n)}" for n in (notes or {}).get(name, [])]
        if not entries:
            lines.append("allow = []")
            continue
        lines.append("allow = [")
        for e in entries:
            tail = "  # IP address: contacted without a resolved name" if is_ip(e) else ""
            lines.append(f"  {_toml_str(e)},{tail}")
        lines.append("]")
    return "\n".join(lines) + "\n"
