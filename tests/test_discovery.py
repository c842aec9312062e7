"""Discovery of MCP server definitions from the fixture homes (every supported
host, Linux/macOS/Windows layouts, user and project scope) and from broken files."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import yaml
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egresswatch.cli.main import cli
from egresswatch.mcp.discovery import Discovery, ServerDef, all_homes, discover
from egresswatch.mcp.formats import PARSERS, parse
from egresswatch.mcp.syntax import strip_jsonc
from tests.helpers.netlab import missing

FIXTURES = Path(__file__).parent / "fixtures" / "homes"
ALICE = FIXTURES / "linux" / "alice"
BOB = FIXTURES / "macos" / "bob"
CAROL = FIXTURES / "windows" / "carol"
DAVE = FIXTURES / "broken" / "dave"
WEBAPP = FIXTURES / "projects" / "webapp"


def by_name(d: Discovery) -> dict[str, ServerDef]:
    names = [s.name for s in d.servers]
    assert len(names) == len(set(names)), names
    return {s.name: s for s in d.servers}


def test_every_host_is_found_in_linux_home() -> None:
    d = discover([ALICE])
    assert d.warnings == ()
    hosts = {s.host for s in d.servers}
    assert hosts == {
        "claude-desktop", "claude-code", "cursor", "vscode", "windsurf", "cline", "roo-code",
        "zed", "gemini-cli", "codex", "continue", "goose", "amazon-q",
    }  # fmt: skip
    s = by_name(d)
    gh = s["github"]
    assert (gh.host, gh.scope, gh.command, gh.args) == (
        "claude-desktop", "user", "npx", ("-y", "@modelcontextprotocol/server-github")
    )  # fmt: skip
    assert gh.file == ALICE / ".config/Claude/claude_desktop_config.json"
    assert gh.env_keys == ("GITHUB_PERSONAL_ACCESS_TOKEN",)
    assert gh.transport == "stdio" and gh.url is None and not gh.disabled


def test_host_specific_shapes() -> None:
    s = by_name(discover([ALICE]))
    # ~/.claude.json: user servers and projects.<dir>.mcpServers ("local", Claude Code's word) with their cwd
    assert s["postgres-typo"].scope == "user"
    assert (s["sentry"].scope, s["sentry"].cwd, s["sentry"].transport) == (
        "local",
        Path("/srv/proj-a"),
        "http",
    )
    assert (s["insecure-remote"].url, s["insecure-remote"].transport) == ("http://mcp.example.com/sse", "sse")
    # VS Code mcp.json (JSONC with comments + trailing comma) and settings.json "mcp.servers"
    assert s["playwright"].host == "vscode" and s["gh-input"].env_keys == ("GITHUB_PERSONAL_ACCESS_TOKEN",)
    assert s["openai-tool"].file.name == "settings.json"
    # Windsurf serverUrl, Gemini httpUrl (http) vs url (sse), headers kept by key only
    assert (s["remote-windsurf"].url, s["remote-windsurf"].transport) == (
        "https://mcp.linear.app/sse",
        "http",
    )
    assert s["gemini-remote"].transport == "http"
    assert s["gemini-headers"].transport == "sse" and s["gemini-headers"].header_keys == ("Authorization",)
    # Cline disabled flag, Roo settings
    assert s["aws"].disabled and s["aws"].host == "cline"
    assert s["pipx-srv"].host == "roo-code"
    # Zed: old {"command": {path,args,env}}, new flat form; extension-provided entries skipped
    assert (s["zed-old"].command, s["zed-old"].args) == ("uvx", ("mcp-server-time@latest",))
    assert s["zed-new"].command == "docker" and "zed-ext" not in s
    # Codex TOML
    assert s["anthropic-bridge"].env_keys == ("ANTHROPIC_API_KEY",) and s["pnpm-srv"].args[0] == "dlx"
    # Continue: config.json experimental list, config.yaml list (hub "uses" skipped), block files
    assert s["#0"].host == "continue" and s["sqlite-yaml"].args[0] == "mcp-server-sqlite"
    assert s["stripe"].file.name == "stripe.yaml"
    # Goose: builtin skipped, stdio cmd/args/envs, remote uri, enabled: false
    assert "developer" not in s
    assert (s["goose-fetch"].command, s["goose-fetch"].args) == ("uvx", ("mcp-server-fetch",))
    assert s["goose-remote"].disabled and s["goose-remote"].transport == "http"
    assert s["goose-slackhook"].env_keys == ("WEBHOOK",)


def test_macos_and_windows_layouts() -> None:
    s = by_name(discover([BOB, CAROL]))
    assert s["mac-github"].host == "claude-desktop"
    assert "Library/Application Support/Claude" in str(s["mac-github"].file)
    assert s["mac-docker-sock"].host == "vscode" and s["insiders-clean"].host == "vscode"
    assert s["cline-in-cursor"].host == "cline"
    assert s["mac-zed"].host == "zed" and s["mac-cursor-remote"].host == "cursor"
    assert s["win-memory"].host == "claude-desktop" and "AppData/Roaming" in str(s["win-memory"].file)


def test_project_scope_files() -> None:
    d = discover([], project_dirs=[WEBAPP])
    s = by_name(d)
    assert {n: (v.host, v.scope) for n, v in s.items()} == {
        "proj-mcp": ("claude-code", "project"),
        "proj-cursor": ("cursor", "project"),
        "proj-vscode": ("vscode", "workspace"),
        "proj-roo": ("roo-code", "project"),
        "proj-zed": ("zed", "project"),
        "proj-gemini": ("gemini-cli", "project"),
        "proj-codex": ("codex", "project"),
        "proj-continue": ("continue", "project"),
    }
    assert all(v.cwd == WEBAPP for v in s.values())
    assert s["proj-zed"].header_keys == ("X-Trace",)


def test_claude_json_projects_are_scanned(tmp_path: Path) -> None:
    home, proj = tmp_path / "home", tmp_path / "proj"
    home.mkdir()
    shutil.copytree(WEBAPP, proj)
    (home / ".claude.json").write_text(json.dumps({"projects": {str(proj): {"mcpServers": {}}}}))
    s = by_name(discover([home]))
    assert s["proj-mcp"].cwd == proj and s["proj-mcp"].file == proj / ".mcp.json"


def test_order_is_deterministic_and_files_not_read_twice() -> None:
    a = discover([BOB, ALICE], project_dirs=[WEBAPP, ALICE])
    b = discover([ALICE, BOB], project_dirs=[ALICE, WEBAPP])
    assert [(s.file, s.name) for s in a.servers] == [(s.file, s.name) for s in b.servers]
    assert len({(s.file, s.name, s.cwd) for s in a.servers}) == len(a.servers)
    # ALICE as a project dir: its ~/.gemini/settings.json is already read as user scope
    assert {s.scope for s in a.servers if s.host == "gemini-cli" and s.file.is_relative_to(ALICE)} == {"user"}


def test_env_values_never_in_repr() -> None:
    s = by_name(discover([ALICE]))["github"]
    assert "ghp_" not in repr(s) and "GITHUB_PERSONAL_ACCESS_TOKEN" not in repr(s)
    assert s.env[0][1].startswith("ghp_")  # kept for the audit


def test_broken_files_are_warnings_not_errors() -> None:
    d = discover([DAVE])
    text = "\n".join(d.warnings)
    for expected in (
        ".cursor/mcp.json: invalid JSON at line 3",
        ".codex/config.toml: invalid TOML",
        ".config/goose/config.yaml: invalid YAML at line 3",
        ".gemini/settings.json: mcpServers should be an object, got list",
        "server 'ok-one': unknown key 'frobnicate'",
        "server 'bad-args': args should be a list, got int",
        "server 'bad-env': env 'A' should be a string, got list",
        "server 'no-command': has neither command nor url",
        "server 'not-object': should be an object, got str",
        "projects should be an object, got str",
        ".continue/config.yaml: top level should be an object, got list",
        "windsurf/mcp_config.json: invalid JSON at line 1",
    ):
        assert expected in text, expected
    assert all(w.startswith(str(DAVE)) for w in d.warnings)
    # the good parts of a partly bad file still count
    assert sorted(s.name for s in d.servers) == ["bad-args", "bad-env", "ok-one"]
    assert by_name(d)["bad-env"].args == ("x",)


def _discover_as_nobody(home: Path) -> list[str]:
    """Run discover() in a child process that dropped root, return its warnings."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - child
        try:
            os.close(r)
            if os.geteuid() == 0:
                os.setgroups([])
                os.setgid(65534)
                os.setuid(65534)
            os.write(w, json.dumps(list(discover([home]).warnings)).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    os.waitpid(pid, 0)
    return list(json.loads(data))


def test_unreadable_file_is_a_warning() -> None:
    base = Path(tempfile.mkdtemp(prefix="ew-disc-"))
    try:
        base.chmod(0o755)
        f = base / ".cursor" / "mcp.json"
        f.parent.mkdir(mode=0o755)
        f.write_text("{}")
        f.chmod(0)
        warnings = _discover_as_nobody(base)
        assert warnings == [f"{f}: cannot read: Permission denied"]
    finally:
        shutil.rmtree(base)


def test_special_files_are_refused(tmp_path: Path) -> None:
    (tmp_path / ".cursor").mkdir()
    os.mkfifo(tmp_path / ".cursor" / "mcp.json")  # would block a naive open()
    (tmp_path / ".gemini").mkdir()
    (tmp_path / ".gemini" / "settings.json").mkdir()
    d = discover([tmp_path])
    assert d.servers == ()
    assert any("mcp.json: not a regular file" in w for w in d.warnings)


def test_extra_files_are_sniffed(tmp_path: Path) -> None:
    zed = tmp_path / "zed.json"
    zed.write_text('{"context_servers": {"z": {"command": "node", "args": ["a.js"],},}}')
    toml = tmp_path / "codex.toml"
    toml.write_text('[mcp_servers.c]\ncommand = "uvx"\nargs = ["x"]\n')
    plain = tmp_path / "any.json"
    plain.write_text('{"mcpServers": {"p": {"url": "https://example.org/mcp"}}}')
    d = discover([], extra_files=[zed, toml, plain, tmp_path / "missing.json"])
    assert d.warnings == (f"{tmp_path / 'missing.json'}: not found",)
    s = by_name(d)
    assert (s["z"].host, s["c"].host, s["p"].host) == ("zed", "codex", "file")


def test_jsonc_keeps_strings_and_lines() -> None:
    src = '{\n "a": "http://x//y", // c\n /* x\n y */ "b": [1,2,],\n}'
    out = strip_jsonc(src)
    assert json.loads(out) == {"a": "http://x//y", "b": [1, 2]}
    assert out.count("\n") == src.count("\n")
    bad = parse("mcpservers", '{\n\n "mcpServers": {"a": }}', "cursor", "user", Path("/f.json"))
    assert bad.warnings == ("/f.json: invalid JSON at line 3 column 22: Expecting value",)


def test_servers_command_table_and_json() -> None:
    runner = CliRunner()
    res = runner.invoke(cli, ["servers", "--home", str(ALICE), "--home", str(DAVE), "--project", str(WEBAPP)])
    assert res.exit_code == 0, res.output
    assert "GITHUB_PERSONAL_ACCESS_TOKEN" in res.stdout and "proj-gemini" in res.stdout
    assert "invalid TOML" in res.stderr and "invalid TOML" not in res.stdout
    res = runner.invoke(cli, ["servers", "--home", str(ALICE), "--format", "json"])
    rows = json.loads(res.stdout)
    gh = next(r for r in rows if r["name"] == "github")
    assert gh["env_keys"] == ["GITHUB_PERSONAL_ACCESS_TOKEN"] and "env" not in gh
    assert gh["command"] == "npx -y @modelcontextprotocol/server-github"
    sentry = next(r for r in rows if r["name"] == "sentry")
    assert sentry["url"] == "https://mcp.sentry.dev/mcp"
    # Claude Code's projects.<dir>.mcpServers: scope "local", and the project is shown
    assert (sentry["scope"], sentry["project"]) == ("local", "/srv/proj-a")
    assert gh["owner"] == pwd.getpwuid(ALICE.stat().st_uid).pw_name and gh["project"] is None
    table = runner.invoke(cli, ["servers", "--home", str(ALICE)]).stdout
    assert any("local /srv/proj-a" in line and "sentry" in line for line in table.splitlines())


def test_render_servers_with_trees() -> None:
    from egresswatch.cli.discovery import render_servers

    d = discover([CAROL])
    text = render_servers(d, {d.servers[0]: "npx (pid 10)\n  node (pid 11)\x1b[31m"})
    lines = text.splitlines()
    assert (
        "win-memory" in lines[1]
        and lines[2] == "    npx (pid 10)"
        and lines[3] == "      node (pid 11)\\x1b[31m"
    )


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=12), kids, max_size=4),
    max_leaves=25,
)
_keys = st.sampled_from(
    [
        "mcpServers",
        "servers",
        "context_servers",
        "mcp",
        "projects",
        "experimental",
        "extensions",
        "mcp_servers",
    ]
)
_entry_keys = st.sampled_from(
    ["command", "args", "env", "url", "type", "headers", "disabled", "cmd", "uri", "config"]
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fmt=st.sampled_from(sorted(PARSERS)),
    doc=st.dictionaries(
        _keys,
        st.dictionaries(
            st.text(max_size=8), st.dictionaries(_entry_keys, _json_values, max_size=5), max_size=3
        )
        | _json_values,
        max_size=3,
    ),
)
def test_parsers_never_raise_on_structured_input(fmt: str, doc: dict[str, object]) -> None:
    text = yaml.safe_dump(doc) if fmt in ("goose", "continue_yaml") else json.dumps(doc)
    res = parse(fmt, text, "h", "user", Path("/f"))
    assert all(w.startswith("/f: ") and "\n" not in w for w in res.warnings)
    assert all(
        isinstance(s.command, str | None) and all(isinstance(a, str) for a in s.args) for s in res.servers
    )


