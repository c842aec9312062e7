"""Hostile names through every output (#10), live: a server run by a real
unprivileged account, named in its own ~/.cursor/mcp.json with ESC, CR/LF,
BEL and U+202E (and an unknown key of the same, which the daemon logs), sets
runs from an executable so named (its comm), carries them in its argv, and sends DNS queries whose
label holds ESC, CR, LF, BEL, NUL and U+202E bytes. The whole daemon captures,
judges (flagged: no allowlist), stores, exports JSON lines, logs and alerts
(json:// receiver); the desktop notifier (`egresswatch notifier`, a private
session bus, tests/helpers/notify_sink.py) shows the alerts; `egresswatch
events` prints the events as table, csv, json and jsonl, `servers` the server
and its live process, `stats` the server's destinations. No output carries
one of those characters raw, none has a line a name started, and each shows
the names escaped (or, in JSON, encoded losslessly)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.accounts import account
from tests.helpers.hostiled import DATA, PY, REPO, Daemon, shared_dir, tmp700, wait_rows
from tests.helpers.netlab import Lab, missing, wait_for
from tests.test_notifier import wait_opened

pytestmark = pytest.mark.live
SERVER = "ev\x1b[31m\r\nINFO forged\x07\u202etxt"
KEY = "k\x1b]0;pwned\x07\r\nINFO forged\u202e"
COMM = "ev\x1b[2J\x07\r\n\u202e"
ARGV = ["--\x1b[2J\x07", "x\u202eevil\r\nINFO forged"]
RAW = ("\x1b", "\r", "\x07", "\x00", "\u202e")
FORGED = ("INFO forged", "FORGED", "forged")


@pytest.fixture
def session_bus(tmp_path: Path) -> Iterator[tuple[dict[str, str], Path]]:
    """A private session bus whose notification server writes each Notify call
    to a file (tests/helpers/notify_sink.py)."""
    if shutil.which("dbus-daemon") is None:
        missing("dbus-daemon (the dbus package)")
    pytest.importorskip("dbus", reason="dbus-python (pip install egresswatch[desktop])")
    bus = subprocess.Popen(["dbus-daemon", "--session", "--nofork", "--print-address=1"],
                           stdout=subprocess.PIPE, text=True)  # fmt: skip
    sink = None
    try:
        assert bus.stdout is not None
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": bus.stdout.readline().strip()}
        notes = tmp_path / "notes.jsonl"
        sink = subprocess.Popen([sys.executable, str(REPO / "tests/helpers/notify_sink.py"), str(notes)],
                                env=env, stdout=subprocess.PIPE, text=True)  # fmt: skip
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        yield env, notes
    finally:
        for p in (sink, bus):
            if p is not None:
                p.terminate()
                p.wait(timeout=10)


def clean(what: str, text: str) -> None:
    """No hostile character raw, no line a name started."""
    raw = [c for c in RAW if c in text]
    assert not raw, f"{what}: raw {raw!r} in {text[:600]!r}"
    forged = [line for line in text.splitlines() if line.lstrip().startswith(FORGED)]
    assert not forged, f"{what}: forged lines {forged[:3]!r}"


def clean_body(what: str, text: str) -> None:
    """A multi-line alert body: its own line breaks (LF, or CR LF as apprise's
    dbus plugin sends them), each line clean."""
    for line in text.splitlines():
        clean(what, line)


def strings(obj: Any) -> list[str]:
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return []


def cli(*args: str) -> str:
    out = subprocess.run([sys.executable, "-m", "egresswatch", *args], capture_output=True, text=True,
                         cwd=REPO, timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.returncode == 0, (args, out.stderr)
    clean(f"stderr of {args[0]}", out.stderr)  # `servers` warns about the unknown key
    return out.stdout


def test_hostile_names_are_escaped_in_every_output(
    lab: Lab, tmp_path: Path, session_bus: tuple[dict[str, str], Path]
) -> None:
    env, notes = session_bus
    with shared_dir() as shared, account("ewesc") as user:
        script = shared / "hostile_names.py"
        shutil.copy(DATA / "hostile_names.py", script)
        script.chmod(0o644)
        go = shared / "go"
        mcp = user.home / ".cursor" / "mcp.json"
        mcp.parent.mkdir()
        exe = user.home / COMM  # the interpreter under a hostile name: the comm the kernel sets at exec
        exe.symlink_to(PY)
        mcp.write_text(json.dumps({"mcpServers": {SERVER: {
            "command": str(exe), "args": [str(script), lab.peer4, str(go), *ARGV], KEY: 1}}}))  # fmt: skip
        for p in (mcp.parent, mcp, exe):
            os.lchown(p, user.uid, user.gid)
        tmp = tmp700(tmp_path)
        d = Daemon(tmp, lab, [user.home], {})
        notifier = subprocess.Popen([sys.executable, "-m", "egresswatch", "notifier", "--db", str(d.db),
                                     "--interval", "0.2"], env={**env, "PYTHONPATH": str(REPO)}, cwd=REPO,
                                    stderr=subprocess.PIPE, text=True)  # fmt: skip
        try:
            wait_opened(notifier.pid, d.db)
            d.launch_host(mcp, user)
            go.touch()
            rows = wait_rows(d, "q", 3)
            wait_for(lambda: d.alerts.received, 20, "an alert at the json:// receiver")
            wait_for(lambda: notes.exists() and notes.read_text().strip(), 20, "a desktop notification")
            outputs = {fmt: cli("events", "--db", str(d.db), "--since", "1h", "--format", fmt)
                       for fmt in ("table", "csv", "json", "jsonl")}  # fmt: skip
            # the server list with its live process tree, and the per-server statistics
            outputs["servers"] = cli("servers", "--home", str(user.home), "--format", "table")
            outputs["servers csv"] = cli("servers", "--home", str(user.home), "--format", "csv")
            outputs["stats"] = cli("stats", "--db", str(d.db), "--since", "1h", "--format", "table")
        finally:
            notifier.terminate()
            _, nerr = notifier.communicate(timeout=20)
            d.close()
    assert {(r["server"], r["verdict"]) for r in rows} == {(SERVER, "flagged")}, rows[:2]
    assert rows[0]["process"] == COMM  # stored as the kernel gave it
    # the text outputs: escaped
    for fmt in ("table", "csv"):
        clean(fmt, outputs[fmt])
        for shown in ("\\x1b[31m", "\\x07", "\\u202e", "q\\027[31m\\013\\010forged\\007\\000\\226\\128\\174"):
            assert shown in outputs[fmt], (fmt, shown, outputs[fmt][:800])
    for what in ("servers", "servers csv", "stats"):
        clean(what, outputs[what])
        assert "ev\\x1b[31m" in outputs[what], (what, outputs[what][:800])
    assert "\\x1b[2J" in outputs["servers"] + outputs["servers csv"], outputs["servers"]  # its process
    # JSON: encoded (\u001b), so raw-free on a terminal, and lossless when parsed
    export = d.jsonl.read_text()
    for what, text in (("json", outputs["json"]), ("jsonl", outputs["jsonl"]), ("export", export)):
        clean(what, text)
        parsed = json.loads(text) if what == "json" else [json.loads(x) for x in text.splitlines()]
        assert SERVER in {e.get("server") for e in parsed}, what
        assert any(e.get("cmdline") and ARGV[1] in e["cmdline"] for e in parsed), what
    # the daemon's log: the unknown key's warning and the server name, escaped
    log = d.log()
    clean("daemon log", log)
    assert "unknown key" in log and "\\x1b]0;pwned" in log, log[-2000:]
    # alert text: every string of every body posted to the json:// receiver
    for body in d.alerts.received:
        for s in strings(body):
            clean_body("alert body", s) if "\n" in s else clean("alert title", s)
    assert any("ev\\x1b[31m\\x0d\\x0aINFO forged\\x07\\u202etxt" in s for b in d.alerts.received
               for s in strings(b)), d.alerts.received[:2]  # fmt: skip
    # desktop notifications as the notification server received them
    shown = [json.loads(x) for x in notes.read_text().splitlines()]
    for n in shown:
        clean("notification", n["summary"])
        clean_body("notification", n["body"])
    assert any("ev\\x1b[31m" in n["summary"] + n["body"] for n in shown), shown[:2]
    assert notifier.returncode in (0, -15), nerr


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns()
        yield lab
