"""The user-session notifier: follows the alerts table read-only and shows new
alerts on a real session bus (dbus-daemon + dunst under Xvfb), escaped."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.alert.notifier import AlertFollower, DesktopAlert, DesktopGate, clean
from egresswatch.store.db import Store
from tests.helpers.netlab import missing as prerequisite_missing
from tests.helpers.netlab import wait_for

REPO = Path(__file__).resolve().parents[1]
EVIL = "exfil.\x1b[31mevil\u202etxt.example"


def add_alert(store: Store, title: str, body: str, result: str = "no_targets") -> None:
    alog = store.alert_log()
    alog.insert({"ts": time.time(), "recorded": time.time(), "kind": "alert", "server": "fake",
                 "destination": "d", "reason": "not_allowlisted", "severity": "high", "result": result,
                 "title": title, "body": body, "attempts": 1, "count": 1})  # fmt: skip
    alog.close()


def test_clean_escapes_each_line() -> None:
    assert clean("a\x1bb\nc\u202ed") == "a\\x1bb\nc\\u202ed"
    assert len(clean("x" * 10_000)) == 4000


def test_follower_starts_at_the_end_and_skips_held(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = Store(db)
    add_alert(store, "old", "history")
    follower = AlertFollower(db)
    assert follower.poll() == []  # history is not replayed
    add_alert(store, "held one", "x", result="held")
    add_alert(store, f"new {EVIL}", "line1\nline2 \x07")
    got = follower.poll()
    assert [a.title for a in got] == ["new exfil.\\x1b[31mevil\\u202etxt.example"]
    assert got[0].body == "line1\nline2 \\x07" and got[0].severity == "high"
    assert follower.poll() == []
    with pytest.raises(sqlite3.OperationalError):  # the follower's connection is read-only
        assert follower._conn is not None
        follower._conn.execute("DELETE FROM alerts")
    follower.close()
    store.close()


def test_desktop_gate_one_per_alert_then_a_summary_never_holding_the_severe() -> None:
    gate = DesktopGate()

    def alert(i: int, sev: str = "medium", server: str = "s1") -> DesktopAlert:
        return DesktopAlert(i, "alert", sev, f"t{i}", "b", server, 1)

    first = gate.admit([alert(i, server=f"s{i % 3}") for i in range(20)], now=100.0)
    assert [a.title for a in first[:5]] == ["t0", "t1", "t2", "t3", "t4"]
    assert len(first) == 6 and first[5].kind == "summary"
    assert (
        first[5].title == "egresswatch: 15 more alerts (15 events) from s0, s1, s2"
        and first[5].severity == "medium"
    )
    # busy: a medium waits for the next summary, a high one is shown at once
    assert gate.admit([alert(30), alert(31, "high")], now=101.0) == [alert(31, "high")]
    assert gate.admit([], now=105.0) == []
    later = gate.admit([], now=111.0)
    assert [a.kind for a in later] == ["summary"] and "t30" in later[0].body
    assert [a.title for a in gate.admit([alert(40)], now=200.0)] == ["t40"]  # tokens refilled


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        prerequisite_missing(f"desktop test tools missing: {missing}")


def _holds_open(pid: int, path: Path) -> bool:
    """True if process ``pid`` has ``path`` open; fds opened and closed while we look are skipped."""
    target = str(path.resolve())
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == target:
                return True
        except FileNotFoundError:  # the fd closed between listdir and readlink
            continue
    return False


def wait_opened(pid: int, path: Path, timeout: float = 20) -> None:
    """Wait until process ``pid`` holds ``path`` open (the notifier's starting point)."""
    wait_for(lambda: _holds_open(pid, path), timeout, f"pid {pid} opened {path.name}")


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A private session bus with dunst (under Xvfb) owning org.freedesktop.Notifications."""
    _need("dbus-daemon", "dbus-monitor", "dunst", "Xvfb")
    procs: list[subprocess.Popen[str]] = []
    try:
        bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
        procs.append(bus)
        assert bus.stdout is not None
        addr = bus.stdout.readline().strip()
        display = f":{90 + os.getpid() % 100}"
        procs.append(subprocess.Popen(["Xvfb", display, "-nolisten", "tcp"], stderr=subprocess.DEVNULL))
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": addr, "DISPLAY": display}
        home = tmp_path / "home"
        home.mkdir()
        env["HOME"] = str(home)

        def owned() -> bool:
            if procs[-1].poll() is not None and procs[-1].args[0] == "dunst":  # type: ignore[index]
                procs[-1] = subprocess.Popen(["dunst"], env=env, stderr=subprocess.DEVNULL)
            out = subprocess.run(["dbus-send", "--session", "--print-reply", "--dest=org.freedesktop.DBus",
                                  "/org/freedesktop/DBus", "org.freedesktop.DBus.NameHasOwner",
                                  "string:org.freedesktop.Notifications"], env=env, capture_output=True,
                                 text=True)  # fmt: skip
            return "boolean true" in out.stdout

        procs.append(subprocess.Popen(["dunst"], env=env, stderr=subprocess.DEVNULL))
        wait_for(owned, 15, "dunst on the session bus")
        yield env
    finally:
        for p in reversed(procs):
            p.terminate()
        for p in procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                p.kill()


@pytest.mark.live
def test_notification_arrives_escaped(tmp_path: Path, session_bus: dict[str, str]) -> None:
    pytest.importorskip("dbus", reason="dbus-python (pip install egresswatch[desktop])")
    db = tmp_path / "events.db"
    store = Store(db)
    monitor = subprocess.Popen(["dbus-monitor", "--session", "interface='org.freedesktop.Notifications'"],
                               env=session_bus, stdout=subprocess.PIPE, text=True)  # fmt: skip
    notifier = subprocess.Popen([sys.executable, "-m", "egresswatch", "notifier", "--db", str(db),
                                 "--interval", "0.2"], env=session_bus, cwd=REPO,
                                stderr=subprocess.PIPE, text=True)  # fmt: skip
    try:
        # history is skipped: wait until the notifier has opened the database (its starting point)
        wait_opened(notifier.pid, db)
        add_alert(store, f"egresswatch: MCP server fake contacted {EVIL}", "Reason: not_allowlisted\nline2")
        assert monitor.stdout is not None
        seen: list[str] = []

        def arrived() -> bool:
            line = monitor.stdout.readline()  # type: ignore[union-attr]
            seen.append(line)
            return "contacted exfil." in line

        wait_for(arrived, 20, "the Notify call on the session bus")
        text = "".join(seen)
        assert "\\x1b[31mevil\\u202etxt.example" in text
        assert "\x1b" not in text and "\u202e" not in text
    finally:
        notifier.terminate()
        monitor.terminate()
        _, err = notifier.communicate(timeout=10)
        monitor.wait(timeout=5)
        store.close()
    assert notifier.returncode in (0, -15), err
