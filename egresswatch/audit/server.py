"""The checks of one MCP server definition (``audit_server``): secrets in its
env, headers, arguments or URL; plain-http transport; piping a download into a
shell; unpinned or lookalike packages; running unsandboxed. Container launches
are checked by :mod:`egresswatch.audit.container`.

Static only: reads the ServerDef, never launches a server or runs package
code, never queries a registry.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from egresswatch.audit.container import container_findings
from egresswatch.audit.findings import Finding, quote_arg
from egresswatch.audit.lookalike import lookalike
from egresswatch.audit.rules import CONTAINER_RUNNERS, PKG_RUNNERS, Launch, base, parse_launch
from egresswatch.audit.secrets import redact, redact_argv, scan_args, scan_value
from egresswatch.mcp.discovery import ServerDef

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
            self.out += container_findings(s, ln)
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
            + " ".join(quote_arg(a) for a in redact_argv(tuple(argv))),
        )


def _a(kind: str) -> str:
    return ("an " if kind[:1].lower() in "aeiou" else "a ") + kind


def _show_name(name: str) -> str:
    """A package name with its non-ASCII characters spelled out as code points."""
    odd = sorted({f"U+{ord(c):04X}" for c in name if ord(c) > 0x7E})
    return f"{name} [non-ASCII: {' '.join(odd)}]" if odd else name


def audit_server(s: ServerDef) -> list[Finding]:
    r = _Rules(s)
    r.secrets()
    r.transport()
    if s.command:
        r.launch(parse_launch(s.command, s.args))
    return r.out
