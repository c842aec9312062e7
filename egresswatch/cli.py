"""Command line: one click group; each area's commands live in its own cli_* module."""

from __future__ import annotations

import logging
import sys

import click

from egresswatch import __version__
from egresswatch.errors import EgresswatchError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="egresswatch")
@click.option("-v", "--verbose", count=True, help="More log output on stderr (-vv for debug).")
def cli(verbose: int) -> None:
    """egresswatch: catch a malicious MCP server the moment it phones home."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(levelname)s %(name)s: %(message)s")


def _register() -> None:
    # Each module defines click commands and a COMMANDS list. Add one line per area.
    # -- command modules (keep this list sorted) --
    from egresswatch import cli_replay

    modules = [cli_replay]
    # -- end command modules --
    for mod in modules:
        for cmd in mod.COMMANDS:
            cli.add_command(cmd)


_register()


def main() -> None:
    try:
        cli.main(standalone_mode=True)
    except EgresswatchError as exc:  # pragma: no cover - click handles most
        click.echo(f"egresswatch: error: {exc}", err=True)
        sys.exit(1)
