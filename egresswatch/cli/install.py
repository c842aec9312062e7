"""``egresswatch install-service``: put the systemd units (or launchd plists),
shipped as package data, in place for the egresswatch that runs the command."""

from __future__ import annotations

import os
import plistlib
import shutil
import sys
from pathlib import Path

import click

from egresswatch.errors import EgresswatchError, permission_hint
from egresswatch.service.trust import trusted_file_problems
from egresswatch.textsafe import safe


def hidden_by_private_tmp(paths: list[str]) -> list[str]:
    """Those of ``paths`` (the egresswatch executable, its interpreter, its
    package) under /tmp or /var/tmp: the units' PrivateTmp=yes gives the
    service an empty /tmp, so it could not start from there."""
    out = []
    for p in paths:
        real = os.path.realpath(p)
        for tmp in ("/tmp", "/var/tmp"):
            if real == tmp or real.startswith(tmp + "/"):
                out.append(real)
                break
    return out


def running_command() -> list[str]:
    """The egresswatch being run now, as an argv prefix for ExecStart: the
    console script itself when that is what runs (argv[0]), else this Python
    with ``-m egresswatch`` (never whatever ``egresswatch`` PATH finds first)."""
    argv0 = sys.argv[0] if sys.argv else ""
    if Path(argv0).name == "egresswatch":
        found = argv0 if os.sep in argv0 else shutil.which(argv0)
        if found and os.access(found, os.X_OK):
            return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "egresswatch"]


def _systemd_quote(arg: str) -> str:
    if arg and not any(c in arg for c in " \t\"'\\$%;"):
        return arg
    escaped = arg.replace("\\", "\\\\").replace('"', '\\"').replace("$", "$$").replace("%", "%%")
    return f'"{escaped}"'


def _service_file(relative: str) -> bytes:
    """A unit file or plist shipped as package data (egresswatch/data/, built
    from the top-level systemd/ and launchd/ directories)."""
    from importlib import resources

    try:
        return resources.files("egresswatch").joinpath("data", relative).read_bytes()
    except (OSError, FileNotFoundError) as exc:
        raise EgresswatchError(
            f"egresswatch/data/{relative}: missing from the installed package ({exc})"
        ) from None


def _install_file(dest: Path, data: bytes) -> None:
    """Write ``dest`` (mode 0644) through a new file and a rename, never through
    a symbolic link already at ``dest``."""
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    except PermissionError as exc:
        raise EgresswatchError(f"{exc.filename or dest}: permission denied{permission_hint(dest)}") from None
    except OSError as exc:
        raise EgresswatchError(f"{exc.filename or dest}: cannot write: {exc.strerror or exc}") from None


@click.command("install-service")
@click.option("--prefix", type=click.Path(readable=False, file_okay=False, path_type=Path), default=Path("/"), show_default=True,
              help="Install under this root (for packaging or a test).")  # fmt: skip
@click.option("--launchd", "use_launchd", is_flag=True, default=sys.platform == "darwin",
              help="Install the launchd plists instead of the systemd units (default on macOS).")  # fmt: skip
def install_service(prefix: Path, use_launchd: bool) -> None:
    """Install the daemon's service file and the desktop notifier's user unit.

    systemd: PREFIX/etc/systemd/system/egresswatch.service and
    PREFIX/etc/systemd/user/egresswatch-notifier.service; launchd:
    PREFIX/Library/LaunchDaemons and PREFIX/Library/LaunchAgents. They start
    the egresswatch running this command (its path, or this Python with
    -m egresswatch). Then: `systemctl daemon-reload && systemctl enable --now egresswatch`.
    """
    exe = running_command()
    for problem in trusted_file_problems(Path(exe[0]).resolve())[:1]:
        click.echo(f"egresswatch: warning: {safe(problem)}: the root service would run a program others can change",
                   err=True)  # fmt: skip
    import egresswatch

    if not use_launchd:
        for hidden in sorted(set(hidden_by_private_tmp(
                [exe[0], sys.executable, sys.prefix, os.path.dirname(egresswatch.__file__)]))):  # fmt: skip
            click.echo(f"egresswatch: warning: {safe(hidden)} is under /tmp: the units' PrivateTmp=yes hides it "
                       "from the service, which then cannot start; install egresswatch elsewhere (or add "
                       f"BindReadOnlyPaths={safe(hidden)} in a drop-in)", err=True)  # fmt: skip
    if use_launchd:
        pairs = [("launchd/org.egresswatch.daemon.plist", "Library/LaunchDaemons"),
                 ("launchd/org.egresswatch.notifier.plist", "Library/LaunchAgents")]  # fmt: skip
    else:
        pairs = [("systemd/egresswatch.service", "etc/systemd/system"),
                 ("systemd/egresswatch-notifier.service", "etc/systemd/user")]  # fmt: skip
    for rel, where in pairs:
        src = _service_file(rel)
        dest = prefix / where / Path(rel).name
        if rel.endswith(".plist"):
            plist = plistlib.loads(src)
            plist["ProgramArguments"][:1] = exe
            data = plistlib.dumps(plist)
        else:
            command = " ".join(_systemd_quote(a) for a in exe)
            data = src.decode().replace("/usr/local/bin/egresswatch", command).encode()
        _install_file(dest, data)
        click.echo(f"installed {safe(dest)}")


COMMANDS = [install_service]
