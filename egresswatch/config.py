"""TOML configuration -> frozen Config dataclasses. No I/O at import time.

``load_config(None)`` reads /etc/egresswatch/config.toml when it exists and
otherwise returns the built-in defaults; every key is optional. Unknown keys
are a ConfigError naming the key, so typos never pass silently.
See ``config.example.toml`` for every key with comments.
"""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from egresswatch.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/egresswatch/config.toml")
DEFAULT_DB_PATH = Path("/var/lib/egresswatch/events.db")

DEFAULT_INSTALL_ALLOW = (
    "registry.npmjs.org",
    "registry.yarnpkg.com",
    "registry.npmmirror.com",
    "pypi.org",
    "files.pythonhosted.org",
    "github.com",
    "codeload.github.com",
    "objects.githubusercontent.com",
    "nodejs.org",
    "astral.sh",
)
DEFAULT_LAUNCHER_PATTERNS = (
    r"(^|/)(npx|bunx|pnpx)(\s+-y|\s+--yes)?\s+\S*mcp",
    r"(^|/)(uvx|pipx\s+run)\s+\S*mcp",
    r"(^|/)docker\s+run\b.*\bmcp/",
    r"(^|/)(node|python3?|deno|bun)\s+\S*mcp[-_]?server",
    r"@modelcontextprotocol/",
)


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    database: Path = DEFAULT_DB_PATH
    db_group: str | None = None  # group allowed to read the database (mode 0640)
    interfaces: tuple[str, ...] = ()  # empty: every interface, new ones included
    record_procs: Path | None = None
    jsonl_path: Path | None = None  # events as JSON lines for Vector / Fluent Bit
    proc_poll_interval: float = 0.5  # seconds, psutil fallback when no proc connector
    # kernel capture ring (MiB): holds bursts, a DNS flood, while the pipeline catches up
    capture_buffer_mb: float = 64.0
    # docker / podman API sockets asked which container a process runs in, so
    # that a server launched as `docker run IMAGE` keeps its container's traffic
    container_sockets: tuple[str, ...] = ("/var/run/docker.sock", "/run/podman/podman.sock")
    # eBPF mode: seconds between flow_summary events of a watched flow that keeps sending
    flow_summary_seconds: float = 10.0


@dataclass(frozen=True, slots=True)
class RetentionConfig:
    max_age_days: float = 30.0
    max_size_mb: float = 512.0


@dataclass(frozen=True, slots=True)
class DiscoveryConfig:
    extra_homes: tuple[Path, ...] = ()
    extra_files: tuple[Path, ...] = ()
    launcher_patterns: tuple[str, ...] = DEFAULT_LAUNCHER_PATTERNS


@dataclass(frozen=True, slots=True)
class ExfilConfig:
    max_label_len: int = 40
    entropy_threshold: float = 3.6  # bits per character, labels of 16+ characters
    unique_subdomains: int = 40  # distinct names under one parent domain per window
    window_seconds: float = 60.0
    txt_flood: int = 20  # TXT/NULL/ANY queries per parent domain per window
    suspicious_names: int = 3  # distinct random-looking names per parent domain per window
    # low and slow: over this longer window, this many random-looking names, or
    # more than this many distinct names, under one parent domain flag too
    slow_window_seconds: float = 3600.0
    slow_suspicious_names: int = 10
    slow_unique_subdomains: int = 200


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    learning: bool = True  # first_seen detector
    # hours after a server is first seen during which new destinations are learned
    # quietly (first_seen, low); later a new destination is new_destination (medium)
    learning_hours: float = 24.0
    global_allow: tuple[str, ...] = ("localhost", "127.0.0.0/8", "::1")
    install_allow: tuple[str, ...] = DEFAULT_INSTALL_ALLOW
    doh_allow: tuple[str, ...] = ()  # DoH/DoT resolvers servers may use
    exfil: ExfilConfig = field(default_factory=ExfilConfig)
    # upload detector: more than this many bytes sent by one server to one
    # destination within the window is flagged `upload` (0: off); eBPF mode only
    upload_max_bytes: int = 10_000_000
    upload_window_seconds: float = 3600.0


