"""``egresswatch audit``: find risky MCP server definitions before they run.

Static only: reads ServerDefs and file metadata, never launches a server or
runs package code, never queries a registry. Every text in a Finding is built
from redacted values, so no secret reaches a terminal or a JSON file.
Rule codes and severities are documented in docs/audit.md.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from urllib.parse import urlsplit

from egresswatch.audit.lookalike import lookalike
from egresswatch.audit.rules import (
    CONTAINER_RUNNERS,
    PKG_RUNNERS,
    Launch,
    base,
    image_ref,
    parse_launch,
)
from egresswatch.audit.secrets import redact, redact_argv, scan_args, scan_value
from egresswatch.mcp.discovery import ConfigFile, ServerDef

SEVERITIES = ("info", "low", "medium", "high", "critical")
_RANK = {s: i for i, s in enumerate(SEVERITIES)}


@dataclass(frozen=True, slots=True)
class Finding:
    severity: str
    host: str
    file: str
    server: str
    code: str
    finding: str
    fix: str

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def severity_rank(sev: str) -> int:
    return _RANK[sev]


def command_line(s: ServerDef) -> str:
    """The server's command line (or URL) with every secret masked."""
    if s.command is None:
        return redact(s.url or "")
    return " ".join(_quote(a) for a in redact_argv((s.command, *s.args)))


def _quote(a: str) -> str:
    if "…(" in a or re.fullmatch(r"[^\s'\"\\$`|;&(){}]*<[a-z-]+>[^\s'\"\\$`|;&(){}]*", a):
        return a  # a mask or a <placeholder>: shown as is
    return a if a and not re.search(r"[\s'\"\\$`|;&<>(){}]", a) else "'" + a.replace("'", "'\\''") + "'"


# ---------------------------------------------------------------- rules

_DOWNLOAD = r"(?:curl|wget|fetch|iwr|irm|invoke-webrequest|invoke-restmethod|http\s+get)\b"
_INTERP = (
    r"(?:sudo\s+)?(?:\S+/)?(?:ba|z|da|k|fi|a)?sh|python[0-9.]*|node|perl|ruby|iex|invoke-expression|source"
    r"|powershell|pwsh|cmd"
)
_PIPE_SHELL = (
    re.compile(rf"(?i)\b{_DOWNLOAD}[^|;&]*\|\s*(?:{_INTERP})\b"),
    re.compile(rf"(?i)(?:\$\(|`|<\()\s*{_DOWNLOAD}"),
    re.compile(
        r"(?i)\b(?:iex|invoke-expression)\b.{0,20}\(\s*(?:iwr|irm|invoke-webrequest|invoke-restmethod|new-object)"
    ),
)
_LOCAL_HOSTS = re.compile(
    r"^(?:localhost|.*\.localhost|127(?:\.\d{1,3}){3}|::1|0\.0\.0\.0|host\.docker\.internal)$"
)
_HOME_MOUNT = re.compile(
    r"^(?:~|\$HOME|\$\{HOME\}|\$\{env:HOME\}|\$\{userHome\}|/root|/home/[^/]+|/Users/[^/]+|%USERPROFILE%|C:\\Users\\[^\\]+)/?$"
)

_SECRET_FIX = {
    "vscode": 'declare an "inputs" entry with "password": true and use "${input:ID}"',
    "cursor": "reference the variable as ${env:NAME} and export it in your environment",
    "claude-code": "reference it as ${NAME} (Claude Code expands environment variables) and export it",
    "gemini-cli": "reference it as $NAME (Gemini CLI expands environment variables) and export it",
    "codex": 'list the name in env_vars = ["NAME"] (or bearer_token_env_var) so Codex forwards it from your environment',
    "goose": "store it with goose configure (keyring) and list its name in env_keys",
}


