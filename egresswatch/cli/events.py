"""`egresswatch events` and `egresswatch stats`: read the event database."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import click

from egresswatch.cli.main import format_option
from egresswatch.cli.render import EventWriter, render_stats
from egresswatch.config import load_config
from egresswatch.errors import EgresswatchError
from egresswatch.model import KINDS, VERDICTS
from egresswatch.store.db import Store
from egresswatch.store.query import count_events, parse_time, query_events
from egresswatch.store.stats import stats
from egresswatch.store.volume import add_volumes

FOLLOW_INTERVAL = 0.5


class TimeParam(click.ParamType):
    """2h, 30m, 7d, ISO-8601 or epoch seconds -> epoch seconds."""

    name = "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        if isinstance(value, float):
            return value
        try:
            return parse_time(str(value), time.time())
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def _is_tty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _db_path(db: Path | None, config: Path | None) -> Path:
    if db is not None:
        return db
    return load_config(config).daemon.database


def _open(db: Path | None, config: Path | None) -> Store:
    try:
        return Store(_db_path(db, config), readonly=True)
    except EgresswatchError as exc:
        raise click.ClickException(str(exc)) from None


_db_option = click.option(
    "--db", type=click.Path(readable=False, path_type=Path, dir_okay=False), default=None,
    help="Event database (default: daemon.database from the config, /var/lib/egresswatch/events.db).",
)  # fmt: skip
_config_option = click.option(
    "--config", "config", type=click.Path(readable=False, path_type=Path, dir_okay=False), default=None,
    help="Config file to read daemon.database from (default /etc/egresswatch/config.toml).",
)  # fmt: skip


@click.command()
@click.option("--since", type=TimeParam(), help="Start: 2h, 30m, 7d, ISO-8601 or epoch seconds.")
@click.option("--until", type=TimeParam(), help="End (exclusive), same forms as --since.")
@click.option("--server", help="MCP server name.")
@click.option("--pid", type=int, help="Process id.")
@click.option("--process", help="Process name (exact).")
@click.option("--domain", help="GLOB on dst_name, qname or SNI, case-insensitive ('*.example.com').")
@click.option("--verdict", type=click.Choice(VERDICTS))
@click.option("--kind", type=click.Choice(KINDS))
@click.option("--limit", type=click.IntRange(min=0), default=50, show_default=True, help="0: no limit.")
@format_option()
@click.option(
    "--follow", "-f", is_flag=True, help="Keep printing new events as they are stored (Ctrl-C stops)."
)
@click.option(
    "--flows", is_flag=True,
    help="One line per flow (SYN + hello): its deciding event; the filters apply to that event.",
)  # fmt: skip
@_db_option
@_config_option
def events(
    since: float | None,
    until: float | None,
    server: str | None,
    pid: int | None,
    process: str | None,
    domain: str | None,
    verdict: str | None,
    kind: str | None,
    limit: int,
    fmt: str,
    follow: bool,
    flows: bool,
    db: Path | None,
    config: Path | None,
) -> None:
    """Show stored events, newest first (with --follow: oldest first, then new ones)."""
    if follow and fmt == "json":
        raise click.UsageError("--follow cannot write one JSON list; use --format jsonl")
    if follow and flows:
        raise click.UsageError("--flows cannot be combined with --follow")
    store = _open(db, config)
    filters: dict[str, Any] = dict(
        since=since, until=until, server=server, pid=pid, process=process,
        domain_glob=domain, verdict=verdict, kind=kind,
    )  # fmt: skip
    out = EventWriter(fmt, sys.stdout)
    try:
        rows = query_events(store, limit=limit or None, flows=flows, **filters)
        if not follow:
            out.write(rows)
            if limit and len(rows) == limit and _is_tty(sys.stderr):
                total = count_events(store, **filters)
                if total > limit:
                    click.echo(f"{limit} of {total} shown (--limit 0 for all)", err=True)
            return
        rows.reverse()
        out.write(rows)
        last = max((r["id"] for r in rows), default=None)
        if last is None:
            found = store.execute("SELECT max(id) FROM events")
            last = found[0][0] or 0
        while True:
            new = query_events(store, limit=1000, after_id=last, **filters)
            if new:
                out.write(new)
                last = new[-1]["id"]
            else:
                time.sleep(FOLLOW_INTERVAL)
    except KeyboardInterrupt:
        return
    except BrokenPipeError:
        sys.stderr.close()  # the reader went away (| head): exit quietly
    except EgresswatchError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


@click.command("stats")
@click.option("--since", type=TimeParam(), help="Start: 2h, 30m, 7d, ISO-8601 or epoch seconds.")
@click.option("--until", type=TimeParam(), help="End (exclusive).")
@format_option()
@_db_option
@_config_option
def stats_cmd(
    since: float | None, until: float | None, fmt: str, db: Path | None, config: Path | None
) -> None:
    """Per MCP server: destinations contacted (count, first/last seen), flagged by
    reason, and the bytes uploaded to each (eBPF mode: flow_summary events)."""
    store = _open(db, config)
    try:
        render_stats(add_volumes(stats(store, since, until), store, since, until), fmt, sys.stdout)
    except EgresswatchError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


COMMANDS = [events, stats_cmd]

if __name__ == "__main__":  # pragma: no cover - `python3 -m egresswatch.cli.events events ...`
    click.Group(commands={"events": events, "stats": stats_cmd})()
