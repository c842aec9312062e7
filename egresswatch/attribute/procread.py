"""Read one process: what it runs, as launched.

:func:`read_seen` reads a process from /proc on Linux (psutil elsewhere) and,
when the eBPF programs recorded its last exec, prefers the command line the
kernel saw then over one the process has rewritten since
(:func:`kernel_view`): a server posing as ``/usr/sbin/sshd -D`` is still
matched to its launch.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

from egresswatch.attribute.listings import process_info
from egresswatch.attribute.procevents import read_process
from egresswatch.model import ProcessInfo

if TYPE_CHECKING:
    from egresswatch.ebpf.records import ExecRecord

ExecSource = Callable[[int], "ExecRecord | None"]

#: a fork's copy is re-read from /proc (no eBPF) while this young (seconds): its exec
#: event comes within milliseconds, later only under load
EXEC_EVENT_LAG = 1.0


def read_any(pid: int) -> ProcessInfo | None:
    """``pid`` now; None when it is gone (or hidden)."""
    return read_process(pid) if sys.platform.startswith("linux") else process_info(pid)


def read_seen(pid: int, exec_source: ExecSource | None) -> tuple[ProcessInfo | None, bool]:
    """(``pid`` as launched, True when the kernel's exec record replaced what
    /proc shows); ``exec_source`` gives the kernel's record of a pid's last exec."""
    info = read_any(pid)
    if info is None or exec_source is None:
        return info, False
    try:
        rec = exec_source(pid)
    except OSError:
        return info, False
    if rec is None or rec.create_time != info.create_time:
        return info, False  # exec'd while no eBPF program watched
    seen = kernel_view(info, rec)
    return seen, seen is not info


def kernel_view(info: ProcessInfo, rec: ExecRecord) -> ProcessInfo:
    """``info`` with the command line and name the kernel saw at exec when the
    process has rewritten them since (a server posing as ``/usr/sbin/sshd -D``);
    ``info`` itself when /proc still shows what was launched. Only the first
    512 bytes of argv are kept at exec: a longer one that /proc still starts
    with is taken whole from /proc."""
    if not rec.argv:
        return info
    now, then = "\0".join(info.cmdline), "\0".join(rec.argv)
    same = now.startswith(then) if rec.truncated else now == then
    if same and info.name == rec.comm:
        return info
    return replace(info, cmdline=info.cmdline if same else rec.argv, name=rec.comm or info.name)


def exec_since_fork(info: ProcessInfo, exec_source: ExecSource | None, young: bool) -> ProcessInfo | None:
    """What the process whose fork copy (its parent's command line) is ``info``
    runs now, if it exec'd since; None when no exec is known. The proc
    connector's exec event lags (more under load), and a child that connects a
    millisecond after exec is attributed before it is handled: the kernel's
    exec record (same start time: this process, after its fork) answers, or
    without eBPF a read of /proc while the process is ``young``."""
    if exec_source is not None:
        try:
            seen = exec_source(info.pid)
        except OSError:
            return None
        if seen is None or seen.create_time != info.create_time:
            return None  # no exec since the fork
        now: ProcessInfo | None = kernel_view(info, seen)
    elif young:
        now = read_any(info.pid)
    else:
        return None
    if now is None or now.key != info.key or now.cmdline == info.cmdline:
        return None
    return replace(now, ppid=info.ppid)