class _Rules:
    def __init__(self, s: ServerDef) -> None:
        self.s = s
        self.out: list[Finding] = []

    def add(self, sev: str, code: str, finding: str, fix: str) -> None:
        s = self.s
        self.out.append(Finding(sev, s.host, str(s.file), s.name, code, finding, fix))

    def secrets(self) -> None:
        s = self.s
        how = _SECRET_FIX.get(
            s.host, "keep it in a secret store and start the server through a wrapper that reads it"
        )
        fix = f"rotate the credential; then {how}"
        hfix = fix.replace("NAME", "TOKEN")
        if s.host == "codex":
            hfix = "rotate the credential; then use bearer_token_env_var or env_http_headers to read it from your environment"
        for where, code, pairs in (
            ("env", "secret_in_env", s.env),
            ("header", "secret_in_headers", s.headers),
        ):
            for k, v in pairs:
                for hit in scan_value(v, k):
                    self.add(
                        "high",
                        code,
                        f"{where} {k} holds {_a(hit.kind)} in plain text: {hit.masked}",
                        fix.replace("NAME", k) if where == "env" else hfix,
                    )
        for label, hit in scan_args(s.args):
            self.add(
                "high",
                "secret_in_args",
                f"{label} holds {_a(hit.kind)}: {hit.masked} (visible to every local user in the process list)",
                "rotate the credential; pass it through an environment variable the server reads, not on the command line",
            )
        if s.url:
            for hit in scan_value(s.url):
                self.add(
                    "high",
                    "secret_in_url",
                    f"URL holds {_a(hit.kind)}: {hit.masked}",
                    "rotate the credential; send it in an Authorization header taken from a secret store",
                )

    def transport(self) -> None:
        s = self.s
        urls = [s.url] if s.url else []
        urls += [m.group(0) for a in s.args for m in re.finditer(r"(?i)\bhttp://[^\s'\"]+", a)]
        for u in urls:
            try:
                parts = urlsplit(u)
                hostname = parts.hostname or ""
            except ValueError:
                continue
            if parts.scheme.lower() == "http" and not _LOCAL_HOSTS.match(hostname):
                self.add(
                    "high",
                    "plaintext_http",
                    f"connects to {redact(u)} over plain http: anyone on the path can read and change tool calls",
                    "use https:// (or a local tunnel to 127.0.0.1)",
                )

    def launch(self, ln: Launch) -> None:
        s = self.s
        text = ln.shell_text if ln.shell_text is not None else " ".join((s.command or "", *s.args))
        if any(rx.search(text) for rx in _PIPE_SHELL):
            self.add(
                "critical",
                "pipe_to_shell",
                "downloads a script and runs it in a shell on every start",
                "download once, review, pin by checksum, and start the reviewed local file",
            )
        if ln.runner in PKG_RUNNERS and ln.spec is not None:
            self._package(ln)
        elif ln.runner in CONTAINER_RUNNERS and ln.spec is not None:
            self._container(ln)
        if ln.runner not in CONTAINER_RUNNERS and ln.sandbox is None and s.command:
            if ln.runner in PKG_RUNNERS:
                self.add(
                    "low",
                    "not_sandboxed",
                    f"{ln.runner} runs downloaded code with your full user rights",
                    "run it in a container (docker run --rm -i with only the mounts it needs) or a sandbox (bwrap, firejail)",
                )
            else:
                self.add(
                    "info",
                    "not_sandboxed",
                    f"{base(ln.argv[0]) if ln.argv else s.command} runs with your full user rights",
                    "run it in a container or a sandbox (bwrap, firejail) if it does not need your whole home",
                )

    def _package(self, ln: Launch) -> None:
        assert ln.spec is not None and ln.name is not None
        eco = ln.ecosystem or ""
        if eco in ("npm", "pypi") and (hit := lookalike(eco, ln.name)):
            sev, known, why = hit
            self.add(
                sev,
                "lookalike_package",
                f"{eco} package {_show_name(ln.name)} looks like well-known {known} ({why})",
                f"check the publisher; if you meant {known}, use exactly that name",
            )
        if ln.pinned or eco == "local":
            return
        if eco == "npm":
            pinned = f"{ln.name}@<version>"
        elif eco == "pypi":
            pinned = f"{ln.name}==<version>"
        else:
            sep = "@" if ln.runner in ("uvx", "pipx run") else "#"
            pinned = f"{ln.name}{sep}<commit-sha>"
        argv = list(ln.argv)
        if 0 <= ln.spec_index < len(argv):
            argv[ln.spec_index] = pinned
        else:
            argv = [a if a != ln.spec else pinned for a in argv]
            argv = [
                re.sub(r"=(.*)$", lambda m: "=" + pinned if m.group(1) == ln.spec else m.group(0), a)
                for a in argv
            ]
        why = "no version" if ln.version is None else f"version {ln.version!r} is not exact"
        self.add(
            "medium",
            "unpinned_package",
            f"{ln.runner} fetches {redact(ln.spec)} ({why}): every start can run a new release",
            "pin an exact, reviewed version (<version> from the lockfile or registry): "
            + " ".join(_quote(a) for a in redact_argv(tuple(argv))),
        )

    def _container(self, ln: Launch) -> None:
        assert ln.spec is not None and ln.name is not None
        name, tag, digest = image_ref(ln.spec)
        if digest is None and (tag is None or tag == "latest"):
            self.add(
                "medium",
                "unpinned_image",
                f"image {redact(ln.spec)} has {'no tag' if tag is None else 'the :latest tag'} and no digest",
                f"pin by digest: {name}@sha256:<digest> (docker pull {name}:<tag>, then docker inspect --format '{{{{index .RepoDigests 0}}}}')",
            )
        if name.startswith(("mcp/", "ghcr.io/", "docker.io/mcp/")) and (hit := lookalike("docker", name)):
            sev, known, why = hit
            self.add(
                sev,
                "lookalike_package",
                f"image {name} looks like well-known {known} ({why})",
                f"if you meant {known}, use exactly that image",
            )
        opts = list(ln.opts)
        joined = " ".join(opts)
        if (
            "--privileged" in opts
            or re.search(r"--cap-add[= ](?:ALL|SYS_ADMIN)\b", joined, re.I)
            or re.search(r"--pid[= ]host\b", joined)
        ):
            self.add(
                "high",
                "docker_privileged",
                "container runs privileged (or with SYS_ADMIN / host pid namespace): it can take over the host",
                "drop --privileged / --cap-add ALL|SYS_ADMIN / --pid host",
            )
        if re.search(r"--(?:network|net)[= ]host\b", joined):
            self.add(
                "medium",
                "docker_host_network",
                "container shares the host network: it reaches every local service and bypasses container egress rules",
                "remove --network host; publish only needed ports",
            )
        for src in _mount_sources(opts):
            if (
                src.rstrip("/") == ""
                or src in ("/", "C:\\", "C:/")
                or _HOME_MOUNT.match(src)
                or src.endswith("docker.sock")
            ):
                what = (
                    "the host root"
                    if src.rstrip("/\\") in ("", "C:")
                    else "the Docker socket"
                    if src.endswith("docker.sock")
                    else "a whole home directory"
                )
                self.add(
                    "high",
                    "docker_host_mount",
                    f"container mounts {what} ({src})",
                    "mount only the directory the server needs, read-only where possible (:ro)",
                )


