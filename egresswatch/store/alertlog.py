"""Alert rows: the alert worker's own connection to the ``alerts`` table.

One :class:`AlertLog` per thread (the daemon's alert worker); it follows the
database to a new file when the :class:`~egresswatch.store.db.Store` reopened
one at the path (deleted or replaced database).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import stat
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from egresswatch.store.schema import ALERT_FIELDS

log = logging.getLogger(__name__)


class AlertLog:
    """Alert rows, through a connection of its own (one per thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.conn = self._connect()

    def _connect(self) -> sqlite3.Connection:
        conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=5.0)
        conn.execute("PRAGMA busy_timeout=5000")
        conn.execute("PRAGMA synchronous=NORMAL")
        st = os.stat(self.path)
        self._identity = (st.st_dev, st.st_ino)
        return conn

    def _follow(self) -> None:
        """Reconnect when the daemon's Store has opened a new file at the path
        (deleted or replaced database); never to a symlink or a missing file."""
        try:
            st = os.lstat(self.path)
        except OSError:
            return
        if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) == self._identity:
            return
        try:
            conn = self._connect()
            conn.execute("SELECT 1 FROM alerts LIMIT 1")
        except (sqlite3.Error, OSError):
            return  # not ready yet: the Store creates the table; try at the next alert
        self.conn.close()
        self.conn = conn

    def insert(self, row: dict[str, Any]) -> int | None:
        self._follow()
        cols = [f for f in ALERT_FIELDS if f in row]
        sql = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        try:
            return self.conn.execute(sql, [_alert_value(row[c]) for c in cols]).lastrowid
        except sqlite3.Error as exc:
            log.error("cannot record alert in %s: %s", self.path, exc)
            return None

    def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        """Several rows in one transaction (held-back and dropped alerts)."""
        self._follow()
        try:
            self.conn.execute("BEGIN")
            for row in rows:
                cols = [f for f in ALERT_FIELDS if f in row]
                sql = f"INSERT INTO alerts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                self.conn.execute(sql, [_alert_value(row[c]) for c in cols])
            self.conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if self.conn.in_transaction:
                self.conn.rollback()
            log.error("cannot record %d alerts in %s: %s", len(rows), self.path, exc)

    def update(self, row_id: int, **fields: Any) -> None:
        self._follow()
        cols = [f for f in ALERT_FIELDS if f in fields]
        sql = f"UPDATE alerts SET {', '.join(c + ' = ?' for c in cols)} WHERE id = ?"
        try:
            self.conn.execute(sql, [*(_alert_value(fields[c]) for c in cols), row_id])
        except sqlite3.Error as exc:
            log.error("cannot update alert in %s: %s", self.path, exc)

    def close(self) -> None:
        self.conn.close()


def _alert_value(v: Any) -> Any:
    if isinstance(v, list | tuple):
        return json.dumps(list(v))
    return v
