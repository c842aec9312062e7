"""Command line: one click group, its lazily imported commands, the options they share and the one-line errors."""

from __future__ import annotations

import errno
import importlib
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NoReturn, cast

import click

from egresswatch import __version__
from egresswatch.cli.render import FORMATS  # every command printing records offers these (or a subset)
from egresswatch.errors import EgresswatchError, permission_hint
from egresswatch.service.status import DEFAULT_STATUS_PATH
from egresswatch.textsafe import SafeFormatter, safe

#: exit codes: 2 for a usage mistake (bad option or argument), 1 for everything else
EXIT_USAGE, EXIT_ERROR = 2, 1

# command name -> module defining it (each module has a COMMANDS list). Modules are
# imported only when their command runs, so `replay` does not pay for sqlite-utils
# or apprise, and `--help` stays quick.
LAZY_COMMANDS: dict[str, str] = {
    "allowlist": "egresswatch.cli.policy",
    "audit": "egresswatch.cli.discovery",
    "doctor": "egresswatch.cli.doctor",
    "events": "egresswatch.cli.events",
    "install-service": "egresswatch.cli.install",
    "notifier": "egresswatch.cli.notifier",
    "replay": "egresswatch.cli.replay",
    "run": "egresswatch.cli.run",
    "servers": "egresswatch.cli.discovery",
    "stats": "egresswatch.cli.events",
    "status": "egresswatch.cli.status",
    "ui": "egresswatch.cli.ui",
}


def format_option(choices: tuple[str, ...] = FORMATS, default: str = "table") -> Any:
    """The one ``--format`` option (dest ``fmt``)."""
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=default, show_default=True,
        help="table: aligned text for people; json: one list; jsonl: one object per line; csv: flat rows.",
    )  # fmt: skip


config_option = click.option(
    "--config", "config_path", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=None,
    help="Config file (default: /etc/egresswatch/config.toml if present).",
)  # fmt: skip
status_option = click.option(
    "--status-file", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=DEFAULT_STATUS_PATH,
    show_default=True, help="Where the daemon writes its counters.",
)  # fmt: skip


def error_exit(message: str, code: int = EXIT_ERROR) -> NoReturn:
    """Print ``egresswatch: error: WHERE: WHAT`` (one line, escaped) and exit."""
    text = " ".join(safe(message).splitlines()) or "failed"
    click.echo(f"egresswatch: error: {text}", err=True)
    sys.exit(code)


def _usage_where(exc: click.UsageError) -> str:
    ctx = exc.ctx
    where = ctx.command_path.removeprefix("egresswatch").strip() if ctx is not None else ""
    param = getattr(exc, "param", None)
    hint = getattr(exc, "param_hint", None)
    if isinstance(exc, click.BadParameter) and param is None and isinstance(hint, str):
        return f"{where} {hint}".strip()
    if isinstance(exc, click.BadParameter) and param is not None:
        names = [o for o in getattr(param, "opts", []) if o.startswith("--")] or [param.name or "?"]
        name = names[0] if param.param_type_name == "option" else names[0].upper()
        return f"{where} {name}".strip()
    return where or "egresswatch"


def _quiet_broken_pipe() -> NoReturn:
    """The reader went away (``| head``): stop without a word, as a filter should."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
    sys.exit(0)


def handle_errors(run: Any) -> Any:
    """Run ``run()`` and turn every user-facing failure into one line and an exit
    code: click usage errors exit 2, everything else 1; a closed stdout ends quietly."""
    try:
        return run()
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.UsageError as exc:
        if type(exc).__name__ == "NoArgsIsHelpError":  # a group without its command: its help
            click.echo(exc.message, err=True)
            sys.exit(EXIT_USAGE)
        path = exc.ctx.command_path if exc.ctx is not None else "egresswatch"
        if isinstance(exc, click.MissingParameter):
            where, msg = path.removeprefix("egresswatch").strip(), exc.format_message()
        else:
            where, msg = _usage_where(exc), exc.message
        error_exit(f"{where}: {msg.rstrip('.')} (see '{path} --help')", EXIT_USAGE)
    except click.ClickException as exc:
        error_exit(exc.format_message(), EXIT_ERROR)
    except EgresswatchError as exc:
        error_exit(str(exc))
    except BrokenPipeError:
        _quiet_broken_pipe()
    except (KeyboardInterrupt, click.Abort):
        click.echo("", err=True)
        sys.exit(130)
    except PermissionError as exc:
        error_exit(f"{exc.filename or '?'}: permission denied{permission_hint(exc.filename)}")
    except OSError as exc:
        if exc.errno == errno.EPIPE:
            _quiet_broken_pipe()
        where = exc.filename or "egresswatch"
        error_exit(f"{where}: {exc.strerror or exc}")


class LazyGroup(click.Group):
    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        base = click.Group.main
        if not standalone_mode:
            return base(self, args, prog_name, complete_var, False, **extra)
        rv = handle_errors(lambda: base(self, args, prog_name, complete_var, False, **extra))
        sys.exit(rv if isinstance(rv, int) else 0)

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
    cli.main(prog_name="egresswatch")
