"""Output formats of event dicts and stats, colour rules, and the JSON-lines sink."""

from __future__ import annotations

import io
import json
import os
import stat
from pathlib import Path

import pytest

from egresswatch.cli.render import EventWriter, destination, events_to_string, render_stats, use_color
from egresswatch.errors import StoreError
from egresswatch.model import CONNECT, DNS_QUERY, QUIC_SNI
from egresswatch.store.jsonl import JsonlSink
from tests.test_store import T0, make_event


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def row(**kw: object) -> dict:
    d = make_event(T0, **kw).to_dict()  # type: ignore[arg-type]
    d["id"] = 1
    return d


def test_colour_only_on_tty_and_never_with_no_color(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(FakeTTY()) and not use_color(io.StringIO())
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(FakeTTY())
    out = FakeTTY()
    EventWriter("table", out).write([row(verdict="flagged", reason="direct_ip")])
    assert "\x1b[" not in out.getvalue()
    monkeypatch.delenv("NO_COLOR")
    out = FakeTTY()
    EventWriter("table", out).write([row(verdict="flagged", reason="direct_ip")])
    assert "\x1b[1;31mflagged" in out.getvalue()


def test_table_escapes_everything_from_packets() -> None:
    d = row(name="a\x1b[31mb\u202ec", process="no\x1bde", server="s\x07")
    text = events_to_string([d], "table", color=True)
    assert "\x1b[31m" not in text and "\u202e" not in text and "\x07" not in text
    assert "a\\x1b[31mb\\u202ec" in text and "no\\x1bde[100]" in text and "s\\x07" in text


def test_destination_forms() -> None:
    assert destination(row(kind=DNS_QUERY, name="x.example")) == "x.example (type 1)"
    assert (
        destination(row(kind=QUIC_SNI, name="q.example", dst="2001:db8::1"))
        == "q.example ([2001:db8::1]:443)"
    )
    assert destination(row(kind=CONNECT, name=None, dst="198.18.0.9")) == "198.18.0.9:443"


def test_json_escapes_non_ascii_and_jsonl_roundtrips() -> None:
    d = row(name="x\u202ey.example")
    text = events_to_string([d], "json")
    assert "\u202e" not in text and json.loads(text) == [d]
    lines = events_to_string([d, d], "jsonl").splitlines()
    assert [json.loads(x) for x in lines] == [d, d]
    assert list(json.loads(lines[0])) == list(d)  # key order kept


def test_csv_header_written_once_across_batches() -> None:
    out = io.StringIO()
    w = EventWriter("csv", out)
    w.write([row()])
    w.write([row(), row()])
    assert out.getvalue().count("id,ts,frame") == 1 and len(out.getvalue().splitlines()) == 4


def test_stats_table_and_csv() -> None:
    stats = [{"server": "fs\x1b", "events": 3, "flagged": 1, "flagged_by_reason": {"direct_ip": 1},
              "destinations": [{"destination": "e\u202e.example", "count": 3, "flagged": 1,
                                "first_seen": T0, "last_seen": T0 + 5}]}]  # fmt: skip
    out = io.StringIO()
    render_stats(stats, "table", out, color=False)
    text = out.getvalue()
    assert text.startswith("fs\\x1b: 3 events, 1 destinations, 1 flagged")
    assert "e\\u202e.example" in text and "direct_ip 1" in text
    out = io.StringIO()
    render_stats(stats, "csv", out)
    assert out.getvalue().splitlines()[1].startswith("fs\\x1b,e\\u202e.example,3,1,")
    out = io.StringIO()
    render_stats([], "table", out)
    assert "no events" in out.getvalue()


def test_jsonl_sink_appends_mode_0640_and_follows_rotation(tmp_path: Path) -> None:
    p = tmp_path / "events.jsonl"
    sink = JsonlSink(p, check_interval=0.0)
    e1, e2, e3 = make_event(T0), make_event(T0 + 1, kind=DNS_QUERY), make_event(T0 + 2, kind=CONNECT)
    sink.write(e1)
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o640
    assert [json.loads(x) for x in p.read_text().splitlines()] == [
        e1.to_dict()
    ]  # line-buffered: already there
    os.rename(p, tmp_path / "events.jsonl.1")  # logrotate moves the file away
    sink.write(e2)
    assert [json.loads(x) for x in p.read_text().splitlines()] == [e2.to_dict()]
    p.unlink()  # copytruncate-style or deleted: reopen on SIGHUP request
    sink.reopen()
    sink.write(e3)
    sink.close()
    assert [json.loads(x) for x in p.read_text().splitlines()] == [e3.to_dict()]
    assert json.loads((tmp_path / "events.jsonl.1").read_text()) == e1.to_dict()
    assert list(json.loads(p.read_text())) == list(e3.to_dict())  # stable key order


def test_jsonl_sink_refuses_symlink(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("")
    link = tmp_path / "events.jsonl"
    link.symlink_to(target)
    with pytest.raises(StoreError, match="cannot open for appending"):
        JsonlSink(link)
    with pytest.raises(StoreError):
        JsonlSink(tmp_path / "missing-dir" / "events.jsonl")
