"""Recorded process lookups (write, replay, corrupt files) and ptcpdump comments
checked against ptcpdump's own rendering of its captures."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from egresswatch.attribute.composite import CompositeAttributor
from egresswatch.attribute.ptcpdump import PtcpdumpAttributor, parse_ptcpdump_comment, ptcpdump_chain
from egresswatch.attribute.recorded import ProcsFileError, RecordedAttributor, RecordingAttributor
from egresswatch.capture.pcapfile import read_frames
from egresswatch.decode.engine import Engine
from egresswatch.mcp.match import RUN
from egresswatch.mcp.matcher import Matcher
from egresswatch.mcp.serverdef import ServerDef
from egresswatch.model import Attribution, Frame, Observation, ProcessInfo
from egresswatch.pipeline import Pipeline
from tests.corpus import corpus_dir

DIG = ServerDef(
    host="cursor",
    scope="user",
    file=Path("/h/.cursor/mcp.json"),
    name="dig-srv",
    command="/usr/bin/dig",
    args=("example.com",),
)


def ptcpdump(name: str) -> Path:
    path = corpus_dir() / "ptcpdump" / name
    if not path.exists():
        pytest.skip(f"{path} absent")
    return path


def events(path: Path, attributor: object) -> list[tuple[Observation, Attribution]]:
    pipe = Pipeline(Engine(), attributor)  # type: ignore[arg-type]
    out = []
    last = None
    for frame in read_frames(path):
        last = frame
        out += [(e.obs, e.attr) for e in pipe.feed(frame)]
    out += [(e.obs, e.attr) for e in pipe.finish(last)]
    return out


def truth(path: Path) -> list[tuple[str, int, str, int] | None]:
    """Per frame from ptcpdump's text output: (name, pid, parent name, parent pid)."""
    out: list[tuple[str, int, str, int] | None] = []
    for line in Path(str(path) + ".out.txt").read_text().splitlines():
        m = re.match(r"\S+ \S+ (\S+)\.(\d+) (?:In|Out) .*ParentProc \[(\S+)\.(\d+)\]$", line)
        out.append((m[1], int(m[2]), m[3], int(m[4])) if m else None)
    return out


@pytest.mark.corpus
@pytest.mark.parametrize(
    "name",
    ["dns.pcapng", "curl-user.pcapng", "curl-thread.pcapng", "tcp.pcapng", "icmp.pcapng", "arp.pcapng"],
)
def test_ptcpdump_comments_match_ptcpdump_output(name: str) -> None:
    path = ptcpdump(name)
    frames = list(read_frames(path))
    expected = truth(path)
    assert len(frames) == len(expected)
    for frame, exp in zip(frames, expected, strict=True):
        got = ptcpdump_chain(frame.comment) if frame.comment else None
        if exp is None:
            assert got is None
            continue
        assert got is not None
        proc, chain = got
        assert (proc.name, proc.pid, chain[0].name, chain[0].pid) == exp
        assert proc.ppid == chain[0].pid


@pytest.mark.corpus
def test_ptcpdump_dns_is_dig_under_bash_and_tied_to_server() -> None:
    evs = events(ptcpdump("dns.pcapng"), PtcpdumpAttributor(Matcher([DIG])))
    assert [o.kind for o, _ in evs] == ["dns_query", "dns_answer"]
    for _obs, attr in evs:
        assert attr.process is not None
        assert (attr.process.pid, attr.process.name, attr.process.exe) == (380281, "dig", "/usr/bin/dig")
        assert attr.process.cmdline == ("dig", "example.com")
        assert [(p.pid, p.name, p.cmdline) for p in attr.chain] == [(45198, "bash", ("-bash",))]
        assert (attr.server, attr.host, attr.phase) == ("dig-srv", "cursor", RUN)


@pytest.mark.corpus
def test_ptcpdump_curl_user_and_thread() -> None:
    evs = events(ptcpdump("curl-user.pcapng"), PtcpdumpAttributor())
    assert [(o.kind, o.sni) for o, _ in evs] == [("connect", None), ("tls_sni", "kernel.org")]
    for _obs, attr in evs:
        assert attr.process is not None
        assert (attr.process.name, attr.process.pid, attr.process.user) == ("curl", 99722, "1000")
        assert attr.chain[0].pid == 18840 and attr.server is None
    evs = events(ptcpdump("curl-thread.pcapng"), PtcpdumpAttributor())
    assert evs and all(a.process is not None and a.process.pid == 122868 for _o, a in evs)


def test_comment_parsing_is_strict_about_garbage() -> None:
    assert ptcpdump_chain("") is None
    assert ptcpdump_chain("hello world") is None
    assert ptcpdump_chain("PID: 99999999999999999999\nCmd: x") is None
    assert parse_ptcpdump_comment("PID: 1\nPID: 2\nBad Key: 3\nArgs: a: b") == {"PID": "1", "Args": "a: b"}
    proc, chain = ptcpdump_chain("PID: 7\nCmd: /bin/x\x1b[31m") or (None, ())
    assert proc is not None and proc.name == "x\x1b[31m" and chain == ()


# -- record / replay ---------------------------------------------------------------


