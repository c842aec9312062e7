"""``egresswatch servers`` and ``egresswatch audit``: list configured MCP servers
and audit their definitions. Every string shown passes through textsafe.safe
and secret values are masked (env and header values are never shown at all)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import sys
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path

import click

from egresswatch.audit.findings import SEVERITIES, Finding, command_line, reaches
from egresswatch.audit.scan import audit
from egresswatch.cli.main import format_option
from egresswatch.mcp.discovery import Discovery, ServerDef, discover
from egresswatch.textsafe import safe

_COLOURS = {
    "critical": ("red", True),
    "high": ("red", False),
    "medium": ("yellow", False),
    "low": ("cyan", False),
}


def use_colour() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


MIN_COLUMN = 8


def terminal_width() -> int | None:
    """Columns of the terminal stdout goes to; None when it is not a terminal
    (a file or a pipe gets whole lines, for grep)."""
    if not sys.stdout.isatty():
        return None
    return shutil.get_terminal_size((100, 24)).columns


def fit_widths(widths: list[int], total: int) -> list[int]:
    """Shrink the widest columns until the row (two spaces between columns) fits ``total``."""
    out = list(widths)
    room = total - 2 * (len(out) - 1)
    while sum(out) > room:
        i = max(range(len(out)), key=lambda k: out[k])
        if out[i] <= MIN_COLUMN:
            break
        out[i] -= 1
    return out


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    colour_col: int | None = None,
    width: int | None = None,
) -> str:
    """Aligned plain-text table; cells are made terminal-safe here. With
    ``width`` (default: the terminal's, when stdout is one) long cells wrap
    inside their column so that each line fits."""
    head, blocks = table_blocks(headers, rows, colour_col, width)
    return "\n".join([head, *blocks])


def table_blocks(
    headers: Sequence[str],
    rows: Sequence[Sequence[str]],
    colour_col: int | None = None,
    width: int | None = None,
) -> tuple[str, list[str]]:
    """The header line and one text block (one or more lines) per row."""
    cells = [[safe(c) for c in r] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    width = terminal_width() if width is None else width
    if width:
        widths = fit_widths(widths, width)
    head = "  ".join(h.upper()[:w].ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()
    colour = use_colour()
    blocks = []
    for r in cells:
        lines = []
        wrapped = [
            textwrap.wrap(c, w, break_on_hyphens=False) or [""] for c, w in zip(r, widths, strict=True)
        ]
        for n in range(max(len(x) for x in wrapped)):
            parts = [(x[n] if n < len(x) else "").ljust(w) for x, w in zip(wrapped, widths, strict=True)]
            if colour and n == 0 and colour_col is not None and r[colour_col] in _COLOURS:
                fg, bold = _COLOURS[r[colour_col]]
                parts[colour_col] = click.style(parts[colour_col], fg=fg, bold=bold or None)
            lines.append("  ".join(parts).rstrip())
        blocks.append("\n".join(lines))
    return head, blocks


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
    head, blocks = table_blocks(("host", "scope", "file", "name", "command / url", "env keys"), rows)
    out = [head]
    for s, block in zip(discovery.servers, blocks, strict=True):
        out.append(block)
        extra = (trees or {}).get(s)
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
    type=click.Path(readable=False, path_type=Path),
    help="Home directory to scan (repeatable; default: every user when root, else yours).",
)
_project = click.option(
    "--project",
    "projects",
    multiple=True,
    type=click.Path(readable=False, path_type=Path),
    help="Project directory whose .mcp.json, .vscode/mcp.json ... to read (repeatable).",
)
_file = click.option(
    "--file",
    "files",
    multiple=True,
    type=click.Path(readable=False, path_type=Path),
    help="Extra config file to read; its format is guessed (repeatable).",
)
_format = format_option()


def records_out(records: Sequence[Mapping[str, object]], fmt: str) -> str:
    """json (one list), jsonl (one object a line) or csv (lists and objects as JSON
    text, strings made terminal-safe) of flat-ish dicts sharing their keys."""
    if fmt == "json":
        return json.dumps(list(records), indent=2, ensure_ascii=True)
    if fmt == "jsonl":
        return "\n".join(json.dumps(r, ensure_ascii=True, separators=(",", ":")) for r in records)
    buf = io.StringIO()
    keys = list(records[0]) if records else []
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(keys)
    for r in records:
        w.writerow(
            ["" if r.get(k) is None else json.dumps(r[k]) if isinstance(r[k], list | dict) else safe(r[k])
             for k in keys]
        )  # fmt: skip
    return buf.getvalue().rstrip("\n")


def _discover(
    homes: tuple[Path, ...], files: tuple[Path, ...], projects: tuple[Path, ...], warn: bool = True
) -> Discovery:
    if not projects:
        from egresswatch.attribute.listings import host_project_dirs

        # where MCP hosts run now: their project-scope configs
        projects = tuple(host_project_dirs())
    d = discover(homes or None, files, projects)
    for w in d.warnings if warn else ():
        click.echo(f"egresswatch: warning: {safe(w)}", err=True)
    return d


def live_trees(d: Discovery) -> dict[ServerDef, str]:
    """The process trees running now from each discovered server (a psutil
    snapshot through the lineage matcher; needs root to see other users)."""
    from egresswatch.attribute.lineage import LineageTracker
    from egresswatch.attribute.trees import render_tree
    from egresswatch.config import DEFAULT_LAUNCHER_PATTERNS

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
    if fmt != "table":
        rows = []
        for s in d.servers:
            row = server_dict(s)
            if live:
                row["processes"] = trees.get(s, "")
            rows.append(row)
        text = records_out(rows, fmt)
        if text:
            click.echo(text)
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
    if fmt != "table":
        text = records_out([f.to_dict() for f in findings], fmt)
        if text:
            click.echo(text)
    else:
        click.echo(render_findings(findings))
        click.echo(f"{len(d.servers)} servers in {len(d.files)} files, {len(findings)} findings", err=True)
    if fail_on is not None and reaches(findings, fail_on):
        sys.exit(1)


COMMANDS = [audit_cmd, servers_cmd]
