"""One test per crash that fuzzing found (bench/fuzz_decoders.py, bench/fuzz_replay.py):
the input that crashed, now handled as the module documents."""

from __future__ import annotations

import struct
from pathlib import Path

from click.testing import CliRunner

from egresswatch.attribute.ptcpdump import ptcpdump_chain
from egresswatch.capture.pcapfile import read_frames
from egresswatch.cli.main import cli

REPO = Path(__file__).resolve().parents[1]


def _block(btype: int, body: bytes) -> bytes:
    body += b"\0" * (-len(body) % 4)
    return struct.pack("<II", btype, len(body) + 12) + body + struct.pack("<I", len(body) + 12)


def _with_comment(comment: bytes) -> bytes:
    """pcapng: the first frame of pcaps/dns-answers.pcap with a ptcpdump-style comment."""
    f = next(iter(read_frames(REPO / "pcaps" / "dns-answers.pcap")))
    opt = struct.pack("<HH", 1, len(comment)) + comment + b"\0" * (-len(comment) % 4) + b"\0\0\0\0"
    data = f.data + b"\0" * (-len(f.data) % 4)
    epb = struct.pack("<IIIII", 0, 0, 1, len(f.data), len(f.data)) + data + opt
    shb = _block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
    return shb + _block(1, struct.pack("<HHI", f.linktype, 0, 0)) + _block(6, epb)


def test_ptcpdump_pid_with_separator_or_non_ascii_digit_is_no_pid(tmp_path: Path) -> None:
    # fuzz_decoders procfile: int("1\x1f") raised ValueError out of ptcpdump_chain
    # (str.strip() removes \x1f, int() does not); "²" passes str.isdigit()
    assert ptcpdump_chain("PID: 1\x1f\nParentPID: 2\n") is None
    assert ptcpdump_chain("PID: \u00b2\n") is None
    proc = ptcpdump_chain("PID: 12\nParentPID: 1\x1f\nCmd: /bin/x\n")
    assert proc is not None and proc[0].pid == 12 and proc[0].ppid is None
    assert ptcpdump_chain("PID: 7 \n") is not None  # plain spaces still fine
    # through replay: the comment came from a capture file; no logged traceback
    path = tmp_path / "c.pcapng"
    path.write_bytes(_with_comment(b"PID: 1\x1f\nCmd: /usr/bin/curl\n"))
    res = CliRunner().invoke(cli, ["replay", str(path)])
    assert res.exit_code == 0 and res.exception is None
    assert "Traceback" not in res.stderr and "attribution failed" not in res.stderr, res.stderr
    assert '"kind": "dns_query"' in res.stdout or '"kind": "dns_answer"' in res.stdout
