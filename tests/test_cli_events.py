"""`egresswatch events` / `stats` over a database filled with generated events."""

from __future__ import annotations

import csv
import io
import json
import signal
import subprocess
import sys
import threading
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from egresswatch.cli.events import events, stats_cmd
from egresswatch.cli.render import EVENT_KEYS
from egresswatch.model import DNS_QUERY, TLS_SNI
from egresswatch.store.db import Store
from tests.helpers.netlab import wait_for
from tests.test_store import T0, make_event, mixed_events

ROOT = Path(__file__).resolve().parent.parent
group = click.Group(commands={"events": events, "stats": stats_cmd})


@pytest.fixture
def db(tmp_path: Path) -> Path:
    p = tmp_path / "e.db"
    with Store(p) as s:
        for e in mixed_events():
            s.write(e)
    return p


def run(*args: str) -> tuple[int, str, str]:
    r = CliRunner().invoke(group, list(args))
    return r.exit_code, r.stdout, r.stderr


def test_jsonl_default_limit_newest_first(db: Path) -> None:
    code, out, _ = run("events", "--db", str(db), "--format", "jsonl")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == 50
    assert [r["ts"] for r in rows] == sorted((e.obs.ts for e in mixed_events()), reverse=True)[:50]
    by_ts = {e.obs.ts: e.to_dict() for e in mixed_events()}
    for r in rows:
        rid = r.pop("id")
        assert isinstance(rid, int) and r == by_ts[r["ts"]]


def test_json_is_a_list(db: Path) -> None:
    code, out, _ = run("events", "--db", str(db), "--format", "json", "--limit", "0")
    assert code == 0
    rows = json.loads(out)
    assert isinstance(rows, list) and len(rows) == 60


def test_csv_flat_with_json_lists(db: Path) -> None:
    code, out, _ = run("events", "--db", str(db), "--format", "csv", "--kind", "tls_sni")
    assert code == 0
    reader = csv.DictReader(io.StringIO(out))
    assert tuple(reader.fieldnames or ()) == EVENT_KEYS
    rows = list(reader)
    assert len(rows) == 10 and all(r["kind"] == "tls_sni" for r in rows)
    assert json.loads(rows[0]["alpn"]) == ["h2", "http/1.1"]
    assert json.loads(rows[0]["chain"]) == [{"pid": 1, "name": "systemd"}]
    assert rows[0]["ech"] == "false" and rows[0]["qname"] == ""


def test_table_readable(db: Path) -> None:
    code, out, _ = run("events", "--db", str(db), "--server", "fs", "--verdict", "flagged")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["TIME", "VERDICT", "SERVER", "PROCESS", "KIND", "DESTINATION", "REASON"]
    want = [e for e in mixed_events() if e.attr.server == "fs" and e.verdict.verdict == "flagged"]
    assert len(lines) == 1 + len(want)
    for line in lines[1:]:
        assert " flagged " in line and " fs " in line and "not_allowlisted" in line
        assert "\x1b[" not in line  # not a terminal: no colour
    assert "[10" in lines[1]  # process[pid]


@pytest.mark.parametrize(
    ("args", "pred"),
    [
        (["--server", "git"], lambda e: e.attr.server == "git"),
        (["--pid", "102"], lambda e: e.attr.process.pid == 102),
        (["--process", "python3"], lambda e: e.attr.process.name == "python3"),
        (["--verdict", "unwatched"], lambda e: e.verdict.verdict == "unwatched"),
        (["--kind", "dns_answer"], lambda e: e.obs.kind == "dns_answer"),
        (["--domain", "*.Example.COM"], lambda e: (e.dst_name or "").endswith(".example.com")),
        (["--since", str(T0 + 1200), "--until", str(T0 + 2400)], lambda e: T0 + 1200 <= e.obs.ts < T0 + 2400),
        (["--since", "2025-11-13T02:33:20+00:00"], lambda e: e.obs.ts >= T0 + 1200),
    ],
)
def test_filters(db: Path, args: list[str], pred) -> None:
    code, out, _ = run("events", "--db", str(db), "--format", "jsonl", "--limit", "0", *args)
    assert code == 0
    got = sorted(json.loads(line)["ts"] for line in out.splitlines())
    want = sorted(e.obs.ts for e in mixed_events() if pred(e))
    assert want and got == want


