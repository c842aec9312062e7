"""``egresswatch status``: the daemon's counters and whether it is healthy, from its status file."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from egresswatch.cli.main import format_option, status_option
from egresswatch.errors import EgresswatchError, permission_hint
from egresswatch.service.status import read_status
from egresswatch.textsafe import safe


def _pid_alive(pid: object) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _load_status(path: Path) -> dict[str, Any]:
    """The status file as a dict with the fields `status` reads checked (one-line errors)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise EgresswatchError(f"{path}: no status (is the daemon running?)") from None
    except PermissionError:
        raise EgresswatchError(f"{path}: permission denied{permission_hint(path)}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise EgresswatchError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    data = read_status(path)
    if data is None:
        try:
            json.loads(text)
        except ValueError as exc:
            raise EgresswatchError(f"{path}: malformed status file (not JSON: {exc})") from None
        raise EgresswatchError(f"{path}: malformed status file (not a JSON object)")
    for key in ("updated", "interval"):
        value = data.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise EgresswatchError(f"{path}: malformed status file ({key} is not a number)")
    counters = data.get("counters")
    if counters is not None and not isinstance(counters, dict):
        raise EgresswatchError(f"{path}: malformed status file (counters is not an object)")
    return data


@click.command()
@status_option
@format_option(("table", "json"), default="table")
@click.option("--json", "as_json", is_flag=True, hidden=True, help="Same as --format json.")
def status(status_file: Path, fmt: str, as_json: bool) -> None:
    """Show the daemon's counters and whether it is healthy (exit 1 if not).

    Healthy means: the status file names a live process, was updated within
    the last few housekeeping intervals, and the daemon found no loss of
    events (kernel drops, database errors or a lost database file, dropped
    alerts, failing exports); each problem is shown.
    """
    data = _load_status(status_file)
    age = time.time() - float(data.get("updated", 0))
    alive = _pid_alive(data.get("pid"))
    fresh = age <= 3 * float(data.get("interval", 1.0)) + 5
    problems = [str(p) for p in data.get("problems") or [] if data.get("state") == "running"]
    if not alive:
        problems.insert(0, "the daemon is not running")
    elif not fresh:
        problems.insert(0, f"the status file is {age:.0f}s old (the daemon is stuck)")
    healthy = alive and fresh and data.get("state") == "running" and data.get("healthy", True) is not False
    if as_json or fmt == "json":
        click.echo(json.dumps({**data, "age": age, "alive": alive, "healthy": healthy, "problems": problems},
                              indent=1))  # fmt: skip
    else:
        state = "healthy" if healthy else "NOT HEALTHY"
        click.echo(f"egresswatch: {state} (pid {safe(data.get('pid'))} {'alive' if alive else 'not running'},"
                   f" state {safe(data.get('state'))}, updated {age:.1f}s ago)")  # fmt: skip
        for problem in problems:
            click.echo(f"problem: {safe(problem)}")
        click.echo(f"database: {safe(data.get('database'))}")
        attr = data.get("attribution") or {}
        click.echo(f"attribution: {safe(attr.get('mode', 'unknown'))} ({safe(attr.get('reason', '?'))})")
        filt = data.get("capture_filter") or {}
        click.echo(f"capture filter: {safe(filt.get('mode', 'unknown'))} ({safe(filt.get('reason', '?'))})")
        lane = data.get("watched_lane") or {}
        if lane:
            drops = (filt.get("watched_lane") or {}).get("kernel_drops", 0)
            click.echo(f"watched lane: {safe(lane.get('mode', 'unknown'))} ({safe(lane.get('reason', '?'))};"
                       f" kernel drops {safe(drops)})")  # fmt: skip
        for key, value in sorted((data.get("counters") or {}).items()):
            click.echo(f"  {safe(key)}: {safe(value)}")
    sys.exit(0 if healthy else 1)


COMMANDS = [status]
