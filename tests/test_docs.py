"""The README and --help stay true to the code: every command has help text and
is documented in the README; every config key is in config.example.toml."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from egresswatch import config as config_mod
from egresswatch.cli import cli

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

    from egresswatch.cli import LAZY_COMMANDS

    modules = set(LAZY_COMMANDS.values())
    defined = {cmd.name: m for m in modules for cmd in importlib.import_module(m).COMMANDS}
    assert defined == LAZY_COMMANDS
