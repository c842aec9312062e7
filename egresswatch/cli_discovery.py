"""``egresswatch servers`` and ``egresswatch audit``: list configured MCP servers
and audit their definitions. Every string shown passes through textsafe.safe
and secret values are masked (env and header values are never shown at all)."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from egresswatch.audit import SEVERITIES, Finding, audit, command_line, reaches
from egresswatch.discovery import Discovery, ServerDef, discover
from egresswatch.textsafe import safe

_COLOURS = {
    "critical": ("red", True),
    "high": ("red", False),
    "medium": ("yellow", False),
    "low": ("cyan", False),
}


def use_colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], colour_col: int | None = None) -> str:
    """Aligned plain-text table; cells are made terminal-safe here."""
    cells = [[safe(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    colour = use_colour()
    for r in cells:
        parts = [c.ljust(w) for c, w in zip(r, widths, strict=True)]
        if colour and colour_col is not None and r[colour_col] in _COLOURS:
            fg, bold = _COLOURS[r[colour_col]]
            parts[colour_col] = click.style(parts[colour_col], fg=fg, bold=bold or None)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


def server_dict(s: ServerDef) -> dict[str, object]:
    return {
        "host": s.host,
        "scope": s.scope,
        "file": str(s.file),
        "name": s.name,
        "transport": s.transport,
        "command": command_line(s) if s.command else None,
        "url": command_line(s) if not s.command else None,
        "env_keys": list(s.env_keys),
        "header_keys": list(s.header_keys),
        "cwd": str(s.cwd) if s.cwd else None,
        "project": str(s.cwd) if s.cwd and s.scope in ("local", "project", "workspace") else None,
        "owner": s.owner,
        "disabled": s.disabled,
    }


def scope_cell(s: ServerDef) -> str:
    """The scope column: a project-bound scope names its project directory
    (Claude Code's ``local`` entries live in ~/.claude.json, not in the project)."""
    if s.scope in ("local", "project", "workspace") and s.cwd:
        return f"{s.scope} {s.cwd}"
    return s.scope


def render_servers(discovery: Discovery, trees: Mapping[ServerDef, str] | None = None) -> str:
    """Table of discovered servers. ``trees`` maps a server to extra text (for
    example its live process tree) printed indented under its row."""
    if not discovery.servers:
        return "no MCP servers found"
    rows = []
    for s in discovery.servers:
        name = s.name + (" (disabled)" if s.disabled else "")
        rows.append([s.host, scope_cell(s), str(s.file), name, command_line(s), ",".join(s.env_keys) or "-"])
    text = table(("host", "scope", "file", "name", "command / url", "env keys"), rows)
    if not trees:
        return text
    lines = text.split("\n")
    out = [lines[0]]
    for s, line in zip(discovery.servers, lines[1:], strict=True):
        out.append(line)
        extra = trees.get(s)
        if extra:
            out += ["    " + safe(t) for t in extra.splitlines()]
    return "\n".join(out)


def render_findings(findings: Sequence[Finding]) -> str:
    if not findings:
        return "no findings"
    rows = [[f.severity, f.host, f.file, f.server, f"[{f.code}] {f.finding}", f.fix] for f in findings]
    return table(("severity", "host", "file", "server", "finding", "fix"), rows, colour_col=0)


_home = click.option(
    "--home",
    "homes",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Home directory to scan (repeatable; default: every user when root, else yours).",
)
_project = click.option(
    "--project",
    "projects",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Project directory whose .mcp.json, .vscode/mcp.json ... to read (repeatable).",
)
_file = click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(path_type=Path),
    help="Extra config file to read; its format is guessed (repeatable).",
)
_format = click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)


def _discover(
    homes: tuple[Path, ...], files: tuple[Path, ...], projects: tuple[Path, ...], warn: bool = True
) -> Discovery:
    if not projects:
        from egresswatch.lineage import host_project_dirs

        # where MCP hosts run now: their project-scope configs
        projects = tuple(host_project_dirs())
    d = discover(homes or None, files, projects)
    for w in d.warnings if warn else ():
        click.echo(f"egresswatch: warning: {safe(w)}", err=True)
    return d


def live_trees(d: Discovery) -> dict[ServerDef, str]:
    """The process trees running now from each discovered server (a psutil
    snapshot through the lineage matcher; needs root to see other users)."""
    from egresswatch.config import DEFAULT_LAUNCHER_PATTERNS
    from egresswatch.lineage import LineageTracker, render_tree

    tracker = LineageTracker(d.servers, DEFAULT_LAUNCHER_PATTERNS)
    tracker.seed()
    by_name: dict[tuple[str | None, str], list[str]] = {}
    for tree in tracker.trees():
        by_name.setdefault((tree.host, tree.server), []).append(render_tree(tree))
    out: dict[ServerDef, str] = {}
    for s in d.servers:
        texts = by_name.get((s.host, s.name))
        if texts:
            out[s] = "\n".join(texts)
    return out


@click.command("servers")
@_home
@_file
@_project
@_format
@click.option("--live/--no-live", default=True, show_default=True,
              help="Show the process trees running now from each server.")  # fmt: skip
def servers_cmd(
    homes: tuple[Path, ...], files: tuple[Path, ...], projects: tuple[Path, ...], fmt: str, live: bool
) -> None:
    """List the MCP servers that hosts on this machine are configured to run,
    and the process trees running from each now (pid, command, phase)."""
    d = _discover(homes, files, projects)
    trees = live_trees(d) if live else {}
    if fmt == "json":
        rows = []
        for s in d.servers:
            row = server_dict(s)
            if live:
                row["processes"] = trees.get(s, "")
            rows.append(row)
        click.echo(json.dumps(rows, indent=2, ensure_ascii=True))
    else:
        click.echo(render_servers(d, trees))


@click.command("audit")
@_home
@_file
@_project
@_format
@click.option(
    "--fail-on",
    type=click.Choice(SEVERITIES),
    default=None,
    help="Exit 1 when a finding reaches this severity.",
)
def audit_cmd(
    homes: tuple[Path, ...],
    files: tuple[Path, ...],
    projects: tuple[Path, ...],
    fmt: str,
    fail_on: str | None,
) -> None:
    """Find risky MCP server definitions (unpinned packages, plain-text secrets,
    lookalike names, unsafe containers, curl|sh, writable configs) before they run.
    Static: nothing is launched or downloaded."""
    d = _discover(homes, files, projects, warn=False)  # the warnings are findings here
    findings = audit(d.servers, d.files, d.warnings)
    if fmt == "json":
        click.echo(json.dumps([f.to_dict() for f in findings], indent=2, ensure_ascii=True))
    else:
        click.echo(render_findings(findings))
        click.echo(f"{len(d.servers)} servers in {len(d.files)} files, {len(findings)} findings", err=True)
    if fail_on is not None and reaches(findings, fail_on):
        sys.exit(1)


COMMANDS = [audit_cmd, servers_cmd]