def _a(kind: str) -> str:
    return ("an " if kind[:1].lower() in "aeiou" else "a ") + kind


def _show_name(name: str) -> str:
    """A package name with its non-ASCII characters spelled out as code points."""
    odd = sorted({f"U+{ord(c):04X}" for c in name if ord(c) > 0x7E})
    return f"{name} [non-ASCII: {' '.join(odd)}]" if odd else name


def _mount_sources(opts: list[str]) -> list[str]:
    """Host paths bind-mounted by -v/--volume/--mount options."""
    srcs: list[str] = []
    for i, o in enumerate(opts):
        kind, val = o, None
        if o in ("-v", "--volume", "--mount") and i + 1 < len(opts):
            val = opts[i + 1]
        elif o.startswith(("--volume=", "--mount=")):
            kind, val = o.split("=", 1)
        elif o.startswith("-v") and len(o) > 2 and not o.startswith("--"):
            kind, val = "-v", o[2:]
        if val is None:
            continue
        if kind == "--mount":
            m = re.search(r"(?:^|,)(?:source|src)=([^,]+)", val)
            if m and "type=volume" not in val:
                srcs.append(m.group(1))
        elif re.match(r"^[A-Za-z]:[\\/]", val):
            srcs.append(val[:2] + val[2:].split(":", 1)[0])
        elif ":" in val:
            srcs.append(val.split(":", 1)[0])
    return srcs


def audit_server(s: ServerDef) -> list[Finding]:
    r = _Rules(s)
    r.secrets()
    r.transport()
    if s.command:
        r.launch(parse_launch(s.command, s.args))
    return r.out


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


def audit(
    servers: Iterable[ServerDef], files: Iterable[ConfigFile | Path] = (), warnings: Iterable[str] = ()
) -> list[Finding]:
    """Every finding, most severe first, then by file, server and code.
    Discovery ``warnings`` become findings too (see warning_findings)."""
    findings: list[Finding] = warning_findings(warnings)
    for s in servers:
        findings += audit_server(s)
    seen: set[str] = set()
    for f in files:
        p = str(f.path if isinstance(f, ConfigFile) else f)
        if p not in seen:
            seen.add(p)
            findings += audit_file(f)
    findings.sort(key=lambda f: (-_RANK[f.severity], f.file, f.server, f.code, f.finding))
    return findings


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


def reaches(findings: Iterable[Finding], threshold: str) -> bool:
    return any(_RANK[f.severity] >= _RANK[threshold] for f in findings)
