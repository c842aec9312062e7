"""What a parsed MCP host configuration file yields: server definitions.

:class:`ServerDef` is one server as a host would launch it (command, args,
env) or connect to it (url, headers); :class:`Parsed` is what one file gives:
its servers, warnings and the project directories it names. Values of ``env``
and ``headers`` are secrets-in-waiting: they are kept for the static audit but
never shown (``repr=False``; use ``env_keys``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

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
