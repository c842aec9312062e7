"""Parsers for MCP host configuration files: text in, ServerDefs and warnings out.

Pure functions of the file text (no I/O): ``discovery.py`` finds and reads the
files. Every problem is a one-line warning string ``"FILE: ..."``; nothing
raises. Values of ``env`` and ``headers`` are secrets-in-waiting: they are kept
for the static audit but never shown (``repr=False``; use ``env_keys``).
"""

from __future__ import annotations

import json
import re
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Pairs = tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class ServerDef:
    """One MCP server definition as a host would launch or connect to it."""

    host: str
    scope: str  # user | local | project | workspace | system
    file: Path
    name: str
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Pairs = field(default=(), repr=False)
    url: str | None = None
    transport: str = "stdio"  # stdio | sse | http
    cwd: Path | None = None
    disabled: bool = False
    headers: Pairs = field(default=(), repr=False)
    #: the account whose config holds the definition (user name as /proc shows
    #: it); it speaks only for that account's processes. None: a system-wide file,
    #: for every account.
    owner: str | None = None

    @property
    def env_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.env)

    @property
    def header_keys(self) -> tuple[str, ...]:
        return tuple(k for k, _ in self.headers)


@dataclass(frozen=True, slots=True)
class Parsed:
    servers: tuple[ServerDef, ...] = ()
    warnings: tuple[str, ...] = ()
    projects: tuple[Path, ...] = ()  # project directories a file names (~/.claude.json)


class _Ctx:
    """Collects servers and warnings while one file is parsed."""

    def __init__(self, host: str, scope: str, file: Path, cwd: Path | None) -> None:
        self.host, self.scope, self.file, self.cwd = host, scope, file, cwd
        self.servers: list[ServerDef] = []
        self.warnings: list[str] = []
        self.projects: list[Path] = []

    def warn(self, msg: str) -> None:
        self.warnings.append(f"{self.file}: {msg}")

    def result(self) -> Parsed:
        return Parsed(tuple(self.servers), tuple(self.warnings), tuple(self.projects))


# ---------------------------------------------------------------- text formats


def strip_jsonc(text: str) -> str:
    """Remove // and /* */ comments and trailing commas outside strings; keeps
    line numbers (comments become spaces, newlines stay)."""
    out: list[str] = []
    i, n = 0, len(text)
    pending_comma: int | None = None  # index in out of a comma that may trail
    while i < n:
        c = text[i]
        if c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append(text[i : j + 1])
            pending_comma = None
            i = j + 1
        elif text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            out.append(" " * (j - i))
            i = j
        elif text.startswith("/*", i):
            j = text.find("*/", i + 2)
            j = n if j < 0 else j + 2
            out.append(re.sub(r"[^\n]", " ", text[i:j]))
            i = j
        else:
            if c == ",":
                pending_comma = len(out)
            elif c in "}]" and pending_comma is not None:
                out[pending_comma] = " "
                pending_comma = None
            elif not c.isspace():
                pending_comma = None
            out.append(c)
            i += 1
    return "".join(out)


def load_json(text: str, ctx: _Ctx, jsonc: bool = True) -> Any:
    body = strip_jsonc(text) if jsonc else text
    if jsonc and not body.strip():
        return None  # a settings file holding only comments is valid and empty
    try:
        return json.loads(body)
    except json.JSONDecodeError as exc:
        ctx.warn(f"invalid JSON at line {exc.lineno} column {exc.colno}: {exc.msg}")
    except RecursionError:
        ctx.warn("invalid JSON: nested too deeply")
    return None


def load_toml(text: str, ctx: _Ctx) -> Any:
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        ctx.warn(f"invalid TOML: {exc}")
    return None


def load_yaml(text: str, ctx: _Ctx) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        line = exc.problem_mark.line + 1 if exc.problem_mark else 0
        ctx.warn(f"invalid YAML at line {line}: {exc.problem or exc.context}")
    except (yaml.YAMLError, RecursionError) as exc:
        ctx.warn(f"invalid YAML: {type(exc).__name__}")
    return None


# ---------------------------------------------------------------- entries

