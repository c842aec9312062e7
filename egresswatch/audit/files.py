"""Findings about MCP host config files rather than the servers in them: a
file that users other than its owner can change (``writable_config``), and
one that could not be read or understood (discovery warnings), so that a CI
gate never passes on a config it could not audit.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from egresswatch.audit.findings import Finding
from egresswatch.mcp.discovery import ConfigFile


def audit_file(cf: ConfigFile | Path) -> list[Finding]:
    """Config files (or their directories) that users other than the owner can write."""
    host = cf.host if isinstance(cf, ConfigFile) else "file"
    path = cf.path if isinstance(cf, ConfigFile) else Path(cf)
    out: list[Finding] = []

    def add(finding: str, fix: str) -> None:
        out.append(Finding("high", host, str(path), "-", "writable_config", finding, fix))

    try:
        st = os.stat(path)
    except OSError:
        return out
    if st.st_mode & 0o002:
        add(
            "config file is world-writable: any local user can add a server that runs as its owner",
            f"chmod go-w {path}",
        )
    elif st.st_mode & 0o020:
        add(
            "config file is group-writable: group members can add a server that runs as its owner",
            f"chmod go-w {path}",
        )
    dirs = {path.parent}
    try:
        dirs.add(path.resolve().parent)
    except (OSError, RuntimeError):
        pass
    for d in sorted(dirs):
        try:
            dst = os.stat(d)
        except OSError:
            continue
        if dst.st_mode & 0o022 and not dst.st_mode & stat.S_ISVTX:
            who = "any local user" if dst.st_mode & 0o002 else "its group"
            add(
                f"directory {d} is writable by {who} without the sticky bit: the config can be replaced",
                f"chmod go-w {d}",
            )
        elif st.st_uid not in (0, dst.st_uid) and d == path.parent:
            add(
                f"config file is owned by uid {st.st_uid}, not by uid {dst.st_uid} who owns {d}: that user can change it",
                f"chown {dst.st_uid} {path}",
            )
    return out


_UNREAD = ("invalid JSON", "invalid TOML", "invalid YAML", "cannot read", "cannot resolve", "cannot list",
           "not a regular file", "skipped", "not found")  # fmt: skip


def warning_findings(warnings: Iterable[str]) -> list[Finding]:
    """Discovery warnings as findings, so that a CI gate (``--fail-on``) never
    passes on a config it could not read: a file that could not be read or parsed
    is ``unreadable_config`` (high, it may define anything); a part of a file that
    was not understood (a server of the wrong shape, an unknown key) is
    ``config_not_understood`` (medium)."""
    out: list[Finding] = []
    for w in warnings:
        file, _, what = w.partition(": ")
        if any(k in what for k in _UNREAD):
            out.append(Finding("high", "-", file, "-", "unreadable_config", f"config not read: {what}",
                               "fix the file (or its permissions) so it can be audited"))  # fmt: skip
        else:
            out.append(Finding("medium", "-", file, "-", "config_not_understood", what,
                               "fix the entry; egresswatch could not audit it"))  # fmt: skip
    return out
