"""Find the MCP servers that hosts (Claude, Cursor, VS Code, Zed, ...) are
configured to launch, in every user's home and in project directories.

``discover()`` reads files only (it never runs anything); parsing is done by
``egresswatch.mcp.formats``. Every problem (unreadable file, broken JSON/TOML/YAML,
wrong type, unknown key) is a warning string, never an exception. Output order
is deterministic: homes sorted, then hosts in LOCATIONS order, then servers in
file order, then project directories sorted.
"""

from __future__ import annotations

import os
import pwd
import stat
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from egresswatch.host import user_name
from egresswatch.mcp.formats import parse, sniff
from egresswatch.mcp.serverdef import ServerDef

__all__ = ["ConfigFile", "Discovery", "ServerDef", "discover", "all_homes", "MAX_FILE_BYTES"]

MAX_FILE_BYTES = 32 * 1024 * 1024  # ~/.claude.json grows large with history

# Per-platform application-data roots, relative to a home directory.
_APPDATA = (".config", "Library/Application Support", "AppData/Roaming")
_VSCODE_APPS = ("Code", "Code - Insiders", "VSCodium")
# VS Code forks whose globalStorage can hold Cline / Roo Code settings too.
_EXT_APPS = (*_VSCODE_APPS, "Cursor", "Windsurf")
_CLINE = "saoudrizwan.claude-dev/settings/cline_mcp_settings.json"
_ROO = "rooveterinaryinc.roo-cline/settings/mcp_settings.json"


@dataclass(frozen=True, slots=True)
class ConfigFile:
    """A host configuration file that exists (read or not)."""

    host: str
    scope: str
    path: Path


@dataclass(frozen=True, slots=True)
class Discovery:
    servers: tuple[ServerDef, ...] = ()
    warnings: tuple[str, ...] = ()
    files: tuple[ConfigFile, ...] = ()


def _user_locations() -> list[tuple[str, str, str]]:
    """(host, path relative to home, format) for user-scope files."""
    locs: list[tuple[str, str, str]] = []
    for root in _APPDATA:
        locs.append(("claude-desktop", f"{root}/Claude/claude_desktop_config.json", "mcpservers"))
    locs += [
        ("claude-code", ".claude.json", "claude_json"),
        ("claude-code", ".claude/settings.json", "mcpservers"),
        ("cursor", ".cursor/mcp.json", "mcpservers"),
    ]
    for root in _APPDATA:
        for app in _VSCODE_APPS:
            locs.append(("vscode", f"{root}/{app}/User/mcp.json", "vscode_mcp"))
            locs.append(("vscode", f"{root}/{app}/User/settings.json", "vscode_settings"))
    locs.append(("windsurf", ".codeium/windsurf/mcp_config.json", "mcpservers"))
    for host, rel in (("cline", _CLINE), ("roo-code", _ROO)):
        for root in _APPDATA:
            for app in _EXT_APPS:
                locs.append((host, f"{root}/{app}/User/globalStorage/{rel}", "mcpservers"))
    locs += [
        ("zed", ".config/zed/settings.json", "zed"),
        ("zed", "AppData/Roaming/Zed/settings.json", "zed"),
        ("gemini-cli", ".gemini/settings.json", "gemini"),
        ("codex", ".codex/config.toml", "codex"),
        ("continue", ".continue/config.json", "continue_json"),
        ("continue", ".continue/config.yaml", "continue_yaml"),
        ("goose", ".config/goose/config.yaml", "goose"),
        ("goose", "AppData/Roaming/Block/goose/config/config.yaml", "goose"),
        ("amazon-q", ".aws/amazonq/mcp.json", "mcpservers"),
        ("lm-studio", ".lmstudio/mcp.json", "mcpservers"),
    ]
    return locs


USER_LOCATIONS = tuple(_user_locations())
# (host, scope, path relative to a project directory, format)
PROJECT_LOCATIONS = (
    ("claude-code", "project", ".mcp.json", "mcpservers"),
    ("cursor", "project", ".cursor/mcp.json", "mcpservers"),
    ("vscode", "workspace", ".vscode/mcp.json", "vscode_mcp"),
    ("vscode", "workspace", ".vscode/settings.json", "vscode_settings"),
    ("roo-code", "project", ".roo/mcp.json", "mcpservers"),
    ("zed", "project", ".zed/settings.json", "zed"),
    ("gemini-cli", "project", ".gemini/settings.json", "gemini"),
    ("codex", "project", ".codex/config.toml", "codex"),
    ("amazon-q", "project", ".amazonq/mcp.json", "mcpservers"),
)
# Machine-wide files, read when every home is scanned (homes=None); scope "system".
SYSTEM_LOCATIONS = (
    ("claude-code", Path("/etc/claude-code/managed-mcp.json"), "mcpservers"),
    ("claude-code", Path("/Library/Application Support/ClaudeCode/managed-mcp.json"), "mcpservers"),
)
_DIR_LOCATIONS = (  # directories of block files: (host, relative dir)
    ("continue", ".continue/mcpServers"),
)


def all_homes() -> list[Path]:
    """Every user's existing home directory when root, else the current user's."""
    if os.geteuid() != 0:
        return [Path.home()]
    homes = {Path("/root")}
    for pw in pwd.getpwall():
        if pw.pw_dir and pw.pw_dir != "/":
            homes.add(Path(pw.pw_dir))
    return sorted(h for h in homes if h.is_dir())