@pytest.mark.corpus
def test_record_then_replay_gives_the_same_attribution(tmp_path: Path) -> None:
    procs = tmp_path / "procs.jsonl"
    path = ptcpdump("curl-user.pcapng")
    rec = RecordingAttributor(PtcpdumpAttributor(Matcher([DIG])), procs)
    live = events(path, rec)
    rec.close()
    assert procs.stat().st_mode & 0o777 == 0o600
    lines = [json.loads(x) for x in procs.read_text().splitlines()]
    assert len(lines) == len(live)
    assert lines[0]["local"] == ["10.0.2.15", 42906] and lines[0]["process"]["pid"] == 99722
    replayed = events(path, RecordedAttributor(procs))
    assert [a for _o, a in replayed] == [a for _o, a in live]
    # comment-less replay falls back to the recording
    frames = [Frame(ts=f.ts, data=f.data, linktype=f.linktype, index=f.index) for f in read_frames(path)]
    comp = CompositeAttributor([PtcpdumpAttributor(), RecordedAttributor(procs)])
    pipe = Pipeline(Engine(), comp)
    got = [e.attr for f in frames for e in pipe.feed(f)]
    assert got == [a for _o, a in live]


def _line(ts: float, port: int, pid: int | None, proto: str = "udp") -> str:
    proc = (
        None
        if pid is None
        else {
            "pid": pid,
            "create_time": 5.0,
            "ppid": 1,
            "name": f"p{pid}",
            "exe": None,
            "cmdline": [f"p{pid}"],
            "user": "root",
        }
    )
    return json.dumps(
        {
            "ts": ts,
            "proto": proto,
            "local": ["::ffff:10.0.0.1", port],
            "remote": ["10.0.0.2", 53],
            "kind": "dns_query",
            "process": proc,
            "chain": [],
            "server": "s" if pid else None,
            "host": None,
            "phase": None,
            "reason": "live" if pid else "gone",
        }
    )


def _obs(ts: float, port: int, proto: str = "udp") -> Observation:
    return Observation(
        ts=ts,
        frame=1,
        kind="dns_query",
        proto=proto,
        src="10.0.0.1",
        sport=port,  # type: ignore[arg-type]
        dst="10.0.0.2",
        dport=53,
    )


def test_replay_picks_latest_record_not_after_the_packet(tmp_path: Path) -> None:
    procs = tmp_path / "p.jsonl"
    procs.write_text(
        "\n".join([_line(10.0, 5000, 1), _line(20.0, 5000, 2), _line(30.0, 5000, None), ""]) + "\n"
    )
    r = RecordedAttributor(procs, max_age=100)
    frame = Frame(ts=0, data=b"", linktype=1)

    def pid(ts: float, port: int = 5000, proto: str = "udp") -> int | str | None:
        a = r.attribute(_obs(ts, port, proto), frame)
        return a.process.pid if a.process else a.reason

    assert pid(9.0) == "not in recorded processes"
    assert pid(10.0) == 1 and pid(19.9995) == 2  # within the tolerance
    assert pid(25.0) == 2 and pid(31.0) == "gone"
    assert pid(15.0, 5001) == "not in recorded processes"
    assert pid(15.0, 5000, "tcp") == "not in recorded processes"
    assert pid(200.0) == "not in recorded processes"  # older than max_age
    p = r.attribute(_obs(12.0, 5000), frame).process
    assert p == ProcessInfo(1, 5.0, 1, "p1", None, ("p1",), "root")


def test_bad_lines_are_counted_and_a_corrupt_file_is_one_error(tmp_path: Path) -> None:
    mixed = tmp_path / "mixed.jsonl"
    mixed.write_text(
        _line(1.0, 1, 1)
        + "\n{not json\n[1,2]\n"
        + json.dumps({"ts": "x"})
        + "\n"
        + _line(2.0, 2, 2).replace('"udp"', '"sctp"')
        + "\n"
        + _line(3.0, 3, 3)
        + "\n"
    )
    r = RecordedAttributor(mixed)
    assert r.records == 2 and r.skipped["bad_line"] == 4
    bad = tmp_path / "bad.jsonl"
    bad.write_text("\n\nhello\n" + "x" * 10)
    with pytest.raises(ProcsFileError, match=r"bad\.jsonl:3: not a procs record") as ei:
        RecordedAttributor(bad)
    assert "\n" not in str(ei.value)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(_line(1.0, 1, 1).encode() + b"\n\xff\xfe\x00garbage\n")
    assert RecordedAttributor(binary).skipped["bad_line"] == 1
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\xff")
    with pytest.raises(ProcsFileError, match=r"bin\.jsonl:1: not a procs record"):
        RecordedAttributor(binary)
    with pytest.raises(ProcsFileError, match="cannot read"):
        RecordedAttributor(tmp_path / "missing")
    long = tmp_path / "long.jsonl"
    long.write_bytes(b'{"ts": "' + b"x" * (3 << 20) + b'"}\n' + _line(1.0, 1, 1).encode() + b"\n")
    r = RecordedAttributor(long)
    assert r.records == 1 and r.skipped["line_too_long"] == 1
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 100000 + "\n" + _line(1.0, 1, 1) + "\n")
    assert RecordedAttributor(deep).skipped["bad_line"] == 1