def test_relative_since(tmp_path: Path) -> None:
    import time

    p = tmp_path / "e.db"
    now = time.time()
    with Store(p) as s:
        s.write(make_event(now - 3 * 3600, name="old.example"))
        s.write(make_event(now - 600, name="new.example"))
    code, out, _ = run("events", "--db", str(p), "--since", "2h", "--format", "jsonl")
    assert code == 0 and [json.loads(x)["dst_name"] for x in out.splitlines()] == ["new.example"]


def test_control_characters_escaped_in_table(tmp_path: Path) -> None:
    p = tmp_path / "e.db"
    with Store(p) as s:
        s.write(make_event(T0, kind=TLS_SNI, name="evil\x1b]0;pwned\x07.example\u202egnp"))
        s.write(make_event(T0 + 1, kind=DNS_QUERY, name="q\r\n\x00x.example", server="srv\x1b[2J"))
    code, out, _ = run("events", "--db", str(p))
    assert code == 0
    assert "\x1b" not in out and "\x07" not in out and "\u202e" not in out and "\r" not in out
    assert "evil\\x1b]0;pwned\\x07.example\\u202egnp" in out
    assert "q\\x0d\\x0a\\x00x.example" in out and "srv\\x1b[2J" in out
    assert len(out.splitlines()) == 3
    code, out, _ = run("events", "--db", str(p), "--format", "csv")
    assert "\x1b" not in out and "\u202e" not in out


def test_bad_time_missing_and_corrupt_db(tmp_path: Path, db: Path) -> None:
    code, _, err = run("events", "--db", str(db), "--since", "yesterday-ish")
    assert code == 2 and "cannot parse time" in err and "Traceback" not in err
    code, _, err = run("events", "--db", str(tmp_path / "nope.db"))
    assert code == 1 and "no such database" in err and len(err.strip().splitlines()) == 1
    bad = tmp_path / "bad.db"
    bad.write_bytes(b"\x00garbage" * 512)
    code, _, err = run("events", "--db", str(bad))
    assert code == 1 and "not a usable SQLite database" in err and "Traceback" not in err
    code, _, err = run("stats", "--db", str(bad))
    assert code == 1 and len(err.strip().splitlines()) == 1


def test_db_from_config(tmp_path: Path, db: Path) -> None:
    cfg = tmp_path / "config.toml"
    cfg.write_text(f'[daemon]\ndatabase = "{db}"\n')
    code, out, _ = run("events", "--config", str(cfg), "--format", "jsonl", "--limit", "3")
    assert code == 0 and len(out.splitlines()) == 3
    cfg.write_text("[daemon]\nnot_a_key = 1\n")
    code, _, err = run("events", "--config", str(cfg))
    assert code == 1 and "not_a_key" in err


def test_stats_formats(db: Path) -> None:
    code, out, _ = run("stats", "--db", str(db), "--format", "json")
    assert code == 0
    data = {s["server"]: s for s in json.loads(out)}
    assert set(data) == {"fs", "git"} and data["fs"]["flagged_by_reason"]["not_allowlisted"] > 0
    code, out, _ = run("stats", "--db", str(db))
    assert code == 0 and out.startswith("fs: ") and "flagged by reason: not_allowlisted" in out
    code, out, _ = run("stats", "--db", str(db), "--format", "csv", "--since", str(T0 + 3000))
    rows = list(csv.DictReader(io.StringIO(out)))
    assert rows and all(float(r["first_seen"]) >= T0 + 3000 for r in rows)


def test_follow_prints_new_rows_and_exits_0_on_ctrl_c(db: Path) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "egresswatch.cli.events", "events", "--db", str(db), "--follow",
         "--format", "jsonl", "--limit", "2", "--server", "fs"],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        wait_for(lambda: len(lines) == 2, what="initial rows")
        first = [json.loads(x) for x in lines]
        assert first[0]["ts"] < first[1]["ts"]  # oldest first when following
        with Store(db) as s:
            s.write(make_event(T0 + 10_000, name="later.example", server="fs"))
            s.write(make_event(T0 + 10_001, name="other-server.example", server="git"))
            s.write(make_event(T0 + 10_002, name="last.example", server="fs"))
        wait_for(lambda: len(lines) == 4, what="followed rows")
        assert [json.loads(x)["dst_name"] for x in lines[2:]] == ["later.example", "last.example"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 0
        assert "Traceback" not in proc.stderr.read()  # type: ignore[union-attr]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
