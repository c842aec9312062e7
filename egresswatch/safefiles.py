"""Files the root daemon reads as trusted or writes, safe from the users it watches.

Every file the daemon writes (database, lock files, status file, JSON-lines
export, ``--record-procs``) and every file it trusts (its config) must live in
a directory only root can write: a user who can add entries to the directory
could plant a symlink or a hard link where the daemon is about to write and
have root overwrite any file. :func:`trust_problems` lists what is wrong with
a path (one line each); the writers here then never follow a symlink:
``O_NOFOLLOW`` for files opened in place, ``O_CREAT|O_EXCL`` temporary files
renamed over the target for atomic replacement.
"""

from __future__ import annotations

import errno
import fcntl
import os
import secrets
import stat
from pathlib import Path

from egresswatch.errors import PermissionProblem

_OPEN_FLAGS = os.O_NOFOLLOW | os.O_CLOEXEC


def _trusted_uid(uid: int) -> bool:
    return uid in (0, os.geteuid())


def trust_problems(path: Path | str) -> list[str]:
    """Ways a user other than root (or the account running us) could change
    ``path`` or what it names: the file is a symlink, foreign-owned or
    group/other-writable; its directory is writable by others (sticky or not:
    a sticky directory still lets a user plant new names); a directory above
    is foreign-owned or writable by others without the sticky bit; a
    component of the path as given is a symlink owned by another user (who can
    repoint it whenever they like)."""
    path = Path(path).absolute()
    problems: list[str] = []
    # the path as given: a symlinked directory owned by a user can be repointed
    for prefix in (*reversed(path.parents), path):
        try:
            st = os.lstat(prefix)
        except FileNotFoundError:
            break
        except OSError as exc:
            problems.append(f"{prefix}: cannot stat: {exc.strerror}")
            break
        if stat.S_ISLNK(st.st_mode) and prefix != path and not _trusted_uid(st.st_uid):
            problems.append(f"{prefix}: symbolic link owned by uid {st.st_uid}, not root")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        problems.append(f"{path}: cannot stat: {exc.strerror}")
    else:
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{path}: is a symbolic link")
        else:
            if not _trusted_uid(st.st_uid):
                problems.append(f"{path}: owned by uid {st.st_uid}, not root")
            if st.st_mode & 0o022:
                problems.append(f"{path}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
    real_dir = path.parent.resolve()
    for d in (real_dir, *real_dir.parents):
        try:
            st = os.stat(d)
        except OSError:
            continue  # not created yet: created by root, 0750/0755
        if not _trusted_uid(st.st_uid):
            problems.append(f"{d}: directory owned by uid {st.st_uid}, not root")
        mode = stat.S_IMODE(st.st_mode)
        if st.st_mode & 0o022 and (d == real_dir or not st.st_mode & stat.S_ISVTX):
            what = "sticky directory" if st.st_mode & stat.S_ISVTX else "directory"
            problems.append(f"{d}: {what} writable by group or others (mode {mode:04o})")
    return problems


def require_trusted(path: Path | str, what: str) -> None:
    """Raise a one-line :class:`PermissionProblem` naming ``what`` (``"status
    file"``, ``"database"``) when :func:`trust_problems` finds any."""
    problems = trust_problems(path)
    if problems:
        raise PermissionProblem(f"refusing to use {what} {path}: {problems[0]}")


def make_dir(path: Path, mode: int = 0o755) -> None:
    """Create ``path`` (and missing parents) for root's files: as root, owned by root."""
    if not path.exists():
        os.makedirs(path, mode=mode, exist_ok=True)


def _check_opened(fd: int, path: Path) -> os.stat_result:
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        raise PermissionProblem(f"refusing to write {path}: not a regular file")
    if not _trusted_uid(st.st_uid):
        raise PermissionProblem(f"refusing to write {path}: owned by uid {st.st_uid}, not root")
    if st.st_nlink > 1:
        raise PermissionProblem(f"refusing to write {path}: it has {st.st_nlink} hard links")
    return st


def open_append(path: Path, mode: int = 0o600) -> int:
    """A descriptor appending to ``path`` (created with ``mode``), never through
    a symlink; refuses a file that is not a regular root-owned one."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | _OPEN_FLAGS, mode)
    try:
        st = _check_opened(fd, path)
        if st.st_mode & 0o777 != mode:
            os.fchmod(fd, mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data``: an ``O_EXCL|O_NOFOLLOW`` temporary file
    with a random name in the same directory, renamed over the target."""
    dfd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        tmp = f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, mode, dir_fd=dfd)
        try:
            with os.fdopen(fd, "wb") as fh:
                os.fchmod(fh.fileno(), mode)
                fh.write(data)
            os.replace(tmp, path.name, src_dir_fd=dfd, dst_dir_fd=dfd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=dfd)
            except OSError:
                pass
            raise
    finally:
        os.close(dfd)


class InstanceLock:
    """An exclusive ``flock`` on ``path`` (0600, root's, in a root-only
    directory, so no watched user can open it to hold the lock) held for the
    life of the process; the file holds the holder's pid."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = path
        self.what = what
        self.fd = -1

    def acquire(self) -> InstanceLock:
        require_trusted(self.path, "lock file")
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | _OPEN_FLAGS, 0o600)
        except OSError as exc:
            raise PermissionProblem(f"cannot open lock file {self.path}: {exc.strerror}") from None
        try:
            _check_opened(fd, self.path)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                if exc.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                    raise
                pid = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
                raise PermissionProblem(
                    f"{self.what}: already in use by egresswatch pid {pid} (lock {self.path})"
                ) from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
