"""``egresswatch run``: the capture daemon in the foreground (:mod:`egresswatch.service`)."""

from __future__ import annotations

import logging
import os
import socket
import sys
from pathlib import Path

import click

from egresswatch.cli.main import config_option, error_exit, status_option
from egresswatch.errors import EgresswatchError, permission_hint
from egresswatch.service.daemon import RunOptions

CAP_NET_ADMIN, CAP_NET_RAW = 12, 13


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
    ok, why = capabilities()
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
        error_exit(str(exc))
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


def capabilities() -> tuple[bool, str]:
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


COMMANDS = [run]
