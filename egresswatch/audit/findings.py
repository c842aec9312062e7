"""What ``egresswatch audit`` reports: a :class:`Finding` per risk, its
severity and order, and the server's command line as it may be shown.

Every text in a Finding is built from redacted values (:mod:`egresswatch.audit.secrets`),
so no secret reaches a terminal or a JSON file. Rule codes and severities are
documented in docs/audit.md.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from egresswatch.audit.secrets import redact, redact_argv
from egresswatch.mcp.discovery import ServerDef

SEVERITIES = ("info", "low", "medium", "high", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    host: str
    file: str
    server: str
    code: str
    finding: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def severity_rank(sev: str) -> int:
    return _RANK[sev]


def order(findings: list[Finding]) -> list[Finding]:
    """Most severe first, then by file, server and code."""
    return sorted(findings, key=lambda f: (-_RANK[f.severity], f.file, f.server, f.code, f.finding))


def reaches(findings: Iterable[Finding], threshold: str) -> bool:
    return any(_RANK[f.severity] >= _RANK[threshold] for f in findings)


def command_line(s: ServerDef) -> str:
    """The server's command line (or URL) with every secret masked."""
    if s.command is None:
        return redact(s.url or "")
    return " ".join(quote_arg(a) for a in redact_argv((s.command, *s.args)))


def quote_arg(a: str) -> str:
    if "…(" in a or re.fullmatch(r"[^\s'\"\\$`|;&(){}]*<[a-z-]+>[^\s'\"\\$`|;&(){}]*", a):
        return a  # a mask or a <placeholder>: shown as is
    return a if a and not re.search(r"[\s'\"\\$`|;&<>(){}]", a) else "'" + a.replace("'", "'\\''") + "'"
