"""One server entry of a host config -> a ServerDef, with a warning per problem.

:class:`ParseContext` collects the servers and warnings of one file;
:func:`server_entry` reads the entry shape every host shares
(``{command, args, env, url, type, headers, cwd, disabled ...}``, with each
host's spellings), :func:`server_map` a ``{NAME: entry}`` mapping. Every
problem is a one-line warning ``"FILE: ..."``; nothing raises.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from egresswatch.mcp.serverdef import Pairs, Parsed, ServerDef


class ParseContext:
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


def _str_pairs(obj: Any, what: str, name: str, ctx: ParseContext) -> Pairs:
    out: list[tuple[str, str]] = []
    for k, v in (mapping(ctx, obj, f"server {name!r}: {what}") or {}).items():
        if isinstance(v, bool) or not isinstance(v, str | int | float):
            ctx.warn(f"server {name!r}: {what} {str(k)!r} should be a string, got {type(v).__name__}")
            continue
        out.append((str(k), str(v)))
    return tuple(out)


def _str_list(obj: Any, what: str, name: str, ctx: ParseContext) -> tuple[str, ...]:
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


def _opt_str(obj: Any, what: str, name: str, ctx: ParseContext) -> str | None:
    if obj is None or isinstance(obj, str):
        return obj
    ctx.warn(f"server {name!r}: {what} should be a string, got {type(obj).__name__}")
    return None


def server_entry(ctx: ParseContext, name: str, e: Any, *, url_is_sse: bool = False) -> None:
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


def mapping(ctx: ParseContext, obj: Any, where: str, noun: str = "an object") -> dict[str, Any] | None:
    """``obj`` when it is a mapping; None when absent, or (with a warning) of another type."""
    if obj is None:
        return None
    if not isinstance(obj, dict):
        ctx.warn(f"{where} should be {noun}, got {type(obj).__name__}")
        return None
    return obj


def server_map(ctx: ParseContext, obj: Any, where: str, *, url_is_sse: bool = False) -> None:
    for name, entry in (mapping(ctx, obj, where) or {}).items():
        server_entry(ctx, str(name), entry, url_is_sse=url_is_sse)


def dict_at(ctx: ParseContext, data: Any) -> dict[str, Any] | None:
    return mapping(ctx, data, "top level")
