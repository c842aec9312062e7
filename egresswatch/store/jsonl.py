"""Events as JSON lines, for Vector / Fluent Bit / Promtail to tail and ship.

One ``Event.to_dict()`` object per line (keys in the model's order, non-ASCII
and control characters escaped), line-buffered, file mode 0640. The file is
reopened when it is rotated away (inode change, checked at most once a
second) or when :meth:`JsonlSink.reopen` is requested (call it from a SIGHUP
handler: it only sets a flag).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections import Counter
from pathlib import Path
from typing import TextIO

from egresswatch.errors import PermissionProblem, StoreError
from egresswatch.model import Event
from egresswatch.safefiles import open_append

log = logging.getLogger(__name__)


class JsonlSink:
    def __init__(self, path: Path | str, *, mode: int = 0o640, check_interval: float = 1.0) -> None:
        self.path = Path(path)
        self.mode = mode
        self.check_interval = check_interval
        self.counters: Counter[str] = Counter()
        self._fh: TextIO | None = None
        self._ino: tuple[int, int] | None = None
        self._next_check = 0.0
        self._reopen = False
        try:
            self._open()
        except OSError as exc:
            raise StoreError(f"{self.path}: cannot open for appending: {exc.strerror}") from None
        except PermissionProblem as exc:
            raise StoreError(str(exc)) from None

    def _open(self) -> None:
        fd = open_append(self.path, self.mode)  # no symlink, a regular file of ours
        st = os.fstat(fd)
        self._fh = os.fdopen(fd, "w", buffering=1, encoding="utf-8", newline="\n")
        self._ino = (st.st_dev, st.st_ino)

    def reopen(self) -> None:
        """Ask for the file to be reopened before the next line (signal-safe)."""
        self._reopen = True

    def handle_sighup(self, signum: int, frame: object) -> None:
        self.reopen()

    def _rotated(self) -> bool:
        now = time.monotonic()
        if now < self._next_check:
            return False
        self._next_check = now + self.check_interval
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (st.st_dev, st.st_ino) != self._ino

    def write(self, event: Event) -> None:
        try:
            if self._reopen or self._fh is None or self._rotated():
                self._reopen = False
                self._close_fh()
                self._open()
            assert self._fh is not None
            self._fh.write(json.dumps(event.to_dict(), separators=(",", ":")) + "\n")
            self.counters["lines"] += 1
        except (OSError, PermissionProblem) as exc:
            self.counters["write_errors"] += 1
            if self.counters["write_errors"] == 1:
                log.error("cannot write %s: %s", self.path, exc)
            self._close_fh()

    def _close_fh(self) -> None:
        if self._fh is not None:
            try:
                self._fh.close()
            except OSError:
                pass
            self._fh = None

    def close(self) -> None:
        self._close_fh()
