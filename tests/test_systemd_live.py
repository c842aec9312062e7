"""The installed units under a real systemd as PID 1: a Debian container
booted with systemd-nspawn (tests/helpers/nspawn.py), egresswatch from this
checkout, `egresswatch install-service`, then systemctl. Checks: READY=1
through Type=notify, the watchdog keeps it alive (and kills a hung daemon),
`systemctl reload` re-reads the config, another account's queries are
attributed (ProtectProc=invisible), the database gets daemon.db_group, the user
notifier unit delivers a desktop notification on the user's session bus,
`systemctl stop` stores everything, and `systemd-analyze security` stays at or
below 3.1. Fails (never skips) in CI when debootstrap or systemd-nspawn is missing."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.netlab import wait_for
from tests.helpers.nspawn import Container, host_binds, rootfs, settle

REPO = Path(__file__).resolve().parents[1]
UNIT = "egresswatch.service"
USER = "ewdesk"
DB = "/var/lib/egresswatch/events.db"
STATUS = "/run/egresswatch/status.json"
SERVER = """\
import socket, struct, sys, time
time.sleep(1.5)  # the daemon's lineage (polling in a container) sees the server first
for name in sys.argv[1:]:
    q = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\\0" + struct.pack("!HH", 1, 1)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(q, ("127.0.0.1", 53))
    time.sleep(1.0)
    s.close()
