"""`egresswatch ui`: the local read-only web view (needs the ``ui`` extra)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from egresswatch.config import load_config
from egresswatch.errors import EgresswatchError
from egresswatch.service.status import DEFAULT_STATUS_PATH, read_status


@click.command("ui")
@click.option(
    "--db", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Event database (default: daemon.database from the config, /var/lib/egresswatch/events.db).",
)  # fmt: skip
@click.option(
    "--config", "config_path", type=click.Path(path_type=Path, dir_okay=False), default=None,
    help="Config file: the database path, allowlists and learning settings (default /etc/egresswatch/config.toml).",
)  # fmt: skip
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="Port on 127.0.0.1 (0: any free port, printed at start).")  # fmt: skip
@click.option("--status-file", type=click.Path(dir_okay=False, path_type=Path), default=DEFAULT_STATUS_PATH,
              show_default=True, help="The daemon's status file, shown in the page header.")  # fmt: skip
@click.option("--home", "homes", multiple=True, type=click.Path(file_okay=False, path_type=Path),
              help="Home folder whose MCP host configs name the servers (repeatable; default: all readable).")  # fmt: skip
@click.option("--processes/--no-processes", default=True, show_default=True,
              help="Show each server's live process tree (a read of /proc every 10 s).")  # fmt: skip
def ui_cmd(
    db: Path | None, config_path: Path | None, port: int, status_file: Path, homes: tuple[Path, ...],
    processes: bool,
) -> None:  # fmt: skip
    """Serve a read-only web view of the event database on 127.0.0.1.

    Pages: servers (destinations, flagged counts, learning state, live process
    trees), one server (timeline, install-phase traffic, allowlist suggestion),
    alerts with their digests, and event search with the filters of
    `egresswatch events` in the URL. Opens the database read-only: members of
    daemon.db_group need no root. Ctrl-C stops it."""
    try:
        from egresswatch.ui import app as ui_app
        from egresswatch.ui import procs, queries, serve
    except ImportError as exc:
        raise click.ClickException(
            f"ui: missing dependency {exc.name!r}; install it with: pip install 'egresswatch[ui]'"
        ) from None
    try:
        cfg = load_config(config_path)
        store = queries.open_readonly(db or cfg.daemon.database)
    except EgresswatchError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        sock = serve.bind(port)
    except OSError as exc:
        store.close()
        raise click.ClickException(f"--port {port}: cannot listen on {serve.HOST}: {exc.strerror}") from None
    watcher = procs.ProcessWatcher(homes or None) if processes else None
    if watcher is not None:
        watcher.start()
    app = ui_app.create_app(store, cfg, watcher, lambda: read_status(status_file))
    click.echo(f"egresswatch ui: http://{serve.HOST}:{sock.getsockname()[1]}/ (Ctrl-C stops)", err=True)
    sys.stderr.flush()
    try:
        serve.serve(app, sock)
    finally:
        if watcher is not None:
            watcher.stop()
        store.close()


COMMANDS = [ui_cmd]
