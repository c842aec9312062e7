"""Daemon commands: ``run``, ``status``, ``doctor``, ``notifier``."""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import click

from egresswatch.cli.main import format_option
from egresswatch.config import Config, load_config
from egresswatch.errors import EgresswatchError, permission_hint
from egresswatch.service.daemon import DEFAULT_STATUS_PATH, RunOptions, read_status, trusted_file_problems
from egresswatch.textsafe import safe

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13

config_option = click.option(
    "--config", "config_path", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=None,
    help="Config file (default: /etc/egresswatch/config.toml if present).",
)  # fmt: skip
status_option = click.option(
    "--status-file", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=DEFAULT_STATUS_PATH,
    show_default=True, help="Where the daemon writes its counters.",
)  # fmt: skip


def _fail(msg: str) -> None:
    click.echo(f"egresswatch: error: {safe(msg)}", err=True)
    sys.exit(1)


@click.command()
@config_option
@click.option("--db", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=None,
              help="Event database (default: daemon.database from the config).")  # fmt: skip
@click.option("--record-procs", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=None,
              help="Also record every process lookup to FILE for `replay --procs`.")  # fmt: skip
@click.option("--iface", "ifaces", multiple=True, metavar="NAME",
              help="Capture only on this interface (repeatable; default: all, new ones included).")  # fmt: skip
@status_option
def run(config_path: Path | None, db: Path | None, record_procs: Path | None, ifaces: tuple[str, ...],
        status_file: Path) -> None:  # fmt: skip
    """Run the capture daemon in the foreground (needs root or CAP_NET_RAW/CAP_NET_ADMIN).

    Logs to stderr. Under systemd (Type=notify) it reports READY=1 once
    capturing and pings the watchdog. SIGHUP reloads the config and
    allowlists; SIGTERM or SIGINT flushes the database and exits 0.
    """
    from egresswatch.service.daemon import run as run_daemon

    for name in ifaces:
        try:
            socket.if_nametoindex(name)
        except OSError:
            raise click.BadParameter(f"{name!r}: no such network interface", param_hint="--iface") from None
    if record_procs is not None:
        _check_writable(record_procs)
    ok, why = _capabilities()
    if not ok:
        raise EgresswatchError(f"run: {why} (try sudo)")

    root = logging.getLogger()
    if root.level > logging.INFO:  # a daemon says what it does (journald keeps it); -v for debug
        root.setLevel(logging.INFO)
        # apprise logs every delivery at INFO; ours records each in the alerts table
        logging.getLogger("apprise").setLevel(logging.WARNING)
    opts = RunOptions(config_path=config_path, db_path=db, record_procs=record_procs,
                      interfaces=ifaces, status_path=status_file)  # fmt: skip
    try:
        code = run_daemon(opts)
    except EgresswatchError as exc:
        _fail(str(exc))
    sys.exit(code)


