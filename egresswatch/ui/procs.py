"""The process trees running now from each MCP server, for the servers page.

The daemon's status file holds counters only, and its lineage lives in the
daemon's memory, so the view builds its own snapshot the way `egresswatch
servers` does: discover the MCP host configs it can read, walk /proc once
through :class:`egresswatch.attribute.lineage.LineageTracker` and keep the trees. A
background thread repeats that every ``interval`` seconds; pages read the last
snapshot and never wait for /proc.

Without root: host configs are read from the current user's home (and the
``homes`` given), and /proc shows other users' processes with their command
lines (pid, name, cmdline are world-readable unless /proc is mounted with
``hidepid``); the executable path of another user's process is not, which
the tree does not need.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from egresswatch.attribute.lineage import LineageTracker
from egresswatch.attribute.listings import host_project_dirs
from egresswatch.attribute.trees import ServerTree
from egresswatch.config import DEFAULT_LAUNCHER_PATTERNS
from egresswatch.mcp.discovery import discover

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Snapshot:
    taken: float | None = None  # wall time of the walk; None: not yet
    trees: dict[str, list[ServerTree]] = field(default_factory=dict)  # server name -> trees
    error: str | None = None


def snapshot(homes: Sequence[Path] | None = None) -> Snapshot:
    """One walk: discovered servers, then every live process matched to them."""
    projects = host_project_dirs()
    d = discover(homes, (), projects)
    tracker = LineageTracker(d.servers, DEFAULT_LAUNCHER_PATTERNS)
    tracker.seed()
    trees: dict[str, list[ServerTree]] = {}
    for tree in tracker.trees():
        trees.setdefault(tree.server, []).append(tree)
    for lst in trees.values():
        lst.sort(key=lambda t: (t.host or "", t.root.process.pid))
    return Snapshot(time.time(), trees)


class ProcessWatcher:
    """Keeps :func:`snapshot` fresh in a daemon thread."""

    def __init__(self, homes: Sequence[Path] | None = None, interval: float = 10.0) -> None:
        self.homes = homes
        self.interval = interval
        self.current = Snapshot()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="ui-processes", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def refresh(self) -> Snapshot:
        try:
            self.current = snapshot(self.homes)
        except Exception as exc:  # a /proc race or an unreadable config must not stop the view
            log.warning("cannot read the process trees: %s", exc)
            self.current = Snapshot(time.time(), self.current.trees, f"{type(exc).__name__}: {exc}")
        return self.current

    def _run(self) -> None:
        while not self._stop.is_set():
            self.refresh()
            self._stop.wait(self.interval)
