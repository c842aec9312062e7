"""Which MCP host application (Claude Code, Cursor, VS Code, Zed ...) a process is.

:func:`host_app` names the host from a process's command line, executable or
name: the lineage classifier ranks definitions by the hosts above a process,
and discovery looks for project configs in the hosts' working directories.
"""

from __future__ import annotations

from egresswatch.mcp.signature import INTERPRETER_RE, base_name
from egresswatch.model import ProcessInfo

# Host applications, by executable (or node script) basename.
HOST_APPS = {  # values are discovery.py's host names
    "claude": "claude-code",
    "claude-desktop": "claude-desktop",
    "cursor": "cursor",
    "code": "vscode",
    "code-insiders": "vscode",
    "codium": "vscode",
    "windsurf": "windsurf",
    "gemini": "gemini-cli",
    "codex": "codex",
    "zed": "zed",
    "zed-editor": "zed",
    "goose": "goose",
    "goosed": "goose",
    "lm-studio": "lm-studio",
    "lmstudio": "lm-studio",
    "q": "amazon-q",
    "opencode": "opencode",
}


def host_app(p: ProcessInfo) -> str | None:
    """The MCP host application a process is, if any (claude, cursor, vscode ...)."""
    cands = []
    if p.cmdline:
        cands.append(p.cmdline[0])
        if INTERPRETER_RE.match(base_name(p.cmdline[0])) and len(p.cmdline) > 1:
            cands.append(p.cmdline[1])
    if p.exe:
        cands.append(p.exe)
    if p.name:
        cands.append(p.name)
    for c in cands:
        b = base_name(c).removesuffix(".js").removesuffix(".mjs")
        if b in HOST_APPS:
            return HOST_APPS[b]
    return None