"""
CONFIG = '[daemon]\ndb_group = "adm"\n\n[servers.lab-srv]\nallow = [{allow}]\n'


class Box:
    """The booted container with egresswatch installed as the docs say."""

    def __init__(self, ct: Container) -> None:
        self.ct = ct
        self.py = str(Path(__import__("sys").prefix) / "bin" / "python3")
        self.uid = ""
        self.install_output = ""

    def show(self, *props: str) -> dict[str, str]:
        out = self.ct.run("systemctl", "show", UNIT, *(f"--property={p}" for p in props)).stdout
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def sql(self, query: str) -> list[list[object]]:
        code = (
            f"import json, sqlite3; print(json.dumps(sqlite3.connect({DB!r}).execute({query!r}).fetchall()))"
        )
        return json.loads(self.ct.run(self.py, "-c", code).stdout)  # type: ignore[no-any-return]

    def status(self) -> dict[str, object]:
        res = self.ct.run("cat", STATUS, check=False)
        return json.loads(res.stdout) if res.returncode == 0 else {}

    def server(self, *names: str) -> None:
        """The MCP server (defined in the user's ~/.cursor/mcp.json) queries ``names``, run as the user."""
        self.ct.run("/usr/bin/python3", "/opt/lab/fake_mcp_server.py", *names, user=USER, timeout=60)

    def session(self, *argv: str, check: bool = True) -> str:
        env = [
            f"XDG_RUNTIME_DIR=/run/user/{self.uid}",
            f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{self.uid}/bus",
        ]
        return self.ct.run("env", *env, *argv, user=USER, check=check).stdout

    def started(self) -> None:
        if self.show("ActiveState")["ActiveState"] != "active":
            self.ct.run("systemctl", "start", UNIT, timeout=90)


@pytest.fixture(scope="module")
def box(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Box]:
    root = rootfs()
    log = tmp_path_factory.mktemp("nspawn") / "console.log"
    ct = Container(root, host_binds(REPO), log)
    try:
        b = Box(ct)
        ct.run(
            "chmod", "711", "/root"
        )  # a checkout or interpreter under /root: users run the notifier from it
        ct.run("useradd", "-m", "-G", "adm", USER)  # a desktop user in daemon.db_group
        b.uid = ct.run("id", "-u", USER).stdout.strip()
        ct.write("/opt/lab/fake_mcp_server.py", SERVER)
        ct.write(f"/home/{USER}/.cursor/mcp.json", json.dumps(
            {"mcpServers": {"lab-srv": {"command": "/usr/bin/python3", "args": ["/opt/lab/fake_mcp_server.py"]}}}))  # fmt: skip
        ct.run("chown", "-R", f"{USER}:{USER}", f"/home/{USER}/.cursor")
        ct.write("/etc/egresswatch/config.toml", CONFIG.format(allow='"ok.example"'))
        res = ct.run(b.py, "-m", "egresswatch", "install-service")
        b.install_output = res.stdout + res.stderr
        _tmp_dropins(b)
        ct.run("systemctl", "daemon-reload")
        yield b
    finally:
        ct.stop()


def _tmp_dropins(b: Box) -> None:
    """A checkout under /tmp is hidden by the units' PrivateTmp=yes: install-service
    warns (checked here), and the test makes it visible with the drop-in it names."""
    hidden = [p for p in host_binds(REPO) if re.match(r"^/(var/)?tmp(/|$)", str(p.resolve()))]
    if not hidden:
        return
    assert "PrivateTmp=yes hides it" in b.install_output, b.install_output
    conf = "[Service]\n" + "".join(f"BindReadOnlyPaths={p.resolve()}\n" for p in hidden)
    b.ct.write("/etc/systemd/system/egresswatch.service.d/checkout-in-tmp.conf", conf)
    b.ct.write("/etc/systemd/user/egresswatch-notifier.service.d/checkout-in-tmp.conf", conf)


def test_ready_through_type_notify_and_db_group(box: Box) -> None:
    unit = box.ct.run("cat", f"/etc/systemd/system/{UNIT}").stdout
    assert "Type=notify" in unit and "egresswatch" in re.search(r"^ExecStart=(.*)$", unit, re.M)[1]  # type: ignore[index]
    box.ct.run("rm", "-rf", "/var/lib/egresswatch")
    box.ct.run("systemctl", "start", UNIT, timeout=90)  # returns once the daemon sent READY=1
    props = box.show("ActiveState", "SubState", "StatusText", "Type", "MainPID", "Result")
    assert (props["ActiveState"], props["SubState"], props["Type"]) == ("active", "running", "notify"), (
        props, box.ct.journal(UNIT))  # fmt: skip
    assert props["StatusText"].startswith("capturing"), props  # STATUS= from sd_notify reached systemd
    stat = box.ct.run("stat", "-c", "%U %G %a", DB, "/var/lib/egresswatch").stdout.split("\n")
    assert stat[0] == "root adm 640" and stat[1] == "root root 755", stat
    wait_for(lambda: box.status().get("state") == "running", 10, "the status file")


def test_watchdog_keeps_it_alive_and_kills_a_hung_daemon(box: Box) -> None:
    box.started()
    first = int(box.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
    assert box.show("WatchdogUSec")["WatchdogUSec"] == "30s"
    wait_for(lambda: int(box.show("WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"]) > first, 5,
             "a WATCHDOG=1 ping")  # fmt: skip
    # a 3 s watchdog to see it act within the test (the shipped unit says 30 s)
    box.ct.write("/run/systemd/system/egresswatch.service.d/watchdog.conf", "[Service]\nWatchdogSec=3\n")
    try:
        box.ct.run("systemctl", "daemon-reload")
        box.ct.run("systemctl", "restart", UNIT, timeout=90)
        pid = box.show("MainPID")["MainPID"]
        restarts = int(box.show("NRestarts")["NRestarts"])
        settle(8)  # over two watchdog periods: the pings must keep it alive
        now = box.show("MainPID", "NRestarts", "ActiveState")
        assert (now["MainPID"], int(now["NRestarts"]), now["ActiveState"]) == (pid, restarts, "active"), now
        box.ct.run("kill", "-STOP", pid)  # hung: no pings
        wait_for(
            lambda: box.show("MainPID")["MainPID"] not in (pid, "0"), 30, "a restart after the watchdog fired"
        )
        assert "Watchdog timeout" in box.ct.journal(UNIT, 200)
        assert int(box.show("NRestarts")["NRestarts"]) == restarts + 1
    finally:
        box.ct.run("rm", "-f", "/run/systemd/system/egresswatch.service.d/watchdog.conf")
        box.ct.run("systemctl", "daemon-reload")
        box.ct.run("systemctl", "restart", UNIT, timeout=90)


def test_reload_rereads_the_config_and_attributes_other_accounts(box: Box) -> None:
    box.started()
    box.server("ok.example", "before-reload.example")
    box.ct.write("/etc/egresswatch/config.toml", CONFIG.format(allow='"ok.example", "after-reload.example"'))
    box.ct.run("systemctl", "reload", UNIT, timeout=60)
    wait_for(lambda: box.status().get("counters", {}).get("reloads") == 1, 10, "the reload counted")  # type: ignore[union-attr]
    assert box.show("ActiveState")["ActiveState"] == "active"  # RELOADING=1 then READY=1
    box.server("after-reload.example")

    def rows() -> list[list[object]] | None:
        got = box.sql("SELECT qname, user, server, host, verdict, reason FROM events WHERE qname LIKE '%.example' "
                      "ORDER BY id")  # fmt: skip
        return got if len(got) >= 3 else None

    got = wait_for(rows, 10, "three queries stored")
    assert got == [
        ["ok.example", USER, "lab-srv", "cursor", "allowed", "allowlist"],
        ["before-reload.example", USER, "lab-srv", "cursor", "flagged", "not_allowlisted"],
        ["after-reload.example", USER, "lab-srv", "cursor", "allowed", "allowlist"],
    ], got
    assert "configuration reloaded" in box.ct.journal(UNIT, 100)


def test_user_notifier_unit_delivers_a_desktop_notification(box: Box) -> None:
    box.started()
    box.ct.run("loginctl", "enable-linger", USER)  # the user's systemd and session bus (dbus-user-session)
    wait_for(lambda: box.ct.run("test", "-S", f"/run/user/{box.uid}/bus", check=False).returncode == 0, 30,
             "the user's session bus")  # fmt: skip
    env = [
        f"XDG_RUNTIME_DIR=/run/user/{box.uid}",
        f"DBUS_SESSION_BUS_ADDRESS=unix:path=/run/user/{box.uid}/bus",
    ]
    sink = box.ct.popen("env", *env, box.py, str(REPO / "tests/helpers/notify_sink.py"), "/tmp/notes.jsonl",
                        user=USER)  # fmt: skip
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        box.session("systemctl", "--user", "daemon-reload")
        box.session("systemctl", "--user", "start", "egresswatch-notifier")
        wait_for(lambda: "active" == box.session("systemctl", "--user", "is-active", "egresswatch-notifier",
                                                 check=False).strip(), 20, "the notifier running")  # fmt: skip
        settle(2)  # the notifier starts at the newest alert: let it open the database first
        box.server("notify-me.example")

        def notes() -> list[dict[str, str]] | None:
            res = box.ct.run("cat", "/tmp/notes.jsonl", check=False)
            got = [json.loads(x) for x in res.stdout.splitlines()]
            return [n for n in got if "notify-me.example" in n["summary"]] or None

        note = wait_for(notes, 30, "the desktop notification")[0]
        assert (
            note["summary"] == "egresswatch: MCP server lab-srv contacted notify-me.example (not_allowlisted)"
        )
        assert (
            "Server: lab-srv (host cursor, phase run)" in note["body"] and "Process: python3[" in note["body"]
        )
        assert "fake_mcp_server.py" not in note["body"]  # no command line in an alert (docs/alerts.md)
    finally:
        sink.kill()
        sink.wait()


def test_stop_stores_everything(box: Box) -> None:
    box.started()
    before = box.status().get("counters", {}).get("captured", 0)  # type: ignore[union-attr]
    box.server("last-words.example")
    wait_for(lambda: box.status().get("counters", {}).get("captured", 0) > before, 10, "the query captured")  # type: ignore[union-attr, operator]
    box.ct.run("systemctl", "stop", UNIT, timeout=60)  # at once: the store may still hold it in its batch
    assert box.show("ActiveState", "Result") == {"ActiveState": "inactive", "Result": "success"}
    rows = box.sql("SELECT qname, server FROM events WHERE qname = 'last-words.example'")
    assert rows == [["last-words.example", "lab-srv"]], box.ct.journal(UNIT)


def test_systemd_analyze_security_of_the_running_unit(box: Box) -> None:
    box.started()
    out = box.ct.run("systemd-analyze", "security", "--no-pager", UNIT).stdout
    score = float(re.search(r"Overall exposure level for egresswatch.service: ([0-9.]+)", out)[1])  # type: ignore[index]
    assert score <= 3.1, out[-3000:]
