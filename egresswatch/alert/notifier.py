"""User-session desktop notifier: ``egresswatch notifier``.

A root daemon cannot reach a user's desktop (the session bus belongs to the
user and is not even visible in the daemon's mount namespace), so desktop
notifications come from a small process in the user's session (a systemd user
unit or a LaunchAgent). It follows the daemon's database **read-only** (the
database is mode 0640, group ``daemon.db_group``; the user must be in that
group) and shows every new row of the ``alerts`` table — the same de-duplicated
alerts and digests the daemon sends to apprise targets, including when no
target is configured — through apprise's ``dbus://`` scheme (or any other
apprise URL given with ``--url``, e.g. ``macosx://`` on macOS).

It starts at the newest alert, so a restart does not replay history. The
rows are already one per alert key or digest (docs/alerts.md); the notifier
follows the same rules for the desktop, across servers: a token bucket
(``DESKTOP_BURST`` at once, ``DESKTOP_PER_MINUTE``) passes one notification
per row, most severe first; a row more severe than any shown in the last
minute always passes; the rest become one summary notification (at most one
per ``SUMMARY_SECONDS``) naming how many, which servers and the highest
severity. Titles and bodies are escaped again with :func:`egresswatch.textsafe.safe`, line by
line, before they reach the notification server.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from egresswatch.errors import StoreError
from egresswatch.textsafe import safe

log = logging.getLogger(__name__)

DEFAULT_URL = "dbus://?image=no"
SHOWN_RESULTS = ("sent", "failed", "no_targets")  # not 'held' or 'dropped'
MAX_BODY = 4000
SEVERITIES = ("info", "low", "medium", "high")
DESKTOP_BURST = 5
DESKTOP_PER_MINUTE = 5.0
SUMMARY_SECONDS = 10.0


@dataclass(frozen=True, slots=True)
class DesktopAlert:
    id: int
    kind: str
    severity: str
    title: str
    body: str
    server: str = "-"
    count: int = 1


def clean(text: str | None, limit: int = MAX_BODY) -> str:
    lines = (safe(line) for line in (text or "").splitlines())
    out = "\n".join(lines)
    return out if len(out) <= limit else out[: limit - 3] + "..."


class AlertFollower:
    """Reads new alert rows from the daemon's database without writing to it."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self._conn: sqlite3.Connection | None = None
        self.last_id: int | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._conn is None:
            uri = f"file:{quote(str(self.db.absolute()))}?mode=ro"
            try:
                conn = sqlite3.connect(uri, uri=True, timeout=5, check_same_thread=False)
                conn.execute("PRAGMA query_only=1")
                conn.execute("SELECT 1 FROM alerts LIMIT 1")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.db}: cannot read alerts: {exc}") from None
            self._conn = conn
        return self._conn

    def start_at_end(self) -> None:
        row = self._connect().execute("SELECT COALESCE(MAX(id), 0) FROM alerts").fetchone()
        self.last_id = int(row[0])

    def poll(self) -> list[DesktopAlert]:
        conn = self._connect()
        if self.last_id is None:
            self.start_at_end()
        marks = ",".join("?" * len(SHOWN_RESULTS))
        try:
            rows = conn.execute(
                "SELECT id, kind, severity, title, body, server, count FROM alerts"
                f" WHERE id > ? AND result IN ({marks})"
                " ORDER BY id LIMIT 100",
                (self.last_id, *SHOWN_RESULTS),
            ).fetchall()
            top = conn.execute("SELECT COALESCE(MAX(id), 0) FROM alerts").fetchone()[0]
        except sqlite3.Error as exc:
            log.warning("reading alerts failed: %s", exc)
            self.close()
            return []
        out = [
            DesktopAlert(int(r[0]), str(r[1]), str(r[2] or ""), clean(r[3], 300), clean(r[4]),
                         clean(r[5] or "-", 100), int(r[6] or 1))
            for r in rows
        ]  # fmt: skip
        if out:
            self.last_id = out[-1].id
        elif top > (self.last_id or 0):
            self.last_id = int(top)  # only held/dropped rows in between
        return out

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _rank(sev: str) -> int:
    return SEVERITIES.index(sev) if sev in SEVERITIES else len(SEVERITIES) - 1


