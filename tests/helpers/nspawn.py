"""A Debian container booted with a real systemd as PID 1 (systemd-nspawn -b),
for testing the installed units. The root filesystem is built once with
debootstrap from the Debian archive apt already uses and cached under
/var/cache/egresswatch-test/ (keyed by release and package list); each boot
gets a throw-away overlay (--volatile=overlay), so the cache stays clean."""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.helpers.netlab import missing, wait_for

CACHE = Path(os.environ.get("EGRESSWATCH_TEST_CACHE", "/var/cache/egresswatch-test"))
PACKAGES = ("systemd", "systemd-sysv", "dbus", "dbus-user-session", "libdbus-1-3", "libglib2.0-0", "python3",
            "procps")  # fmt: skip
BUILD = 1  # bump to rebuild cached root filesystems


def _release() -> str:
    for line in Path("/etc/os-release").read_text().splitlines():
        if line.startswith("VERSION_CODENAME="):
            return line.split("=", 1)[1].strip().strip('"')
    missing("the host's Debian release (VERSION_CODENAME in /etc/os-release) is unknown")
    raise AssertionError("unreachable")


def _mirror() -> str:
    """The Debian archive apt uses here (from the URI apt would fetch a package from)."""
    out = subprocess.run(["apt-get", "--print-uris", "download", "base-files"], capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    for line in out.stdout.splitlines():
        uri = line.split()[0].strip("'") if line.strip() else ""
        if "/pool/" in uri:
            return uri.split("/pool/", 1)[0]
    raise AssertionError(f"cannot find apt's Debian archive: {out.stderr.strip()[-300:]}")


def rootfs() -> Path:
    """The cached root filesystem, built now if needed (about 2 minutes)."""
    for tool in ("debootstrap", "systemd-nspawn", "nsenter"):
        if shutil.which(tool) is None:
            missing(f"{tool} is missing (scripts/setup.sh --test installs debootstrap and systemd-container)")
    if os.geteuid() != 0:
        missing("booting a container needs root")
    release = _release()
    key = hashlib.sha256(repr((release, PACKAGES, BUILD)).encode()).hexdigest()[:16]
    root = CACHE / f"rootfs-{release}-{key}"
    if (root / ".complete").exists():
        return root
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one build at a time; the others wait and reuse it
        if (root / ".complete").exists():
            return root
        tmp = CACHE / f"{root.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        log = CACHE / f"{root.name}.log"
        with open(log, "w") as fh:
            res = subprocess.run(["debootstrap", "--variant=minbase", f"--include={','.join(PACKAGES)}", release,
                                  str(tmp), _mirror()], stdout=fh, stderr=subprocess.STDOUT, timeout=1200)  # fmt: skip
        if res.returncode != 0:
            raise AssertionError(f"debootstrap failed ({res.returncode}):\n{log.read_text()[-3000:]}")
        (tmp / ".complete").write_text(f"{release} {' '.join(PACKAGES)}\n")
        os.rename(tmp, root)
    return root


class Container:
    """A booted container: ``run()`` executes inside it (nsenter into PID 1's namespaces)."""

    def __init__(self, root: Path, binds: list[Path], log: Path) -> None:
        self.name = f"ewtest{os.getpid()}"
        args = ["systemd-nspawn", "--quiet", "--boot", f"--directory={root}", "--volatile=overlay",
                "--register=no", "--keep-unit", "--private-network", "--console=pipe", f"--machine={self.name}"]  # fmt: skip
        args += [f"--bind-ro={b}" for b in binds]
        self.log = log
        self._log = open(log, "w")
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)  # fmt: skip
        try:
            self.leader = wait_for(self._leader, 30, "the container's init")
            wait_for(self._booted, 120, "the container's boot")
        except BaseException:
            self.stop()
            raise

    def _booted(self) -> bool:
        """True once the container's systemd finished booting (its bus may not be up at first)."""
        res = self.run("systemctl", "is-system-running", check=False, timeout=30)
        state = res.stdout.strip()
        # "offline": the manager is not PID 1 yet (polled between nspawn's fork and
        # systemd's start: a loaded machine); not booted yet, the deadline decides
        if state in ("maintenance", "stopping"):
            raise AssertionError(f"container booted to {state!r}:\n{self.journal()}")
        return state in ("running", "degraded")

    def _leader(self) -> int | None:
        if self.proc.poll() is not None:
            raise AssertionError(
                f"systemd-nspawn exited {self.proc.returncode}:\n{self.log.read_text()[-3000:]}"
            )
        try:
            kids = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        except OSError:
            return None
        for k in kids:
            try:
                if Path(f"/proc/{k}/comm").read_text().strip() == "systemd":
                    return int(k)
            except OSError:
                continue
        return None

    def run(self, *argv: str, check: bool = True, timeout: float = 60, input: str | None = None,
            user: str | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run ``argv`` in the container (as ``user`` through runuser, else root)."""
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--"]
        if user is not None:
            cmd += ["runuser", "-u", user, "--"]
        res = subprocess.run([*cmd, *argv], capture_output=True, text=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"{argv} exited {res.returncode}: {res.stderr.strip()[-2000:]}")
        return res

    def popen(self, *argv: str, user: str | None = None) -> subprocess.Popen[str]:
        cmd = ["nsenter", "-t", str(self.leader), "-a", "--"]
        if user is not None:
            cmd += ["runuser", "-u", user, "--"]
        return subprocess.Popen([*cmd, *argv], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def write(self, path: str, text: str, mode: str = "644") -> None:
        self.run(
            "sh",
            "-c",
            f'mkdir -p "$(dirname "$1")" && cat > "$1" && chmod {mode} "$1"',
            "sh",
            path,
            input=text,
        )

    def journal(self, unit: str | None = None, lines: int = 60) -> str:
        args = ["journalctl", "--no-pager", "-n", str(lines)] + (["-u", unit] if unit else [])
        try:
            return self.run(*args, check=False, timeout=30).stdout
        except Exception as exc:  # the journal is only for failure messages
            return f"(no journal: {exc})"

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # nspawn asks the container's systemd to shut down
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._log.close()


def host_binds(repo: Path) -> list[Path]:
    """What the container needs to run this checkout's egresswatch at the same
    paths: the checkout, its virtualenv and the interpreter it was made from
    (the container's own /usr has Debian's python3 of the same release)."""
    binds = [repo]
    for p in (Path(sys.prefix), Path(sys.base_prefix)):
        if p != Path("/usr") and not p.is_relative_to(repo) and p not in binds:
            binds.append(p)
    return binds


def settle(seconds: float) -> None:
    """Let real time pass where the property under test is about time (a watchdog)."""
    time.sleep(seconds)
