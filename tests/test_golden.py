"""Zeek-style golden tests: every pcaps/NAME.pcap[ng] is replayed through the
pipeline and its JSON lines compared with pcaps/NAME.expected.jsonl.

Optional companions: NAME.procs.jsonl (recorded process lookups),
NAME.toml (config with allowlists), NAME.expected.err (the one-line error a
corrupt capture must give). Regenerate after a deliberate change with
``EGRESSWATCH_UPDATE_GOLDEN=1 pytest tests/test_golden.py`` and review the diff.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from egresswatch.cli.replay import event_json, replay_files
from egresswatch.config import AlertsConfig, Config, load_config
from egresswatch.errors import EgresswatchError
from egresswatch.model import Event
from tests.helpers.flowcheck import Sent, check

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"
UPDATE = bool(os.environ.get("EGRESSWATCH_UPDATE_GOLDEN"))


def _captures() -> list[Path]:
    return sorted(p for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


class _Lines:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def write(self, event: Event) -> None:
        self.lines.append(event_json(event))

    def close(self) -> None:
        pass


def run_capture(capture: Path) -> tuple[str, str]:
    stem = capture.name.rsplit(".", 1)[0]
    cfg_path = PCAPS / f"{stem}.toml"
    config = load_config(cfg_path) if cfg_path.exists() else Config()
    procs = PCAPS / f"{stem}.procs.jsonl"
    sink = _Lines()
    err = ""
    try:
        for _ in replay_files([capture], config, [sink], procs if procs.exists() else None):
            pass
    except EgresswatchError as exc:
        err = str(exc).replace(str(PCAPS) + "/", "") + "\n"
    return "".join(line + "\n" for line in sink.lines), err


@pytest.mark.parametrize("capture", _captures(), ids=lambda p: p.name)
def test_golden(capture: Path) -> None:
    stem = capture.name.rsplit(".", 1)[0]
    out, err = run_capture(capture)
    expected, expected_err = PCAPS / f"{stem}.expected.jsonl", PCAPS / f"{stem}.expected.err"
    if UPDATE:
        expected.write_text(out)
        if err:
            expected_err.write_text(err)
        elif expected_err.exists():
            expected_err.unlink()
    assert expected.exists(), f"no golden output for {capture.name}: run with EGRESSWATCH_UPDATE_GOLDEN=1"
    assert out == expected.read_text()
    assert err == (expected_err.read_text() if expected_err.exists() else "")
    assert out, f"{capture.name} produced no events"


def test_replay_is_deterministic() -> None:
    captures = _captures()
    assert captures, "pcaps/ holds no captures"
    for capture in captures:
        assert run_capture(capture) == run_capture(capture)


# --- one verdict per flow (issue #15) -----------------------------------------------


def replay_with_alerts(capture: Path) -> tuple[list[dict[str, Any]], list[Sent]]:
    """Replay a golden capture into a list and through the real Alerter with no
    dedupe window and every flagged severity, so only the flow logic can keep
    an event from alerting."""
    from egresswatch.alert.deliver import Alerter
    from egresswatch.alert.message import AlertRecord

    stem = capture.name.rsplit(".", 1)[0]
    cfg_path = PCAPS / f"{stem}.toml"
    config = load_config(cfg_path) if cfg_path.exists() else Config()
    procs = PCAPS / f"{stem}.procs.jsonl"
    events: list[Event] = []

    class Collect:
        def write(self, event: Event) -> None:
            events.append(event)

        def close(self) -> None:
            pass

    records: list[AlertRecord] = []
    alerter = Alerter(AlertsConfig(window_seconds=0.0, min_severity="low"), None, notify=lambda t, b: True)
    alerter.add_listener(records.append)
    try:
        for _ in replay_files([capture], config, [Collect(), alerter], procs if procs.exists() else None):
            pass
    except EgresswatchError:
        pass  # truncated.pcap: its events up to the error count
    alerter.close()
    sent = [Sent(r.ts, r.pid, r.destination, r.reason) for r in records if r.kind == "alert"]
    return [e.to_dict() for e in events], sent


@pytest.mark.parametrize("capture", _captures(), ids=lambda p: p.name)
def test_no_flow_alerts_twice_and_alerts_name_their_own_flow(capture: Path) -> None:
    events, sent = replay_with_alerts(capture)
    check(events, sent)


def test_mcp_flows_one_verdict_per_flow_named_by_the_flow_itself() -> None:
    """pcaps/make_flows.py: three names on one address, the allowed one resolved
    last; five connections to it (allowed SNI, foreign SNI, hello without SNI,
    no hello, ECH)."""
    events, sent = replay_with_alerts(PCAPS / "mcp-flows.pcap")
    flows = [e for e in events if e["kind"] != "dns_query" and e["kind"] != "dns_answer"]
    names = ["api.notes.example", "collector.exfil-sink.example", "ech-front.cdn.example"]
    every = " | ".join(names)
    decided = {e["sport"]: e for e in flows if e["decides"]}
    got = {
        port: (
            e["kind"],
            e["verdict"],
            e["reason"],
            e["sni"] if "sni" in e else None,
            e["candidates"],
            e["rule"],
        )
        for port, e in decided.items()
    }
    assert got == {
        41004: ("tls_sni", "allowed", "allowlist", "api.notes.example", [], "servers.notes.allow: api.notes.example"),
        41005: ("tls_sni", "flagged", "not_allowlisted", "collector.exfil-sink.example", [],
                "collector.exfil-sink.example"),
        41006: ("tls_sni", "flagged", "not_allowlisted", None, names,
                f"198.51.100.77 (one of {', '.join(names)}; not allowlisted: {', '.join(names[1:])})"),
        41007: ("connect", "flagged", "not_allowlisted", None, names,
                f"198.51.100.77 (one of {', '.join(names)}; not allowlisted: {', '.join(names[1:])})"),
        41008: ("tls_sni", "flagged", "not_allowlisted", "ech-front.cdn.example", [],
                "ech-front.cdn.example (ECH: outer name)"),
    }  # fmt: skip
    # the SYNs stay records, provisional, linked to their hello by the flow id
    syns = [e for e in flows if e["kind"] == "connect"]
    assert len(syns) == 5 and all(s["candidates"] == names and s["dst_name"] is None for s in syns)
    assert len({e["flow_id"] for e in flows}) == 5
    assert all(
        sum(e["decides"] for e in flows if e["flow_id"] == f) == 1 for f in {e["flow_id"] for e in flows}
    )
    # the hello-less flow was decided by frame time (the next flow's SYN, 6 s later), not at the end
    order = [(e["sport"], e["kind"]) for e in flows]
    assert order.index((41007, "connect")) < order.index((41008, "connect"))
    # exactly these alerts: the two flagged DNS queries, then one per flagged flow, each named by itself
    assert [(a.destination, a.reason) for a in sent] == [
        ("collector.exfil-sink.example", "not_allowlisted"),  # its DNS query
        ("ech-front.cdn.example", "not_allowlisted"),  # its DNS query
        ("collector.exfil-sink.example", "not_allowlisted"),
        (every, "not_allowlisted"),
        (every, "not_allowlisted"),
        ("ech-front.cdn.example", "not_allowlisted"),
    ]
    per_flow = check(events, sent)
    assert sorted(decided[p]["flow_id"] in per_flow for p in decided) == [False, True, True, True, True]
