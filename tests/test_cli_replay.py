"""`egresswatch replay` as a user runs it: a separate process, no root needed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PCAPS = REPO / "pcaps"


def replay(*args: str) -> subprocess.CompletedProcess[bytes]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "egresswatch", "replay", "--config", "/dev/null", *args],
        capture_output=True,
        env=env,
        cwd=REPO,
    )


def test_output_is_byte_identical_run_to_run() -> None:
    files = [str(p) for p in sorted(PCAPS.glob("*.pcap*"))]
    first, second = replay(*files), replay(*files)
    assert first.returncode == second.returncode == 1  # truncated.pcap is among them
    assert first.stdout == second.stdout and len(first.stdout) > 10_000
    for line in first.stdout.decode().splitlines():
        event = json.loads(line)
        assert {"ts", "kind", "proto", "src", "sport", "dst", "dport", "verdict", "reason"} <= event.keys()


def test_truncated_capture_prints_its_events_then_one_line_error() -> None:
    result = replay(str(PCAPS / "truncated.pcap"))
    assert result.returncode == 1
    assert len(result.stdout.decode().splitlines()) == 3
    err = result.stderr.decode().splitlines()
    assert err == [f"egresswatch: error: {PCAPS / 'truncated.pcap'}: truncated packet record at byte 294"]


def test_garbage_and_missing_files_are_one_line_errors(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pcap"
    junk.write_bytes(os.urandom(300))
    for path in (junk, tmp_path / "missing.pcap"):
        result = replay(str(path))
        assert result.returncode == 1 and result.stdout == b""
        lines = result.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("egresswatch: error:") and "Traceback" not in lines[0]


def test_table_escapes_control_characters_from_packets() -> None:
    from tests.corpus import corpus_dir

    capture = corpus_dir() / "public" / "ndpi" / "dns-invalid-chars.pcap"
    result = replay("--format", "table", str(capture))
    assert result.returncode == 0
    text = result.stdout.decode()
    assert text and not any(c < " " and c != "\n" for c in text), (
        "raw control characters reached the terminal"
    )
