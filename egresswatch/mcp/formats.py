"""The MCP host config file formats: where each host keeps its servers.

One parser per format (``PARSERS``): which keys of a Claude, Gemini, VS Code,
Zed, Codex, Continue or Goose file hold server entries, and how the format's
own entry shape maps onto the common one (egresswatch.mcp.entries).
:func:`parse` runs one on a file's text, :func:`sniff` guesses the format of a
file given with ``--file``. Pure functions of the text (no I/O): discovery
finds and reads the files. Problems come back as warnings, never raised.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from egresswatch.mcp.entries import ParseContext, dict_at, mapping, server_entry, server_map
from egresswatch.mcp.serverdef import Parsed
from egresswatch.mcp.syntax import load_json, load_toml, load_yaml


def _servers_under(key: str, url_is_sse: bool = False) -> Callable[[str, ParseContext], None]:
    """A parser for a JSON file whose top-level ``key`` maps NAME -> entry."""

    def parse(text: str, ctx: ParseContext) -> None:
        data = dict_at(ctx, load_json(text, ctx.warn))
        if data is not None:
            server_map(ctx, data.get(key), key, url_is_sse=url_is_sse)

    return parse


#: ``{"mcpServers": {NAME: entry}}``: Claude Desktop/Code, Cursor, Windsurf, Cline, Roo...
parse_mcpservers = _servers_under("mcpServers")
#: Gemini CLI settings.json: the same, but a bare ``url`` is an SSE endpoint
parse_gemini = _servers_under("mcpServers", url_is_sse=True)
#: VS Code mcp.json: ``{"servers": {NAME: entry}}``
parse_vscode_mcp = _servers_under("servers")


def parse_claude_json(text: str, ctx: ParseContext) -> None:
    """~/.claude.json: user servers plus ``projects.<dir>.mcpServers`` (scope
    "local", Claude Code's word: private to that user in that project)."""
    data = dict_at(ctx, load_json(text, ctx.warn, jsonc=False))
    if data is None:
        return
    server_map(ctx, data.get("mcpServers"), "mcpServers")
    projects = mapping(ctx, data.get("projects"), "projects")
    if projects is None:
        return
    ctx.projects += [Path(str(p)) for p in projects if str(p).startswith("/")]
    for pdir, pobj in projects.items():
        if not isinstance(pobj, dict) or not pobj.get("mcpServers"):
            continue
        sub = ParseContext(ctx.host, "local", ctx.file, Path(str(pdir)))
        server_map(sub, pobj.get("mcpServers"), f"projects[{pdir!r}].mcpServers")
        ctx.servers += sub.servers
        ctx.warnings += sub.warnings


def parse_vscode_settings(text: str, ctx: ParseContext) -> None:
    data = dict_at(ctx, load_json(text, ctx.warn))
    if data is None:
        return
    mcp = data.get("mcp")
    if isinstance(mcp, dict):
        server_map(ctx, mcp.get("servers"), "mcp.servers")
    server_map(ctx, data.get("mcp.servers"), "mcp.servers")


def parse_zed(text: str, ctx: ParseContext) -> None:
    data = dict_at(ctx, load_json(text, ctx.warn))
    if data is None:
        return
    servers = mapping(ctx, data.get("context_servers"), "context_servers")
    for name, e in (servers or {}).items():
        if isinstance(e, dict) and e.get("source") == "extension" and "command" not in e:
            continue  # provided by a Zed extension: launched by the extension, not the config
        server_entry(ctx, str(name), e)


def parse_codex(text: str, ctx: ParseContext) -> None:
    data = load_toml(text, ctx.warn)
    if data is not None:
        server_map(ctx, data.get("mcp_servers"), "mcp_servers")


def _continue_list(ctx: ParseContext, obj: Any) -> None:
    if obj is None:
        return
    if isinstance(obj, dict):  # a Claude-style map is accepted too
        server_map(ctx, obj, "mcpServers")
        return
    if not isinstance(obj, list):
        ctx.warn(f"mcpServers should be a list, got {type(obj).__name__}")
        return
    for i, e in enumerate(obj):
        if isinstance(e, dict) and "uses" in e and "command" not in e and "url" not in e:
            continue  # a hub block reference: nothing local to audit
        name = e.get("name") if isinstance(e, dict) else None
        server_entry(ctx, str(name) if isinstance(name, str) else f"#{i}", e)


def parse_continue_json(text: str, ctx: ParseContext) -> None:
    data = dict_at(ctx, load_json(text, ctx.warn))
    if data is None:
        return
    if "mcpServers" in data:
        _continue_list(ctx, data["mcpServers"])
    exp = data.get("experimental")
    if not isinstance(exp, dict):
        return
    servers = exp.get("modelContextProtocolServers")
    if servers is None:
        return
    if not isinstance(servers, list):
        ctx.warn("experimental.modelContextProtocolServers should be a list")
        return
    for i, e in enumerate(servers):
        t = e.get("transport") if isinstance(e, dict) else None
        if not isinstance(t, dict):
            ctx.warn(f"experimental.modelContextProtocolServers[{i}]: no transport object")
            continue
        name = e.get("name") if isinstance(e.get("name"), str) else f"#{i}"
        server_entry(ctx, str(name), t)


def parse_continue_yaml(text: str, ctx: ParseContext) -> None:
    data = dict_at(ctx, load_yaml(text, ctx.warn))
    if data is not None:
        _continue_list(ctx, data.get("mcpServers"))


def parse_goose(text: str, ctx: ParseContext) -> None:
    data = dict_at(ctx, load_yaml(text, ctx.warn))
    if data is None:
        return
    exts = mapping(ctx, data.get("extensions"), "extensions", "a mapping")
    for name, e in (exts or {}).items():
        if not isinstance(e, dict):
            ctx.warn(f"extension {str(name)!r}: should be a mapping")
            continue
        sub = e.get("config")
        conf: dict[str, Any] = dict(sub) if isinstance(sub, dict) else dict(e)
        etype = str(conf.get("type", "stdio"))
        if etype in ("builtin", "platform", "frontend", "inline_python"):
            continue
        entry: dict[str, Any] = {"type": "sse" if etype == "sse" else etype}
        if etype == "stdio":
            entry["command"] = conf.get("cmd")
            entry["args"] = conf.get("args")
        else:
            entry["url"] = conf.get("uri")
            if etype not in ("sse", "streamable_http"):
                ctx.warn(f"extension {str(name)!r}: unknown type {etype!r}")
                continue
        entry["env"] = conf.get("envs")
        entry["headers"] = conf.get("headers")
        entry["enabled"] = e.get("enabled", True)
        if isinstance(conf.get("cwd"), str):
            entry["cwd"] = conf["cwd"]
        server_entry(ctx, str(name), entry)


PARSERS: dict[str, Callable[[str, ParseContext], None]] = {
    "mcpservers": parse_mcpservers,
    "gemini": parse_gemini,
    "claude_json": parse_claude_json,
    "vscode_mcp": parse_vscode_mcp,
    "vscode_settings": parse_vscode_settings,
    "zed": parse_zed,
    "codex": parse_codex,
    "continue_json": parse_continue_json,
    "continue_yaml": parse_continue_yaml,
    "goose": parse_goose,
}


def parse(fmt: str, text: str, host: str, scope: str, file: Path, cwd: Path | None = None) -> Parsed:
    """Parse ``text`` of ``file`` in format ``fmt`` (a PARSERS key). Never raises
    for bad content: problems come back as warnings."""
    ctx = ParseContext(host, scope, file, cwd)
    PARSERS[fmt](text, ctx)
    return ctx.result()


def sniff(path: Path, text: str) -> tuple[str, str]:
    """Guess (format, host) of a file given with ``--file``."""
    name = path.name.lower()
    if name.endswith(".toml"):
        return "codex", "codex"
    if name.endswith((".yaml", ".yml")):
        return ("goose", "goose") if "extensions:" in text else ("continue_yaml", "continue")
    if name == ".claude.json":
        return "claude_json", "claude-code"
    if '"context_servers"' in text:
        return "zed", "zed"
    if '"mcpServers"' in text:
        return "mcpservers", "file"
    if '"mcp.servers"' in text or '"mcp"' in text and name == "settings.json":
        return "vscode_settings", "vscode"
    if '"servers"' in text:
        return "vscode_mcp", "vscode"
    if "modelContextProtocolServers" in text:
        return "continue_json", "continue"
    return "mcpservers", "file"
