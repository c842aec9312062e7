"""Daemon start-up refusals, the status file and `status`/`doctor` output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from egresswatch.cli.main import cli
from egresswatch.service.status import read_status, write_status
from tests.helpers.netlab import require_live

REPO = Path(__file__).resolve().parents[1]


def ew(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "egresswatch", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=timeout)  # fmt: skip


@pytest.fixture
def private(tmp_path: Path) -> Path:
    d = tmp_path / "ew"
    d.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    return d


def test_status_file_is_replaced_atomically(private: Path) -> None:
    path = private / "run" / "status.json"
    write_status(path, {"pid": 1, "counters": {"captured": 3}})
    write_status(path, {"pid": 2, "counters": {"captured": 4}})
    assert read_status(path) == {"pid": 2, "counters": {"captured": 4}}
    assert [p.name for p in path.parent.iterdir()] == ["status.json"]  # no temp files left
    path.write_text("{not json")
    assert read_status(path) is None


def test_status_command(private: Path) -> None:
    path = private / "status.json"
    runner = CliRunner()
    missing = runner.invoke(cli, ["status", "--status-file", str(path)])
    assert missing.exit_code == 1 and "no status" in missing.output
    data = {"pid": os.getpid(), "updated": time.time(), "state": "running", "interval": 1.0,
            "database": "/x.db", "counters": {"captured": 7, "kernel_drops": 0}}  # fmt: skip
    write_status(path, data)
    ok = runner.invoke(cli, ["status", "--status-file", str(path)])
    assert ok.exit_code == 0 and "healthy" in ok.output and "captured: 7" in ok.output
    write_status(path, {**data, "updated": time.time() - 120})
    stale = runner.invoke(cli, ["status", "--status-file", str(path), "--json"])
    assert stale.exit_code == 1 and json.loads(stale.output)["healthy"] is False
    write_status(path, {**data, "pid": 2**22 + 12345})
    dead = runner.invoke(cli, ["status", "--status-file", str(path)])
    assert dead.exit_code == 1 and "not running" in dead.output


def test_bad_config_is_one_line_and_exit_1(private: Path) -> None:
    cfg = private / "config.toml"
    cfg.write_text("[daemon]\nnonsense = 1\n")
    os.chmod(cfg, 0o600)
    out = ew("run", "--config", str(cfg), "--db", str(private / "e.db"))
    assert out.returncode == 1
    assert out.stderr.strip().splitlines() == [f"egresswatch: error: {cfg}: daemon.nonsense: unknown key"]


def test_refuses_config_writable_by_others(private: Path) -> None:
    cfg = private / "config.toml"
    cfg.write_text("")
    os.chmod(cfg, 0o666)
    out = ew("run", "--config", str(cfg), "--db", str(private / "e.db"))
    assert out.returncode == 1
    assert "refusing to use config" in out.stderr and "writable by group or others" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_refuses_database_in_a_world_writable_directory(private: Path) -> None:
    cfg = private / "config.toml"
    cfg.write_text("")
    os.chmod(cfg, 0o600)
    shared = private / "shared"
    shared.mkdir()
    os.chmod(shared, 0o777)
    out = ew("run", "--config", str(cfg), "--db", str(shared / "e.db"))
    assert out.returncode == 1 and "refusing to use database" in out.stderr, out.stderr


def test_doctor_reports_each_check(private: Path) -> None:
    require_live()
    import socket

    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = private / "config.toml"
    cfg.write_text(f'[alerts]\nurls = ["json://127.0.0.1:{port}/", "nosuchscheme://x"]\n')
    os.chmod(cfg, 0o600)
    out = ew("doctor", "--config", str(cfg), "--db", str(private / "e.db"))
    lines = out.stdout.strip().splitlines()
    status = {line[5:].split(":")[0]: line[:4].strip() for line in lines}
    assert status["privileges"] == "ok" and status["capture"] == "ok" and status["proc connector"] == "ok"
    assert status["config"] == "ok" and status["database"] == "ok"
    assert status["attribution"] == "ok" and "attribution: ebpf" in out.stdout  # root, BTF: the eBPF path
    target1 = next(x for x in lines if "target 1" in x)
    assert status["alert target 1"] == "FAIL" and "cannot connect" in target1
    assert "any local user can bind" in target1 and "nothing listens there now" in target1
    assert status["alert target 2"] == "FAIL"
    assert out.returncode == 1
    with socket.socket() as s:  # root's receiver is up, but a user can take the port when it stops
        s.bind(("127.0.0.1", port))
        s.listen()
        out = ew("doctor", "--config", str(cfg), "--db", str(private / "e.db"))
    target = next(line for line in out.stdout.splitlines() if "alert target 1:" in line)
    assert target.startswith("warn") and "root listens there now" in target
    cfg.write_text("")
    assert ew("doctor", "--config", str(cfg), "--db", str(private / "e.db")).returncode == 0


def test_status_shows_why_it_is_unhealthy(private: Path) -> None:
    path = private / "status.json"
    problem = "cannot write events to /x.db: database or disk is full"
    data = {"pid": os.getpid(), "updated": time.time(), "state": "running", "interval": 1.0,
            "database": "/x.db", "healthy": False, "problems": [problem],
            "counters": {"events_dropped": 3, "alerts_dropped": 0}}  # fmt: skip
    write_status(path, data)
    out = CliRunner().invoke(cli, ["status", "--status-file", str(path)])
    assert out.exit_code == 1 and "NOT HEALTHY" in out.output
    assert f"problem: {problem}" in out.output and "events_dropped: 3" in out.output


def test_health_fails_on_losses_and_logs_each_once(caplog: pytest.LogCaptureFixture) -> None:
    from egresswatch.service.health import Health

    h = Health(window=60)
    zero = {"kernel_packets": 0, "kernel_drops": 0}
    assert h.check(0.0, zero, None) == []
    assert h.check(1.0, {"kernel_packets": 1000, "kernel_drops": 5}, None) == []  # under the threshold
    drops = {"kernel_packets": 10_000, "kernel_drops": 8_500}
    for t in (2.0, 2.5, 3.0):
        (problem,) = h.check(t, drops, None)
    assert "the kernel dropped 8500 of 10000 packets" in problem
    assert h.check(70.0, drops, None) == []  # nothing new for a window: healthy again
    assert h.check(71.0, {**drops, "events_dropped": 2}, "cannot write events: disk full") == [
        "cannot write events: disk full",
        "events dropped (the database could not take them): 2 in the last 60s",
    ]
    assert [r.message.split(":")[0] for r in caplog.records].count("unhealthy") == 3


def test_log_messages_are_escaped() -> None:
    import logging

    from egresswatch.textsafe import SafeFormatter

    fmt = SafeFormatter("%(levelname)s %(name)s: %(message)s")
    record = logging.LogRecord(
        "egresswatch.x", logging.WARNING, __file__, 1, "discovery: %s", ("/p\x1b[2J\nINFO forged",), None
    )
    assert fmt.format(record) == "WARNING egresswatch.x: discovery: /p\\x1b[2J\\x0aINFO forged"


def test_health_says_whether_the_watched_lane_kept_mcp_frames() -> None:
    from egresswatch.service.health import Health

    without, kept, lost = Health(window=60), Health(window=60), Health(window=60)
    base = {"kernel_packets": 0, "kernel_drops": 0}
    flood = {"kernel_packets": 10_000, "kernel_drops": 8_500}
    assert without.check(0.0, base, None) == kept.check(0.0, {**base, "lane_drops": 0}, None) == []
    lost.check(0.0, {**base, "lane_drops": 0}, None)
    (no_lane,) = without.check(1.0, flood, None)
    (lane_ok,) = kept.check(1.0, {**flood, "lane_drops": 0}, None)
    (lane_lost,) = lost.check(1.0, {**flood, "lane_drops": 3}, None)
    assert "MCP servers' events may be among them" in no_lane
    assert "came through the watched lane, which dropped none" in lane_ok
    assert "the watched lane dropped 3 too: MCP servers' events are among them" in lane_lost
