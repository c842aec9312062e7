"""``egresswatch doctor``: one ok/warn/FAIL line per check of what the daemon needs."""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import click

from egresswatch.cli.main import config_option
from egresswatch.cli.run import capabilities
from egresswatch.config import Config, load_config
from egresswatch.errors import EgresswatchError, permission_hint
from egresswatch.service.trust import trusted_file_problems
from egresswatch.textsafe import safe

Check = tuple[bool | None, str]  # None: a warning (does not fail)


def _capture() -> Check:
    """Whether a packet socket can be opened and the filter attached."""
    from egresswatch.capture.live import LiveSource
    from egresswatch.errors import CaptureError

    try:
        with LiveSource(rcvbuf=64 * 1024) as src:
            size = src.rcvbuf_effective
    except CaptureError as exc:
        return False, str(exc)
    active = src.kernel_filter
    assert active is not None
    return True, f"packet socket opened, rcvbuf {size}; filter: {active.mode}: {active.reason}"


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
    from egresswatch.alert.channels import apprise_target
    from egresswatch.alert.targets import exposed_target

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
        ("privileges", capabilities),
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


COMMANDS = [doctor]
