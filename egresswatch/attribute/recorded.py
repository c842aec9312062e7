"""Record and replay process lookups (``egresswatch run --record-procs FILE``).

- :class:`RecordingAttributor` wraps any Attributor and writes one JSON line
  per lookup::

    {"ts", "proto", "local": [ip, port], "remote": [ip, port], "kind",
     "process": {pid, create_time, ppid, name, exe, cmdline, user} | null,
     "chain": [process, ...], "server", "host", "phase", "reason"}

  The file is created mode 0600: command lines can hold secrets.
- :class:`RecordedAttributor` replays such a file: the record for
  (proto, local ip, local port) with the latest ts <= obs.ts (+ tolerance), no
  older than ``max_age`` seconds, so replaying the same capture gives the
  attribution the live run gave.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import threading
from collections import Counter
from pathlib import Path
from typing import Any, TextIO

from egresswatch.attribute.sockets import norm_ip
from egresswatch.errors import EgresswatchError
from egresswatch.model import Attribution, Frame, Observation, ProcessInfo
from egresswatch.safefiles import open_append
from egresswatch.stages import Attributor

MAX_LINE = 1 << 20  # a procs record line longer than this is skipped


class ProcsFileError(EgresswatchError):
    """A recorded-processes file cannot be used (one line, with the line number)."""


def process_to_dict(p: ProcessInfo) -> dict[str, Any]:
    return {
        "pid": p.pid,
        "create_time": p.create_time,
        "ppid": p.ppid,
        "name": p.name,
        "exe": p.exe,
        "cmdline": list(p.cmdline),
        "user": p.user,
    }


def _opt_str(v: Any) -> str | None:
    if v is None:
        return None
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def process_from_dict(d: Any) -> ProcessInfo:
    if not isinstance(d, dict):
        raise ValueError("process is not an object")
    pid, ct, ppid = d.get("pid"), d.get("create_time", 0.0), d.get("ppid")
    if not isinstance(pid, int) or isinstance(pid, bool) or pid < 0:
        raise ValueError("bad pid")
    if not isinstance(ct, int | float) or isinstance(ct, bool) or not math.isfinite(ct):
        raise ValueError("bad create_time")
    if ppid is not None and (not isinstance(ppid, int) or isinstance(ppid, bool)):
        raise ValueError("bad ppid")
    cmd = d.get("cmdline") or []
    if not isinstance(cmd, list) or not all(isinstance(c, str) for c in cmd):
        raise ValueError("bad cmdline")
    return ProcessInfo(
        pid=pid,
        create_time=float(ct),
        ppid=ppid,
        name=_opt_str(d.get("name")),
        exe=_opt_str(d.get("exe")),
        cmdline=tuple(cmd),
        user=_opt_str(d.get("user")),
    )


def record_line(obs: Observation, attr: Attribution) -> str:
    local, remote = obs.local(), obs.remote()
    rec = {
        "ts": obs.ts,
        "proto": obs.proto,
        "local": [local[0], local[1]],
        "remote": [remote[0], remote[1]],
        "kind": obs.kind,
        "process": process_to_dict(attr.process) if attr.process else None,
        "chain": [process_to_dict(p) for p in attr.chain],
        "server": attr.server,
        "host": attr.host,
        "phase": attr.phase,
        "reason": attr.reason,
    }
    return json.dumps(rec, separators=(",", ":"), ensure_ascii=False)


class RecordingAttributor:
    """Attributes with ``inner`` and appends each lookup to ``path``."""

    def __init__(self, inner: Attributor, path: Path) -> None:
        self.inner = inner
        self.path = path
        fd = open_append(path, 0o600)  # never through a symlink (egresswatch.safefiles)
        self._out: TextIO = os.fdopen(fd, "a", encoding="utf-8", buffering=1)
        self._lock = threading.Lock()

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        attr = self.inner.attribute(obs, frame)
        line = record_line(obs, attr)
        with self._lock:
            self._out.write(line + "\n")
        return attr

    def close(self) -> None:
        with self._lock:
            self._out.close()


Key = tuple[str, str, int]


def parse_record(d: Any) -> tuple[Key, float, Attribution]:
    """Pure: one decoded JSON record -> (key, ts, attribution); ValueError if bad."""
    if not isinstance(d, dict):
        raise ValueError("not a JSON object")
    ts, proto, local = d.get("ts"), d.get("proto"), d.get("local")
    if not isinstance(ts, int | float) or isinstance(ts, bool) or not math.isfinite(ts):
        raise ValueError("bad ts")
    if proto not in ("tcp", "udp"):
        raise ValueError("bad proto")
    if (
        not isinstance(local, list)
        or len(local) != 2
        or not isinstance(local[0], str)
        or not isinstance(local[1], int)
        or not 0 <= local[1] <= 65535
    ):
        raise ValueError("bad local address")
    chain = d.get("chain") or []
    if not isinstance(chain, list):
        raise ValueError("bad chain")
    proc = d.get("process")
    attr = Attribution(
        process=process_from_dict(proc) if proc is not None else None,
        chain=tuple(process_from_dict(c) for c in chain),
        server=_opt_str(d.get("server")),
        host=_opt_str(d.get("host")),
        phase=_opt_str(d.get("phase")),
        reason=_opt_str(d.get("reason")),
    )
    return (proto, norm_ip(local[0]), local[1]), float(ts), attr


class RecordedAttributor:
    """Replays a --record-procs file. Bad lines are skipped and counted in
    ``skipped``; a file with no usable line raises ProcsFileError."""

    def __init__(self, path: Path, tolerance: float = 0.001, max_age: float = 600.0) -> None:
        self.tolerance = tolerance
        self.max_age = max_age
        self.skipped: Counter[str] = Counter()
        self._index: dict[Key, tuple[list[float], list[Attribution]]] = {}
        first_bad: tuple[int, str] | None = None
        good = 0
        try:
            f = open(path, "rb")  # noqa: SIM115
        except OSError as exc:
            raise ProcsFileError(f"{path}: cannot read: {exc.strerror}") from None
        with f:
            lineno = 0
            while raw := f.readline(MAX_LINE + 1):
                lineno += 1
                if len(raw) > MAX_LINE and not raw.endswith(b"\n"):
                    while (rest := f.readline(MAX_LINE)) and not rest.endswith(b"\n"):
                        pass
                    self.skipped["line_too_long"] += 1
                    if first_bad is None:
                        first_bad = (lineno, "line too long")
                    continue
                if not raw.strip():
                    continue
                try:
                    key, ts, attr = parse_record(json.loads(raw.decode("utf-8")))
                except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
                    self.skipped["bad_line"] += 1
                    if first_bad is None:
                        first_bad = (
                            lineno,
                            str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__,
                        )
                    continue
                tss, attrs = self._index.setdefault(key, ([], []))
                i = bisect.bisect_right(tss, ts)
                tss.insert(i, ts)
                attrs.insert(i, attr)
                good += 1
        if good == 0 and first_bad is not None:
            raise ProcsFileError(f"{path}:{first_bad[0]}: not a procs record: {first_bad[1]}")
        self.records = good

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        ip, port = obs.local()
        entry = self._index.get((obs.proto, norm_ip(ip), port))
        if entry is None:
            return Attribution(reason="not in recorded processes")
        tss, attrs = entry
        i = bisect.bisect_right(tss, obs.ts + self.tolerance) - 1
        if i < 0 or obs.ts - tss[i] > self.max_age:
            return Attribution(reason="not in recorded processes")
        return attrs[i]