@dataclass
class DesktopGate:
    """Which alerts are shown one by one, and the summary of the others.
    ``now`` is the caller's clock (seconds)."""

    burst: int = DESKTOP_BURST
    per_minute: float = DESKTOP_PER_MINUTE
    summary_seconds: float = SUMMARY_SECONDS
    tokens: float = float(DESKTOP_BURST)
    refilled: float | None = None
    shown: list[tuple[float, int]] = field(default_factory=list)  # (time, severity rank) of the last minute
    held: list[DesktopAlert] = field(default_factory=list)
    last_summary: float = -1e18

    def admit(self, alerts: list[DesktopAlert], now: float) -> list[DesktopAlert]:
        """The notifications to show now: single alerts, then at most one summary."""
        if self.refilled is not None:
            self.tokens = min(float(self.burst), self.tokens + (now - self.refilled) * self.per_minute / 60)
        self.refilled = now
        self.shown = [(t, r) for t, r in self.shown if t > now - 60]
        out: list[DesktopAlert] = []
        for alert in sorted(alerts, key=lambda a: (-_rank(a.severity), a.id)):
            rank = _rank(alert.severity)
            if rank > max((r for _, r in self.shown), default=-1) or self.tokens >= 1 and not self.held:
                self.tokens = max(0.0, self.tokens - 1)
                self.shown.append((now, rank))
                out.append(alert)
            else:
                self.held.append(alert)
        if self.held and now - self.last_summary >= self.summary_seconds:
            out.append(self._summary())
            self.last_summary = now
        return out

    def _summary(self) -> DesktopAlert:
        held, self.held = self.held, []
        top = max((a.severity for a in held), key=_rank)
        events = sum(a.count for a in held)
        servers = sorted({a.server for a in held})
        title = f"egresswatch: {len(held)} more alerts ({events} events) from {', '.join(servers[:3])}" + (
            " ..." if len(servers) > 3 else ""
        )
        body = "\n".join(clean(a.title, 300) for a in held[:10])
        if len(held) > 10:
            body += f"\n... and {len(held) - 10} more (egresswatch events --verdict flagged)"
        return DesktopAlert(held[-1].id, "summary", top, clean(title, 300), body)


def apprise_sender(url: str) -> Callable[[DesktopAlert], bool]:
    from egresswatch.alert.channels import apprise_sender as sender_for

    send_one = sender_for(url)
    if send_one is None:
        raise StoreError(f"notifier: {url!r} is not a usable apprise URL on this system")

    def send(alert: DesktopAlert) -> bool:
        return send_one(alert.title, alert.body, alert.severity)

    return send


def follow(
    db: Path,
    send: Callable[[DesktopAlert], bool],
    interval: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> int:
    """Show new alerts until ``should_stop()``; returns how many were shown."""
    follower = AlertFollower(db)
    gate = DesktopGate()
    shown = 0
    problem: str | None = None  # warned once per problem, not once per poll
    while not should_stop():
        try:
            alerts = follower.poll()
        except StoreError as exc:  # database not there yet or not readable
            if str(exc) != problem:
                log.warning("%s (retrying every %gs)", exc, interval)
            problem = str(exc)
            alerts = []
        else:
            if problem is not None:
                log.warning("%s: readable now", db)
                problem = None
        for alert in gate.admit(alerts, time.monotonic()):
            try:
                ok = send(alert)
            except Exception:
                log.exception("desktop notification failed")
                ok = False
            if ok:
                shown += 1
            else:
                log.warning("desktop notification %d was not delivered", alert.id)
        time.sleep(interval)
    follower.close()
    return shown
