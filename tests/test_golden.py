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

import pytest

from egresswatch.cli_replay import event_json, replay_files
from egresswatch.config import Config, load_config
from egresswatch.errors import EgresswatchError
from egresswatch.model import Event

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
