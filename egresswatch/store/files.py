"""The database file on disk: path checks, creation with restrictive modes and
group, the -wal/-shm files beside it, the permission audit, and opening the
SQLite connection (read-only ones included).

Everything here is about the file, not what is in it (:mod:`egresswatch.store.schema`).
"""

from __future__ import annotations

import grp
import os
import sqlite3
import stat
from pathlib import Path
from urllib.parse import quote

from egresswatch.errors import StoreError
from egresswatch.safefiles import trust_problems


def connect(path: Path, readonly: bool) -> sqlite3.Connection:
    if readonly:
        if not path.exists():
            raise StoreError(f"{path}: no such database")
        uri = f"file:{quote(str(path.resolve()))}?mode=ro"
        try:
            conn = sqlite3.connect(uri, uri=True, check_same_thread=False, isolation_level=None)
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as exc:
            if not isinstance(exc, sqlite3.OperationalError) or "not a database" in str(exc):
                raise StoreError(f"{path}: not a usable SQLite database ({exc})") from None
            # WAL database with no -shm/-wal and a directory we cannot write:
            # the writer is not running, so an immutable read is consistent.
            if Path(f"{path}-wal").exists():
                raise StoreError(f"{path}: cannot open the database read-only") from None
            try:
                conn = sqlite3.connect(
                    uri + "&immutable=1", uri=True, check_same_thread=False, isolation_level=None
                )
            except sqlite3.Error as exc2:
                raise StoreError(f"{path}: cannot open the database read-only: {exc2}") from None
    else:
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=5.0)
    conn.row_factory = sqlite3.Row
    try:
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA cache_size=-16384")
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise StoreError(f"{path}: not a usable SQLite database ({exc})") from None
    return conn


def check_path(path: Path, readonly: bool) -> None:
    """Refuse, in one line, a database path that cannot work: a directory, a
    path under a regular file, a file in /proc or /sys, no permission."""
    if path.absolute().resolve().parts[1:2] in (("proc",), ("sys",), ("dev",)):
        raise StoreError(f"{path}: a kernel file system is no place for a database")
    for parent in path.absolute().parents:
        try:
            st = os.stat(parent)
        except FileNotFoundError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{path}: {parent} is not a directory")
        break
    try:
        st = os.stat(path)
    except FileNotFoundError:
        if readonly:
            raise StoreError(f"{path}: no such database") from None
        return
    if not stat.S_ISREG(st.st_mode):
        raise StoreError(f"{path}: not a regular file")
    if readonly and not os.access(path, os.R_OK):
        raise PermissionError(13, "Permission denied", str(path))
    if not readonly and os.statvfs(path).f_flag & os.ST_RDONLY:
        raise StoreError(f"{path}: on a read-only file system")
    if not readonly and not os.access(path, os.R_OK | os.W_OK):
        raise PermissionError(13, "Permission denied", str(path))


def make_db_dir(path: Path, group: str | None) -> int:
    """Create the database's directory (0750, group ``group``) if missing; the group id or -1."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise StoreError(f"daemon.db_group: no such group {group!r}") from None
    if not path.parent.exists():
        os.makedirs(path.parent, mode=0o750, exist_ok=True)
        os.chmod(path.parent, 0o750)
        if gid >= 0 and os.geteuid() == 0:
            _chown(path.parent, None, gid)
    return gid


def create_file(path: Path, group: str | None) -> None:
    """Create the database directory and file with restrictive modes; an
    existing root-owned database is given ``group`` (when it was created
    before the group was configured, or a start failed half-way)."""
    gid = make_db_dir(path, group)
    if path.exists():
        if gid >= 0 and os.geteuid() == 0:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            try:
                st = os.fstat(fd)
                if stat.S_ISREG(st.st_mode) and st.st_uid == 0 and st.st_gid != gid:
                    _chown(path, fd, gid)
                    os.fchmod(fd, 0o640)
            finally:
                os.close(fd)
        return
    mode = 0o640 if gid >= 0 else 0o600
    fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        os.fchmod(fd, mode)
        if gid >= 0 and os.geteuid() == 0:
            _chown(path, fd, gid)
    finally:
        os.close(fd)


def _chown(path: Path, fd: int | None, gid: int) -> None:
    """Give ``path`` (or the open ``fd``) to root:gid; EPERM (no CAP_CHOWN, or a
    system call filter without the chown calls) is a one-line StoreError."""
    try:
        if fd is not None:
            os.fchown(fd, 0, gid)
        else:
            os.chown(path, 0, gid, follow_symlinks=False)
    except PermissionError as exc:
        raise StoreError(
            f"{path}: cannot give it to daemon.db_group (gid {gid}): {exc.strerror} "
            "(needs CAP_CHOWN and the chown system calls)"
        ) from None


def match_sidecars(path: Path) -> None:
    """Give -wal/-shm the owner/group/mode of the database file (SQLite usually does)."""
    try:
        st = os.stat(path)
    except OSError:
        return
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        try:
            sst = os.lstat(side)
        except OSError:
            continue
        if not stat.S_ISREG(sst.st_mode) or sst.st_uid != os.geteuid():
            continue
        if stat.S_IMODE(sst.st_mode) != stat.S_IMODE(st.st_mode):
            os.chmod(side, stat.S_IMODE(st.st_mode))
        if os.geteuid() == 0 and (sst.st_uid, sst.st_gid) != (st.st_uid, st.st_gid):
            os.chown(side, st.st_uid, st.st_gid)


def remove_stale_sidecars(path: Path) -> None:
    """-wal/-shm left by the deleted database (another connection still had it
    open) must not be replayed into the new one."""
    for suffix in ("-wal", "-shm"):
        side = Path(f"{path}{suffix}")
        try:
            st = os.lstat(side)
        except FileNotFoundError:
            continue
        if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
            os.unlink(side)


def check_permissions(path: Path | str) -> list[str]:
    """Problems that let a user other than root (or the owner running us) change
    the database: the checks of :func:`egresswatch.safefiles.trust_problems` on
    the file and its directories, and on the -wal/-shm files beside it."""
    path = Path(path)
    problems = trust_problems(path)
    for p in (Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            continue
        except OSError as exc:
            problems.append(f"{p}: cannot stat: {exc.strerror}")
            continue
        if stat.S_ISLNK(st.st_mode):
            problems.append(f"{p}: is a symbolic link")
            continue
        if st.st_uid not in (0, os.geteuid()):
            problems.append(f"{p}: owned by uid {st.st_uid}, not root")
        if st.st_mode & 0o022:
            problems.append(f"{p}: writable by group or others (mode {stat.S_IMODE(st.st_mode):04o})")
    return problems