@settings(max_examples=300, deadline=None)
@given(fmt=st.sampled_from(sorted(PARSERS)), text=st.text(max_size=200))
def test_parsers_never_raise_on_garbage(fmt: str, text: str) -> None:
    res = parse(fmt, text, "h", "user", Path("/f"))
    assert all(w.startswith("/f: ") for w in res.warnings)


def test_default_homes() -> None:
    homes = all_homes()
    assert homes == sorted(set(homes)) and all(h.is_dir() for h in homes)
    if os.geteuid() == 0:
        assert Path("/root") in homes
    else:  # pragma: no cover - CI runs as root
        assert homes == [Path.home()]
    d = discover(None)  # the real machine: must not raise
    assert isinstance(d.warnings, tuple)


def test_each_definition_names_the_account_it_speaks_for(tmp_path: Path) -> None:
    """Files under a home speak for the home's owner; project and extra files for
    their own owner (everyone when root owns them); system-wide files for everyone."""
    if os.geteuid() != 0:
        missing("chown needs root")
    home, proj = tmp_path / "home", tmp_path / "proj"
    for d in (home / ".cursor", proj / ".cursor"):
        d.mkdir(parents=True)
    entry = {"mcpServers": {"s": {"command": "/opt/s", "args": []}}}
    (home / ".cursor" / "mcp.json").write_text(json.dumps(entry))
    (home / ".claude.json").write_text(
        json.dumps({"projects": {str(proj): {"mcpServers": entry["mcpServers"]}}})
    )
    (proj / ".cursor" / "mcp.json").write_text(json.dumps(entry))
    os.chown(home, 4242, 4242)  # an account with no name: named by its number
    os.chown(proj / ".cursor" / "mcp.json", 4343, 4343)
    extra = tmp_path / "extra.json"
    extra.write_text(json.dumps(entry))
    found = discover([home], [extra], [proj])
    owners = {(s.scope, str(s.file)): s.owner for s in found.servers}
    assert owners == {
        ("user", str(home / ".cursor" / "mcp.json")): "4242",
        ("local", str(home / ".claude.json")): "4242",
        ("project", str(proj / ".cursor" / "mcp.json")): "4343",
        ("user", str(extra)): None,  # root-owned: only root could have written it
    }
