"""Run mutated captures through `egresswatch replay` and judge the outcome.

In process: the click command itself through ``CliRunner`` (the very code the
``egresswatch`` script runs, minus interpreter start-up), with a 10 s alarm on
CPU time (wall time means nothing on a busy machine or under ``nice``).
As a subprocess: ``python -m egresswatch replay FILE``, for the CLI's own error
path (exit status, one line on stderr, no traceback) and its peak RSS.

A mutant fails when: anything but exit 0/1; an exception other than the
SystemExit(1) of a reported error (a traceback); exit 1 without exactly one
``egresswatch: error: FILE: ...`` line on stderr; more than ``limit`` CPU seconds.
"""

from __future__ import annotations

import gc
import logging
import os
import resource
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from egresswatch.cli.main import cli

LIMIT = 10.0  # CPU seconds per replay
WALL_BACKSTOP = 120.0  # a subprocess still running after this is killed and counted


class Overtime(Exception):
    pass


@dataclass
class Outcome:
    exit_code: int
    seconds: float
    stderr: str
    problem: str | None = None  # why this run counts as a failure
    rss_mb: float = 0.0


@dataclass
class Tally:
    runs: int = 0
    exit0: int = 0
    exit1: int = 0
    failures: list[tuple[str, str]] = field(default_factory=list)
    slowest: float = 0.0
    slowest_name: str = ""
    peak_child_rss_mb: float = 0.0

    def add(self, name: str, o: Outcome) -> None:
        self.runs += 1
        self.exit0 += o.exit_code == 0
        self.exit1 += o.exit_code == 1
        if o.seconds > self.slowest:
            self.slowest, self.slowest_name = o.seconds, name
        self.peak_child_rss_mb = max(self.peak_child_rss_mb, o.rss_mb)
        if o.problem:
            self.failures.append((name, o.problem))

    def as_dict(self) -> dict[str, Any]:
        return {
            "runs": self.runs,
            "exit0": self.exit0,
            "exit1": self.exit1,
            "failures": len(self.failures),
            "first_failures": self.failures[:10],
            "slowest_s": round(self.slowest, 3),
            "slowest": self.slowest_name,
            "peak_child_rss_mb": round(self.peak_child_rss_mb, 1),
        }


def _judge(path: Path, code: int, stderr: str, seconds: float, limit: float) -> str | None:
    if seconds > limit:
        return f"took {seconds:.1f} s"
    if "Traceback" in stderr:
        return "traceback: " + stderr.strip().splitlines()[-1][:300]
    if code not in (0, 1):
        return f"exit status {code}: {stderr.strip()[-300:]}"
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    if code == 1:
        if len(lines) != 1 or not lines[0].startswith(f"egresswatch: error: {path}: "):
            return f"exit 1 without a one-line error naming the file: {stderr[-300:]!r}"
    elif lines:
        return f"exit 0 with stderr: {stderr[-300:]!r}"
    return None


def _alarm(_sig: int, _frame: object) -> None:
    raise Overtime()


class _Records(logging.Handler):
    """Log records with a traceback (``log.exception``), which in one process
    may not reach the stderr CliRunner captures (logging is configured once)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.tracebacks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.exc_info:
            self.tracebacks.append(f"logged traceback: {record.getMessage()}: {record.exc_info[1]!r}")


def replay_inprocess(path: Path, limit: float = LIMIT, extra: tuple[str, ...] = ()) -> Outcome:
    runner = CliRunner()
    records = _Records()
    logging.getLogger().addHandler(records)
    # CPU time, not wall time: on a busy machine (or under nice) a run can wait
    # for the CPU far longer than it computes
    old = signal.signal(signal.SIGPROF, _alarm)
    signal.setitimer(signal.ITIMER_PROF, limit + 1)
    t = time.process_time()
    try:
        res = runner.invoke(cli, ["replay", *extra, str(path)], catch_exceptions=True)
    except Overtime:
        return Outcome(-1, time.process_time() - t, "", f"over {limit + 1:.0f} CPU s (interrupted)")
    finally:
        signal.setitimer(signal.ITIMER_PROF, 0)
        signal.signal(signal.SIGPROF, old)
        logging.getLogger().removeHandler(records)
    seconds = time.process_time() - t
    # replay freezes the heap (gc.freeze: a one-shot process never collects what is
    # alive at start); in one process running thousands of replays, what each run
    # left frozen would pile up, so thaw and collect between runs
    gc.unfreeze()
    gc.collect()
    stderr = res.stderr
    exc = res.exception
    if exc is not None and not isinstance(exc, SystemExit):
        tb = "".join(traceback.format_exception(exc)) if isinstance(exc, BaseException) else repr(exc)
        return Outcome(res.exit_code, seconds, stderr, "traceback: " + tb.strip().splitlines()[-1][:300])
    if records.tracebacks:
        return Outcome(res.exit_code, seconds, stderr, records.tracebacks[0][:300])
    return Outcome(res.exit_code, seconds, stderr, _judge(path, res.exit_code, stderr, seconds, limit))


def replay_subprocess(path: Path, limit: float = LIMIT, extra: tuple[str, ...] = ()) -> Outcome:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    p = subprocess.Popen(
        [sys.executable, "-m", "egresswatch", "replay", *extra, str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:  # a wall-clock backstop only: the limit is judged on the child's CPU time
        _, stderr = p.communicate(timeout=WALL_BACKSTOP)
    except subprocess.TimeoutExpired:
        p.kill()
        p.communicate()
        return Outcome(-9, WALL_BACKSTOP, "", f"over {WALL_BACKSTOP:.0f} s wall (killed)")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    seconds = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    rss = _child_peak_mb()
    return Outcome(p.returncode, seconds, stderr, _judge(path, p.returncode, stderr, seconds, limit), rss)


def _child_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest child so far