@dataclass(frozen=True, slots=True)
class ServerPolicy:
    """Per-server allowlist: exact names, ``*.suffix``, IPs, CIDRs, each with an
    optional ``:port`` (``[v6]:port`` for IPv6)."""

    allow: tuple[str, ...] = ()
    learning: bool | None = None  # overrides policy.learning


@dataclass(frozen=True, slots=True)
class AlertsConfig:
    urls: tuple[str, ...] = ()  # any apprise URL
    window_seconds: float = 3600.0  # one alert per (server, reason, domain or IP, shape) per window
    min_severity: str = "medium"
    budget_per_minute: float = 5.0  # per-server token bucket for alerts of new keys
    budget_burst: int = 5
    digest_seconds: float = 60.0  # a server's digest goes out this long after its first held event
    desktop: bool = True  # hand flagged events to user-session notifiers
    retry_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class Config:
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    policy: PolicyConfig = field(default_factory=PolicyConfig)
    servers: dict[str, ServerPolicy] = field(default_factory=dict)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    source: Path | None = None  # the file this came from, None for defaults


def _convert(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a table")
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key")
        default = getattr(cls(), key)
        try:
            kwargs[key] = _coerce(default, value, f"{where}.{key}")
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{where}.{key}: {exc}") from None
    return cls(**kwargs)


def _coerce(default: Any, value: Any, where: str) -> Any:
    if isinstance(default, ExfilConfig):
        return _convert(ExfilConfig, value, where)
    if isinstance(default, bool) or where.endswith(".learning"):
        if not isinstance(value, bool):
            raise TypeError("expected true or false")
        return value
    if isinstance(default, tuple):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise TypeError("expected a list of strings")
        if default and isinstance(default[0], Path) or where.endswith(("extra_homes", "extra_files")):
            return tuple(Path(v) for v in value)
        return tuple(value)
    if isinstance(default, float) or isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TypeError("expected a number")
        if value < 0:
            raise ValueError("must not be negative")
        return type(default)(value)
    if isinstance(default, Path) or where.endswith(("record_procs", "jsonl_path")):
        if not isinstance(value, str):
            raise TypeError("expected a path string")
        return Path(value) if value else None
    if default is None or isinstance(default, str):
        if not isinstance(value, str):
            raise TypeError("expected a string")
        if default is None and value == "":  # db_group = "": none (the default)
            return None
        return value
    raise TypeError("unsupported value")


def parse_config(data: dict[str, Any], source: Path | None = None) -> Config:
    sections = {
        "daemon": DaemonConfig,
        "retention": RetentionConfig,
        "discovery": DiscoveryConfig,
        "policy": PolicyConfig,
        "alerts": AlertsConfig,
    }
    kwargs: dict[str, Any] = {"source": source}
    for key, value in data.items():
        if key in sections:
            kwargs[key] = _convert(sections[key], value, key)
        elif key == "servers":
            if not isinstance(value, dict):
                raise ConfigError("servers: expected a table of [servers.NAME] tables")
            kwargs["servers"] = {
                name: _convert(ServerPolicy, body, f"servers.{name}") for name, body in value.items()
            }
        else:
            raise ConfigError(f"{key}: unknown section")
    cfg = Config(**kwargs)
    for i, pattern in enumerate(cfg.discovery.launcher_patterns):
        try:
            re.compile(pattern)
        except re.error as exc:
            # the key replaces the built-in list: one typo would disable detection
            raise ConfigError(
                f"discovery.launcher_patterns[{i}]: invalid regular expression: {exc}"
            ) from None
    if cfg.alerts.min_severity not in ("info", "low", "medium", "high"):
        raise ConfigError("alerts.min_severity: must be info, low, medium or high")
    return cfg


def load_config(path: Path | None = None) -> Config:
    """Load ``path``; with None, the default file if present, else defaults."""
    if path is None:
        if not DEFAULT_CONFIG_PATH.exists():
            return Config()
        path = DEFAULT_CONFIG_PATH
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None
    try:
        return parse_config(data, source=path)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
