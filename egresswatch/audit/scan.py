"""``audit()``: every check over what discovery found (servers, config files,
warnings), the findings in report order. The entry point of ``egresswatch audit``.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from egresswatch.audit.files import audit_file, warning_findings
from egresswatch.audit.findings import Finding, order
from egresswatch.audit.server import audit_server
from egresswatch.mcp.discovery import ConfigFile, ServerDef


def audit(
    servers: Iterable[ServerDef], files: Iterable[ConfigFile | Path] = (), warnings: Iterable[str] = ()
) -> list[Finding]:
    """Every finding, most severe first, then by file, server and code.
    Discovery ``warnings`` become findings too (see warning_findings)."""
    findings: list[Finding] = warning_findings(warnings)
    for s in servers:
        findings += audit_server(s)
    seen: set[str] = set()
    for f in files:
        p = str(f.path if isinstance(f, ConfigFile) else f)
        if p not in seen:
            seen.add(p)
            findings += audit_file(f)
    return order(findings)
