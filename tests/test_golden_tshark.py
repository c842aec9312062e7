"""The golden captures in pcaps/ against the same independent oracle as the
public corpus: tshark (through the corpus's ``tshark_expected.py``) must find
the same (frame, kind, name) items as egresswatch in every capture here, so
the scripts that make them build realistic packets, and the decoders for link
types and tunnels that the public corpus lacks are checked too.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from egresswatch.cli.replay import replay_files
from egresswatch.config import Config
from egresswatch.errors import EgresswatchError
from tests.corpus import corpus_dir
from tests.helpers.netlab import missing
from tests.test_corpus import _Collect, canon_ours, canon_tshark

PCAPS = Path(__file__).resolve().parents[1] / "pcaps"
Item = tuple[int, str, str | None]


def _captures() -> list[str]:
    return sorted(p.name for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))


def _tshark_items(capture: Path) -> set[Item]:
    if shutil.which("tshark") is None:
        missing("tshark is not installed (scripts/setup.sh --test installs it)")
    script = corpus_dir() / "tshark_expected.py"
    out = subprocess.run(
        [sys.executable, str(script), str(capture)], capture_output=True, text=True, timeout=120
    )
    items: set[Item] = set()
    for line in out.stdout.splitlines():
        e = json.loads(line)
        name = canon_tshark(e["qname"]) if e["kind"].startswith("dns") else e["sni"]
        items.add((e["frame"], e["kind"], name))
    return items


def _our_items(capture: Path) -> set[Item]:
    sink = _Collect()
    try:
        for _ in replay_files([capture], Config(), [sink]):
            pass
    except EgresswatchError:
        pass  # truncated.pcap: the events before the cut count, as for tshark
    items: set[Item] = set()
    for ev in sink.events:
        o = ev.obs
        if o.kind in ("dns_query", "dns_answer"):
            items.add((o.frame, o.kind, canon_ours(o.qname)))
        elif o.kind in ("tls_sni", "quic_sni"):
            items.add((o.frame, o.kind, o.sni))
    return items


@pytest.mark.corpus
@pytest.mark.parametrize("capture", _captures())
def test_golden_capture_agrees_with_tshark(capture: str) -> None:
    path = PCAPS / capture
    theirs, ours = _tshark_items(path), _our_items(path)
    assert ours - theirs == set(), f"egresswatch reports more than tshark: {sorted(map(str, ours - theirs))}"
    assert theirs - ours == set(), f"egresswatch misses: {sorted(map(str, theirs - ours))}"


@pytest.mark.parametrize("script", ["make_link.py", "make_linkmore.py", "make_verdicts.py", "make_flows.py"])
def test_generator_scripts_write_the_committed_bytes(script: str, tmp_path: Path) -> None:
    """Each script rewrites its captures byte for byte (make_tls_dns.py and
    make_quic.py are checked in test_engine.py and test_quic.py)."""
    subprocess.run([sys.executable, str(PCAPS / script), str(tmp_path)], check=True, capture_output=True)
    written = sorted(p for p in tmp_path.iterdir() if p.suffix in (".pcap", ".pcapng"))
    assert written
    for p in written:
        assert p.read_bytes() == (PCAPS / p.name).read_bytes(), p.name