# Keys any host documents for a server entry; others give an "unknown key" warning.
_KNOWN_KEYS = frozenset(
    "command args env url type transport cwd disabled enabled headers serverUrl httpUrl "
    "autoApprove alwaysAllow timeout trust description envFile includeTools excludeTools "
    "disabledTools enabledTools oauth name source settings tcp authProviderType "
    "startup_timeout_sec startup_timeout_ms tool_timeout_sec bearer_token bearer_token_env_var "
    "http_headers env_http_headers env_vars requestInit dev gallery version networkTimeout "
    "watchPaths icon notes uses with transportType headersHelper scopes required oauth_resource "
    "startup_timeout connectionTimeout requestOptions apiKey".split()
)
_TRANSPORTS = {
    "stdio": "stdio",
    "local": "stdio",
    "sse": "sse",
    "http": "http",
    "streamable-http": "http",
    "streamable_http": "http",
    "streamablehttp": "http",
    "remote": "http",
}


def _str_pairs(obj: Any, what: str, name: str, ctx: _Ctx) -> Pairs:
    out: list[tuple[str, str]] = []
    for k, v in (_mapping(ctx, obj, f"server {name!r}: {what}") or {}).items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            ctx.warn(f"server {name!r}: {what} {str(k)!r} should be a string, got {type(v).__name__}")
            continue
        out.append((str(k), str(v)))
    return tuple(out)


def _str_list(obj: Any, what: str, name: str, ctx: _Ctx) -> tuple[str, ...]:
    if obj is None:
        return ()
    if isinstance(obj, str):  # some hosts accept a single string
        return (obj,)
    if not isinstance(obj, list):
        ctx.warn(f"server {name!r}: {what} should be a list, got {type(obj).__name__}")
        return ()
    out: list[str] = []
    for v in obj:
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            ctx.warn(f"server {name!r}: {what} item should be a string, got {type(v).__name__}")
            continue
        out.append(str(v))
    return tuple(out)


def _opt_str(obj: Any, what: str, name: str, ctx: _Ctx) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    ctx.warn(f"server {name!r}: {what} should be a string, got {type(obj).__name__}")
    return None


def server_entry(ctx: _Ctx, name: str, e: Any, *, url_is_sse: bool = False) -> None:
    """Parse the common ``{command, args, env, url, type, ...}`` entry shape."""
    if not isinstance(e, dict):
        ctx.warn(f"server {name!r}: should be an object, got {type(e).__name__}")
        return
    for k in e:
        if k not in _KNOWN_KEYS:
            ctx.warn(f"server {name!r}: unknown key {str(k)!r}")
    command = e.get("command")
    args = _str_list(e.get("args"), "args", name, ctx)
    env = _str_pairs(e.get("env"), "env", name, ctx)
    if isinstance(command, dict):  # Zed's older {"command": {"path", "args", "env"}}
        sub = command
        command = sub.get("path", sub.get("command"))
        args = args or _str_list(sub.get("args"), "args", name, ctx)
        env = env or _str_pairs(sub.get("env"), "env", name, ctx)
    command = _opt_str(command, "command", name, ctx)
    headers = _str_pairs(e.get("headers", e.get("http_headers")), "headers", name, ctx)
    token = e.get("bearer_token")
    if isinstance(token, str):
        headers += (("Authorization", f"Bearer {token}"),)
    api_key = e.get("apiKey")
    if isinstance(api_key, str):
        headers += (("apiKey", api_key),)
    url: str | None = None
    transport = "stdio"
    for key in ("url", "serverUrl", "httpUrl"):
        u = _opt_str(e.get(key), key, name, ctx)
        if u:
            url = u
            transport = "sse" if key == "url" and url_is_sse else "http"
            break
    ttype = e.get("type", e.get("transport", e.get("transportType")))
    if isinstance(ttype, str):
        key = ttype.lower()
        if key in _TRANSPORTS:
            transport = _TRANSPORTS[key]
        else:
            ctx.warn(f"server {name!r}: unknown transport type {ttype!r}")
    if url and transport == "stdio":
        transport = "http"
    if not command and not url:
        ctx.warn(f"server {name!r}: has neither command nor url")
        return
    disabled = e.get("disabled") is True or e.get("enabled") is False
    own_cwd = _opt_str(e.get("cwd"), "cwd", name, ctx)
    cwd = Path(own_cwd) if own_cwd else ctx.cwd
    ctx.servers.append(
        ServerDef(
            host=ctx.host,
            scope=ctx.scope,
            file=ctx.file,
            name=name,
            command=command if command else None,
            args=args,
            env=env,
            url=url,
            transport=transport,
            cwd=cwd,
            disabled=disabled,
            headers=headers,
        )
    )


def _mapping(ctx: _Ctx, obj: Any, where: str, noun: str = "an object") -> dict[str, Any] | None:
    """``obj`` when it is a mapping; None when absent, or (with a warning) of another type."""
    if obj is None:
        return None
    if not isinstance(obj, dict):
        ctx.warn(f"{where} should be {noun}, got {type(obj).__name__}")
        return None
    return obj


