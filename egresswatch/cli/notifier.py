"""``egresswatch notifier``: the daemon's alerts as desktop notifications, in the user's session."""

from __future__ import annotations

import math
import signal
import sys
from pathlib import Path

import click

from egresswatch.cli.main import config_option, error_exit
from egresswatch.config import load_config
from egresswatch.errors import EgresswatchError

MIN_INTERVAL, MAX_INTERVAL = 0.05, 3600.0


def _check_interval(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise click.BadParameter(
            f"{value!r}: must be a number from {MIN_INTERVAL} to {MAX_INTERVAL:g} seconds"
        )
    return value


@click.command()
@config_option
@click.option("--db", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=None,
              help="The daemon's database (read-only; default: daemon.database from the config).")  # fmt: skip
@click.option(
    "--url", default=None, help="apprise URL to notify (default: dbus:// on Linux, macosx:// on macOS)."
)
@click.option(
    "--interval", type=float, default=1.0, show_default=True, callback=_check_interval,
    help=f"Seconds between database polls ({MIN_INTERVAL} to {MAX_INTERVAL:g}).",
)  # fmt: skip
def notifier(config_path: Path | None, db: Path | None, url: str | None, interval: float) -> None:
    """Show the daemon's alerts as desktop notifications (run in the user's session).

    Follows the daemon's database read-only (the user must be in the
    database's group, daemon.db_group) and shows each new alert and digest.
    """
    from egresswatch.alert.notifier import DEFAULT_URL, apprise_sender, follow

    try:
        cfg = load_config(config_path)
        send = apprise_sender(url or ("macosx://" if sys.platform == "darwin" else DEFAULT_URL))
    except EgresswatchError as exc:
        error_exit(str(exc))
        return
    stop = {"flag": False}

    def _stop(signum: int, _f: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    follow(db or cfg.daemon.database, send, interval=interval, should_stop=lambda: stop["flag"])


COMMANDS = [notifier]