def _check_writable(path: Path) -> None:
    """One line, before the daemon starts, for a file it could never write."""
    parent = path.absolute().parent
    if path.is_dir():
        raise EgresswatchError(f"{path}: is a directory")
    if not parent.is_dir():
        raise EgresswatchError(f"{path}: {parent} is not a directory")
    if os.statvfs(parent).f_flag & os.ST_RDONLY:
        raise EgresswatchError(f"{path}: on a read-only file system")
    if not os.access(parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise EgresswatchError(f"{path}: permission denied{permission_hint(path)}")


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
        for key, value in sorted((data.get("counters") or {}).items()):
            click.echo(f"  {safe(key)}: {safe(value)}")
    sys.exit(0 if healthy else 1)


MIN_INTERVAL, MAX_INTERVAL = 0.05, 3600.0


def _check_interval(ctx: click.Context, param: click.Parameter, value: float) -> float:
    if not math.isfinite(value) or not MIN_INTERVAL <= value <= MAX_INTERVAL:
        raise click.BadParameter(
            f"{value!r}: must be a number from {MIN_INTERVAL} to {MAX_INTERVAL:g} seconds"
        )
    return value


# -- doctor --------------------------------------------------------------------------
Check = tuple[bool | None, str]  # None: a warning (does not fail)


def _capabilities() -> Check:
    if os.geteuid() == 0:
        return True, "running as root"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                eff = int(line.split()[1], 16)
                have = [n for n, b in (("CAP_NET_RAW", CAP_NET_RAW), ("CAP_NET_ADMIN", CAP_NET_ADMIN))
                        if eff >> b & 1]  # fmt: skip
                if len(have) == 2:
                    return True, "CAP_NET_RAW and CAP_NET_ADMIN"
                return False, f"needs root or CAP_NET_RAW/CAP_NET_ADMIN (have: {', '.join(have) or 'none'})"
    except OSError:
        pass
    return False, "needs root or CAP_NET_RAW/CAP_NET_ADMIN"


def _capture() -> Check:
    from egresswatch.capture.live import can_capture

    return can_capture()


def _connector() -> Check:
    from egresswatch.attribute.procevents import ProcConnector

    conn = ProcConnector(rcvbuf=1 << 16)
    try:
        conn.open()
    except OSError as exc:
        return False, f"proc connector unavailable ({exc}); lineage falls back to polling"
    conn.close()
    return True, "proc connector subscribed"


def _attribution() -> Check:
    from egresswatch.ebpf.loader import KernelFlows

    kernel, why = KernelFlows.open()
    if kernel is None:
        return True, f"fallback: userspace socket lookups ({why}); sockets living ~1 ms may go unattributed"
    kernel.close()
    return True, f"ebpf: send-time socket ownership ({why})"


def _config(cfg: Config) -> Check:
    if cfg.source is None:
        return True, "no config file; built-in defaults"
    problems = trusted_file_problems(cfg.source)
    return (False, problems[0]) if problems else (True, f"{cfg.source} parsed; only root can change it")


def _database(path: Path) -> Check:
    problems = trusted_file_problems(path)
    if any(
        p.endswith(f"cannot stat: {os.strerror(13)}") for p in problems
    ):  # EACCES: not root, not in the group
        return False, f"{path}: permission denied{permission_hint(path)}"
    if problems:
        return False, problems[0]
    if not path.exists():
        return True, f"{path} will be created"
    from egresswatch.store.db import Store

    try:
        Store(path, readonly=True).close()
    except EgresswatchError as exc:
        return False, str(exc)
    return True, f"{path} readable, only root can change it"


def _target(url: str) -> Check:
    from egresswatch.alert.deliver import apprise_target, exposed_target

    target = apprise_target(url)
    if target is None:
        return False, "not a usable apprise URL (unknown scheme or missing plugin)"
    shown = safe(target)
    exposed = exposed_target(url)
    also = f"; {exposed}" if exposed else ""
    parts = urlsplit(url)
    if parts.scheme in ("json", "jsons", "xml", "xmls", "form", "forms", "http", "https") and parts.hostname:
        port = parts.port or (443 if parts.scheme.endswith("s") else 80)
        try:
            with socket.create_connection((parts.hostname, port), timeout=3):
                pass
        except OSError as exc:
            return False, f"{shown}: cannot connect to {parts.hostname}:{port}: {exc.strerror or exc}{also}"
        return (None if exposed else True), f"{shown}: {parts.hostname}:{port} reachable{also}"
    return True, f"{shown}: parsed (delivery not tested)"


@click.command()
@config_option
@click.option("--db", type=click.Path(readable=False, dir_okay=False, path_type=Path), default=None,
              help="Event database to check (default: daemon.database from the config).")  # fmt: skip
def doctor(config_path: Path | None, db: Path | None) -> None:
    """Check privileges, capture, BPF filter, proc connector, attribution mode
    (ebpf or fallback), file permissions and alert targets; one line per check, exit 1 if any FAILs."""
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("privileges", _capabilities),
        ("capture", _capture),
        ("proc connector", _connector),
        ("attribution", _attribution),
    ]
    cfg: Config | None
    try:
        cfg = load_config(config_path)
    except EgresswatchError as exc:
        message = str(exc)
        checks.append(("config", lambda: (False, message)))
        cfg = None
    if cfg is not None:
        checks.append(("config", lambda: _config(cfg)))
        checks.append(("database", lambda: _database(db or cfg.daemon.database)))
        for i, url in enumerate(cfg.alerts.urls, 1):
            checks.append((f"alert target {i}", lambda u=url: _target(u)))  # type: ignore[misc]
    failed = 0
    for name, fn in checks:
        try:
            ok, detail = fn()
        except PermissionError as exc:
            ok, detail = False, f"{exc.filename or name}: permission denied{permission_hint(exc.filename)}"
        except OSError as exc:
            ok, detail = False, f"{exc.filename or name}: {exc.strerror or exc}"
        except Exception as exc:  # a check must never crash the doctor
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        failed += ok is False
        click.echo(f"{'ok  ' if ok else 'warn' if ok is None else 'FAIL'} {name}: {safe(detail)}")
    sys.exit(1 if failed else 0)


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
        _fail(str(exc))
        return
    stop = {"flag": False}

    def _stop(signum: int, _f: object) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    follow(db or cfg.daemon.database, send, interval=interval, should_stop=lambda: stop["flag"])


COMMANDS = [run, status, doctor, notifier]