def server_map(ctx: _Ctx, obj: Any, where: str, *, url_is_sse: bool = False) -> None:
    for name, entry in (_mapping(ctx, obj, where) or {}).items():
        server_entry(ctx, str(name), entry, url_is_sse=url_is_sse)


def _dict_at(ctx: _Ctx, data: Any) -> dict[str, Any] | None:
    return _mapping(ctx, data, "top level")


# ---------------------------------------------------------------- per format


def _servers_under(key: str, url_is_sse: bool = False) -> Callable[[str, _Ctx], None]:
    """A parser for a JSON file whose top-level ``key`` maps NAME -> entry."""

    def parse(text: str, ctx: _Ctx) -> None:
        data = _dict_at(ctx, load_json(text, ctx))
        if data is not None:
            server_map(ctx, data.get(key), key, url_is_sse=url_is_sse)

    return parse


#: ``{"mcpServers": {NAME: entry}}``: Claude Desktop/Code, Cursor, Windsurf, Cline, Roo...
parse_mcpservers = _servers_under("mcpServers")
#: Gemini CLI settings.json: the same, but a bare ``url`` is an SSE endpoint
parse_gemini = _servers_under("mcpServers", url_is_sse=True)
#: VS Code mcp.json: ``{"servers": {NAME: entry}}``
parse_vscode_mcp = _servers_under("servers")


def parse_claude_json(text: str, ctx: _Ctx) -> None:
    """~/.claude.json: user servers plus ``projects.<dir>.mcpServers`` (scope
    "local", Claude Code's word: private to that user in that project)."""
    data = _dict_at(ctx, load_json(text, ctx, jsonc=False))
    if data is None:
        return
    server_map(ctx, data.get("mcpServers"), "mcpServers")
    projects = _mapping(ctx, data.get("projects"), "projects")
    if projects is None:
        return
    ctx.projects += [Path(str(p)) for p in projects if str(p).startswith("/")]
    for pdir, pobj in projects.items():
        if not isinstance(pobj, dict) or not pobj.get("mcpServers"):
            continue
        sub = _Ctx(ctx.host, "local", ctx.file, Path(str(pdir)))
        server_map(sub, pobj.get("mcpServers"), f"projects[{pdir!r}].mcpServers")
        ctx.servers += sub.servers
        ctx.warnings += sub.warnings


def parse_vscode_settings(text: str, ctx: _Ctx) -> None:
    data = _dict_at(ctx, load_json(text, ctx))
    if data is None:
        return
    mcp = data.get("mcp")
    if isinstance(mcp, dict):
        server_map(ctx, mcp.get("servers"), "mcp.servers")
    server_map(ctx, data.get("mcp.servers"), "mcp.servers")


def parse_zed(text: str, ctx: _Ctx) -> None:
    data = _dict_at(ctx, load_json(text, ctx))
    if data is None:
        return
    servers = _mapping(ctx, data.get("context_servers"), "context_servers")
    for name, e in (servers or {}).items():
        if isinstance(e, dict) and e.get("source") == "extension" and "command" not in e:
            continue  # provided by a Zed extension: launched by the extension, not the config
        server_entry(ctx, str(name), e)


def parse_codex(text: str, ctx: _Ctx) -> None:
    data = load_toml(text, ctx)
    if data is not None:
        server_map(ctx, data.get("mcp_servers"), "mcp_servers")


def _continue_list(ctx: _Ctx, obj: Any) -> None:
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


def parse_continue_json(text: str, ctx: _Ctx) -> None:
    data = _dict_at(ctx, load_json(text, ctx))
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


def parse_continue_yaml(text: str, ctx: _Ctx) -> None:
    data = _dict_at(ctx, load_yaml(text, ctx))
    if data is not None:
        _continue_list(ctx, data.get("mcpServers"))


def parse_goose(text: str, ctx: _Ctx) -> None:
    data = _dict_at(ctx, load_yaml(text, ctx))
    if data is None:
        return
    exts = _mapping(ctx, data.get("extensions"), "extensions", "a mapping")
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


PARSERS: dict[str, Callable[[str, _Ctx], None]] = {
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
    ctx = _Ctx(host, scope, file, cwd)
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


def iter_pairs(s: ServerDef) -> Iterator[tuple[str, str, str]]:
    """(where, key, value) for every env and header value of a server."""
    for k, v in s.env:
        yield "env", k, v
    for k, v in s.headers:
        yield "header", k, v