def account(uid: int | None) -> str:
    """The user name of ``uid`` exactly as the process readers name a process's
    account (egresswatch.host.user_name, one memo for both sides); "?" (no account)
    when unknown."""
    return "?" if uid is None else user_name(uid)


def home_account(home: Path) -> str:
    """The account a home directory belongs to: the owner of the directory
    (a user's configs speak for that user's processes only)."""
    try:
        return account(os.stat(home).st_uid)
    except OSError:
        return "?"


def read_text_owned(path: Path) -> tuple[str | None, str | None, int | None]:
    """(text, None, uid) or (None, warning, uid); uid owns the file read (None when
    not opened). Refuses non-regular files (FIFOs, devices) and files over
    MAX_FILE_BYTES; opens non-blocking so a FIFO cannot hang us."""
    uid = None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        return None, None, None
    except OSError as exc:
        return None, f"{path}: cannot read: {exc.strerror or exc}", None
    try:
        st = os.fstat(fd)
        uid = st.st_uid
        if not stat.S_ISREG(st.st_mode):
            return None, f"{path}: not a regular file, skipped", uid
        if st.st_size > MAX_FILE_BYTES:
            return None, f"{path}: larger than {MAX_FILE_BYTES} bytes, skipped", uid
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        return None, f"{path}: cannot read: {exc.strerror or exc}", uid
    finally:
        if fd >= 0:
            os.close(fd)
    text = data.decode("utf-8", errors="replace")
    return text.removeprefix("\ufeff"), None, uid


class _Scan:
    def __init__(self) -> None:
        self.servers: list[ServerDef] = []
        self.warnings: list[str] = []
        self.files: list[ConfigFile] = []
        self.seen: set[Path] = set()
        self.projects: set[Path] = set()

    def file(
        self,
        path: Path,
        host: str,
        scope: str,
        fmt: str | None,
        cwd: Path | None = None,
        owner: str | None = "",
    ) -> None:
        """Read one config file. ``owner``: the account the file speaks for
        (None: everyone, for system-wide files; "": the file's owner, everyone
        when that is root)."""
        try:
            key = path.resolve()
            exists = path.is_file() or path.exists()
        except (OSError, RuntimeError) as exc:
            self.warnings.append(f"{path}: cannot resolve: {exc}")
            return
        if not exists or key in self.seen:
            return
        self.seen.add(key)
        text, warning, uid = read_text_owned(path)
        if warning:
            self.warnings.append(warning)
        if text is None:
            if warning:
                self.files.append(ConfigFile(host, scope, path))
            return
        if fmt is None:
            fmt, sniffed = sniff(path, text)
            host = sniffed if host == "file" else host
        self.files.append(ConfigFile(host, scope, path))
        res = parse(fmt, text, host, scope, path, cwd)
        if owner == "":  # a root-owned project or extra file: only root could write it
            owner = None if uid == 0 else account(uid)
        self.servers += [replace(s, owner=owner) for s in res.servers]
        self.warnings += res.warnings
        self.projects.update(res.projects)

    def block_dir(self, d: Path, host: str, scope: str, cwd: Path | None, owner: str | None = "") -> None:
        try:
            entries = sorted(p for p in d.iterdir() if p.suffix.lower() in (".yaml", ".yml", ".json"))
        except FileNotFoundError:
            return
        except OSError as exc:
            self.warnings.append(f"{d}: cannot list: {exc.strerror or exc}")
            return
        for p in entries:
            fmt = "continue_json" if p.suffix.lower() == ".json" else "continue_yaml"
            self.file(p, host, scope, fmt, cwd, owner)


def discover(
    homes: Iterable[Path] | None = None,
    extra_files: Iterable[Path] = (),
    project_dirs: Iterable[Path] = (),
    system: bool | None = None,
) -> Discovery:
    """Read every known MCP host config under ``homes`` (None: all users when
    root, else the current user), the machine-wide managed files (``system``;
    by default when ``homes`` is None), the ``extra_files`` (format sniffed),
    and the project-scope files under ``project_dirs`` and under the projects
    listed in each home's ~/.claude.json. Each definition names the account it
    speaks for (``ServerDef.owner``)."""
    scan = _Scan()
    home_list = all_homes() if homes is None else sorted({Path(h) for h in homes})
    if homes is None if system is None else system:
        for host, path, fmt in SYSTEM_LOCATIONS:
            scan.file(path, host, "system", fmt, owner=None)
    for home in home_list:
        owner = home_account(home)
        for host, rel, fmt in USER_LOCATIONS:
            scan.file(home / rel, host, "user", fmt, owner=owner)
        for host, rel in _DIR_LOCATIONS:
            scan.block_dir(home / rel, host, "user", None, owner)
    for f in extra_files:
        if not os.path.lexists(f):
            scan.warnings.append(f"{f}: not found")
        scan.file(Path(f), "file", "user", None)
    for pdir in sorted(scan.projects | {Path(p) for p in project_dirs}):
        for host, scope, rel, fmt in PROJECT_LOCATIONS:
            scan.file(pdir / rel, host, scope, fmt, pdir)
        for host, rel in _DIR_LOCATIONS:
            scan.block_dir(pdir / rel, host, "project", pdir)
    return Discovery(tuple(scan.servers), tuple(scan.warnings), tuple(scan.files))
