"""Command line: one click group; each area's commands live in its own cli_* module."""

from __future__ import annotations

import importlib
import logging
import sys
from typing import cast

import click

from egresswatch import __version__
from egresswatch.errors import EgresswatchError
from egresswatch.textsafe import SafeFormatter

# command name -> module defining it (each module has a COMMANDS list). Modules are
# imported only when their command runs, so `replay` does not pay for sqlite-utils
# or apprise, and `--help` stays quick.
LAZY_COMMANDS: dict[str, str] = {
    "allowlist": "egresswatch.cli_policy",
    "audit": "egresswatch.cli_discovery",
    "doctor": "egresswatch.cli_run",
    "events": "egresswatch.cli_events",
    "install-service": "egresswatch.cli_run",
    "notifier": "egresswatch.cli_run",
    "replay": "egresswatch.cli_replay",
    "run": "egresswatch.cli_run",
    "servers": "egresswatch.cli_discovery",
    "stats": "egresswatch.cli_events",
    "status": "egresswatch.cli_run",
    "ui": "egresswatch.cli_ui",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(LAZY_COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = LAZY_COMMANDS.get(cmd_name)
        if module is None:
            return None
        for cmd in importlib.import_module(module).COMMANDS:
            if cmd.name == cmd_name:
                return cast(click.Command, cmd)
        return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="egresswatch")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """egresswatch: catch a malicious MCP server the moment it phones home.

    Captures DNS, TLS and QUIC server names and connection attempts, ties each
    flow to the MCP server process tree it comes from, judges it against
    per-server allowlists and detectors, stores and alerts.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(SafeFormatter("%(levelname)s %(name)s: %(message)s"))  # escapes user text
    logging.basicConfig(level=level, handlers=[handler])


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except EgresswatchError as exc:  # pragma: no cover - click handles most
        click.echo(f"egresswatch: error: {exc}", err=True)
        sys.exit(1)
