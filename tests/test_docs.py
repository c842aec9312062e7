"""The README and --help stay true to the code: every command has help text and
is documented in the README; every config key is in config.example.toml."""

from __future__ import annotations

import dataclasses
import re
import shlex
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from egresswatch import config as config_mod
from egresswatch.cli.main import cli

REPO = Path(__file__).resolve().parents[1]


def _commands(group: click.Group, prefix: str = "") -> list[tuple[str, click.Command]]:
    out = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        assert cmd is not None, name
        full = f"{prefix}{name}"
        out.append((full, cmd))
        if isinstance(cmd, click.Group):
            out.extend(_commands(cmd, full + " "))
    return out


@pytest.mark.parametrize("name,cmd", _commands(cli), ids=lambda x: x if isinstance(x, str) else "")
def test_command_has_help_and_is_documented(name: str, cmd: click.Command) -> None:
    assert cmd.help, f"{name} has no help text"
    result = CliRunner().invoke(cli, [*name.split(), "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert f"egresswatch {name}" in (REPO / "README.md").read_text(), f"README does not mention {name}"


def test_example_config_covers_every_key() -> None:
    example = tomllib.loads((REPO / "config.example.toml").read_text())
    parsed = config_mod.parse_config(example)
    assert parsed.servers, "the example shows a per-server allowlist"
    for section in ("daemon", "retention", "discovery", "policy", "alerts"):
        cls = type(getattr(config_mod.Config(), section))
        for f in dataclasses.fields(cls):
            assert f.name in example.get(section, {}), f"config.example.toml lacks {section}.{f.name}"


def test_lazy_command_map_matches_modules() -> None:
    import importlib

    from egresswatch.cli.main import LAZY_COMMANDS

    modules = set(LAZY_COMMANDS.values())
    defined = {cmd.name: m for m in modules for cmd in importlib.import_module(m).COMMANDS}
    assert defined == LAZY_COMMANDS


# -- every documented example runs ----------------------------------------------------
DOC_FILES = ["README.md", *sorted(f"docs/{p.name}" for p in (REPO / "docs").glob("*.md")),
             "systemd/README.md", "launchd/README.md"]  # fmt: skip
_CMD = re.compile(r"^(?:\$ )?(?:sudo )?(?:\S*/)?(egresswatch\s.*)$")


def documented_examples() -> list[tuple[str, str]]:  # where is "FILE:LINE" (+ " inline")
    """(where, command line) for every `egresswatch ...` line in a code block
    (synopsis continuation lines joined) and every inline `egresswatch ...` span."""
    out: list[tuple[str, str]] = []
    for name in DOC_FILES:
        lines = (REPO / name).read_text().splitlines()
        fenced = False
        for i, line in enumerate(lines):
            if line.startswith("```"):
                fenced = not fenced
                continue
            in_block = fenced or line.startswith("    ")
            m = _CMD.match(line.strip()) if in_block else None
            if m:
                cmd = m.group(1).split("  #")[0].strip()
                j = i + 1
                while j < len(lines) and lines[j].startswith(" ") and lines[j].strip().startswith("["):
                    cmd += " " + lines[j].strip().split("  #")[0]
                    j += 1
                out.append((f"{name}:{i + 1}", cmd))
            elif not in_block:
                for span in re.findall(r"`((?:sudo )?egresswatch [^`]*)`", line):
                    out.append((f"{name}:{i + 1} inline", span.removeprefix("sudo ")))
    return out


def _sample_files(d: Path) -> dict[str, str]:
    pcaps = REPO / "pcaps"
    toolhive = d / "toolhive.json"
    toolhive.write_text(
        '{"servers": {"x": {"permissions": {"network": {"outbound": {"allow_host": ["api.example.com"]}}}}}}'
    )
    catalog = d / "catalog.yaml"
    catalog.write_text("registry:\n  x:\n    allowHosts: ['api.example.com:443']\n")
    return {
        "capture.pcapng": str(pcaps / "linktypes-more.pcapng"),
        "capture.pcap": str(pcaps / "mcp-verdicts.pcap"),
        "monday.pcap": str(pcaps / "mcp-verdicts.pcap"),
        "tuesday.pcap": str(pcaps / "connect.pcap"),
        "capture.procs.jsonl": str(pcaps / "mcp-verdicts.procs.jsonl"),
        "config.toml": str(pcaps / "mcp-verdicts.toml"),
        "forensics.db": str(d / "forensics.db"),
        "--toolhive": str(toolhive),
        "--docker-catalog": str(catalog),
    }


def _placeholder(opt: str | None, param: click.Parameter | None, d: Path, files: dict[str, str]) -> str:
    """A real value for a synopsis placeholder (PATH, FILE, NAME, N, T ...)."""
    if opt in files:
        return files[opt]
    by_opt = {"--db": str(d / "events.db"), "--config": str(REPO / "pcaps/mcp-verdicts.toml"),
              "--status-file": str(d / "status.json"), "--server": "github", "--process": "node",
              "--iface": "lo", "--domain": "*.example.com", "--url": "json://127.0.0.1:9/x",
              "--home": str(d), "--file": str(d / "none.json"), "--project": str(d), "--prefix": str(d / "root"),
              "--record-procs": str(d / "procs.jsonl")}  # fmt: skip
    if opt in by_opt:
        return by_opt[opt]
    if param is not None and isinstance(param.type, click.Choice):
        return str(param.type.choices[0])
    if param is not None and param.type.name in ("integer", "integer range"):
        return "5"
    if param is not None and param.type.name in ("float", "float range"):
        return "1"
    if param is not None and param.type.name == "time":
        return "2h"
    return str(REPO / "pcaps/connect.pcap")  # a FILE argument (replay)


def concrete(cmd: str, d: Path, files: dict[str, str], exact: bool = True) -> tuple[list[str], click.Command]:
    """The example as argv: command path resolved, brackets dropped, every
    ``a|b`` alternative checked against the option's choices (all of them, when
    ``exact``: a synopsis lists every choice), placeholders filled in. Fails on
    an option the command does not have."""
    tokens = [t for t in shlex.split(cmd.split(" | ")[0]) if t not in ("...", "[...]")]
    assert tokens[0] == "egresswatch"
    group: click.Command = cli
    path: list[str] = []
    i = 1
    while isinstance(group, click.Group) and i < len(tokens) and not tokens[i].startswith(("-", "[")):
        sub = group.get_command(click.Context(group), tokens[i])
        if sub is None:
            break
        group, path, i = sub, [*path, tokens[i]], i + 1
    assert path, f"{cmd!r}: no command"
    params = {o: p for p in group.params for o in (*p.opts, *p.secondary_opts)}
    argv: list[str] = []
    opt: click.Parameter | None = None
    opt_name: str | None = None
    positional = 0
    for raw in tokens[i:]:
        t = raw.strip("[]").rstrip(".")
        if not t:
            continue
        if t.startswith("--") and "/" in t:  # a --x/--no-x flag pair
            for flag in t.split("/"):
                assert flag in params, f"{cmd!r}: {' '.join(path)} has no option {flag}"
            t = t.split("/")[0]
        if t.startswith("-") and not t.lstrip("-")[:1].isdigit():
            assert t in params, f"{cmd!r}: {' '.join(path)} has no option {t}"
            opt, opt_name = params[t], t
            argv.append(t)
            if isinstance(opt, click.Option) and opt.is_flag:
                opt, opt_name = None, None
            continue
        if "|" in t and opt is not None and isinstance(opt.type, click.Choice):
            for alt in t.split("|"):
                assert alt in opt.type.choices, f"{cmd!r}: {alt!r} is not a choice of {opt_name}"
            if exact:
                assert set(t.split("|")) == set(opt.type.choices), (
                    f"{cmd!r}: {opt_name} choices are {opt.type.choices}"
                )
            t = t.split("|")[0]
        elif t.isupper() or t.rstrip(".").isupper() or (opt_name in files and t not in files):
            t = _placeholder(opt_name, opt, d, files)
        positional += opt is None
        argv.append(files.get(t, t))
        opt, opt_name = None, None
    if not argv:  # a bare mention of the command: its --help
        return [*path, "--help"], group
    for p in group.params:
        if isinstance(p, click.Argument) and p.required and not positional:
            argv.append(_placeholder(None, p, d, files))
    if path == ["install-service"] and "--prefix" not in argv:
        argv += ["--prefix", str(d / "root")]
    if path == ["install-service"]:
        argv[argv.index("--prefix") + 1] = str(d / "root")
    return [*path, *argv], group


EXAMPLES = documented_examples()
NOT_RUN = {"run", "notifier", "ui"}  # a daemon, a follower, a web server: parsed, not run


def test_examples_were_found() -> None:
    assert len(EXAMPLES) > 40
    assert any("replay capture.pcap --procs" in c for _, c in EXAMPLES)


@pytest.mark.parametrize(("where", "cmd"), EXAMPLES, ids=[w for w, _ in EXAMPLES])
def test_documented_example_runs(where: str, cmd: str, tmp_path: Path) -> None:
    from egresswatch.store.db import Store
    from tests.test_store import mixed_events

    files = _sample_files(tmp_path)
    with Store(tmp_path / "events.db") as s:
        s.write_many(mixed_events())
    argv, command = concrete(cmd, tmp_path, files, exact=not where.endswith("inline"))
    if "--help" not in argv:
        ctx = command.make_context(argv[0], argv[1:] if argv[0] != "allowlist" else argv[2:])
        ctx.close()  # it parses: options, choices and values are the command's
    if argv[0] in NOT_RUN or "--follow" in argv or "-f" in argv:
        return
    reads_db = argv[0] in ("events", "stats") or argv[:2] == ["allowlist", "suggest"]
    if reads_db and "--db" not in argv:
        argv += ["--db", str(tmp_path / "events.db")]
    if argv[0] in ("status",) and "--status-file" not in argv:
        argv += ["--status-file", str(tmp_path / "status.json")]
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code in (0, 1), f"{where}: {argv}: exit {result.exit_code}: {result.output}"
    assert "Traceback" not in result.output, result.output
    assert ("Usage:" in result.output) == ("--help" in argv), result.output
    if result.exit_code == 1:
        assert argv[0] in ("status", "doctor", "replay", "audit"), f"{where}: {argv}: {result.output}"
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception


def test_make_run_says_where_the_command_is_and_what_to_run_next() -> None:
    import subprocess

    out = subprocess.run(["make", "-n", "run"], capture_output=True, text=True, cwd=REPO, check=True).stdout
    assert ".venv/bin/egresswatch (not on PATH)" in out and ".venv/bin/egresswatch events -f" in out
    readme = (REPO / "README.md").read_text()
    assert "`.venv/bin/egresswatch`" in readme and "egresswatch events -f" in readme
