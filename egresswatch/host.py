"""Facts about this host that every stage may need: clock ticks and boot time
(to turn a kernel start time into the process identity (pid, create_time)
psutil would give) and account names."""

from __future__ import annotations

import os
import pwd
from functools import lru_cache

CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


@lru_cache(maxsize=1)
def boot_time() -> float:
    """Boot time in epoch seconds, as psutil computes it (so keys agree)."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


_NAMES: dict[int, str] = {}
_NAMES_STAMP: list[int | None] = [None]


def user_name(uid: int) -> str:
    """The account name of ``uid`` (the number when it has none), memoised until
    /etc/passwd changes: a uid freed by userdel and given to a new account
    must not keep the old account's name (definitions are tied to accounts)."""
    try:
        stamp: int | None = os.stat("/etc/passwd").st_mtime_ns
    except OSError:
        stamp = None
    if stamp != _NAMES_STAMP[0] or len(_NAMES) > 4096:
        _NAMES.clear()
        _NAMES_STAMP[0] = stamp
    name = _NAMES.get(uid)
    if name is None:
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        _NAMES[uid] = name
    return name
