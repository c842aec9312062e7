"""Conformance against an independent oracle: every public capture in
../shared/corpus replayed by egresswatch must give, per capture, the same set
of (kind, qname) and (kind, sni) as tshark's expected events.

Names are compared in one canonical form: tshark writes the root as
``<Root>``, control bytes as ``\\ooo`` (octal) and bytes >= 0x80 as U+FFFD;
egresswatch writes ``.`` and ``\\DDD`` (decimal, RFC 1035 presentation form).
Both sides are decoded to the same characters before comparing.

Where egresswatch differs on purpose because tshark is wrong or does not look,
the difference is listed in DIFFERENCES with its reason, item by item: a
listed item that no longer differs fails the test too, so the list stays true.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from egresswatch.config import Config
from egresswatch.model import Event
from egresswatch.cli_replay import replay_files
from tests.corpus import CORPUS, corpus_dir

Item = tuple[str, str | None]

# capture (relative to public/) -> (extra in egresswatch, missing in egresswatch, reason)
DIFFERENCES: dict[str, tuple[set[Item], set[Item], str]] = {}

_OCTAL = re.compile(r"\\([0-7]{3})")
_DECIMAL = re.compile(r"\\([0-9]{3})")


def canon_tshark(name: str | None) -> str | None:
    if name is None:
        return None
    if name == "<Root>":
        return "."
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), name)


def canon_ours(name: str | None) -> str | None:
    if name is None:
        return None

    def dec(m: re.Match[str]) -> str:
        v = int(m.group(1))
        return "\ufffd" if v >= 0x80 else chr(v)

    return _DECIMAL.sub(dec, name)


def _items_expected(path: Path) -> set[Item]:
    items: set[Item] = set()
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e["kind"] in ("dns_query", "dns_answer"):
            items.add((e["kind"], canon_tshark(e["qname"])))
        elif e["kind"] in ("tls_sni", "quic_sni"):
            items.add((e["kind"], e["sni"]))
    return items


class _Collect:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def write(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def _items_ours(capture: Path) -> set[Item]:
    sink = _Collect()
    for _ in replay_files([capture], Config(), [sink]):
        pass
    items: set[Item] = set()
    for ev in sink.events:
        o = ev.obs
        if o.kind in ("dns_query", "dns_answer"):
            items.add((o.kind, canon_ours(o.qname)))
        elif o.kind in ("tls_sni", "quic_sni"):
            items.add((o.kind, o.sni))
    return items


def _captures() -> list[str]:
    expected = CORPUS / "public" / "expected"
    if not expected.is_dir():
        return ["<corpus absent>"]
    out = []
    for f in sorted(expected.glob("*.jsonl")):
        out.append(f.name[: -len(".jsonl")].replace("__", "/"))
    return out


@pytest.mark.corpus
@pytest.mark.parametrize("capture", _captures())
def test_capture_agrees_with_tshark(capture: str) -> None:
    corpus = corpus_dir()
    path = corpus / "public" / capture
    expected = _items_expected(corpus / "public" / "expected" / (capture.replace("/", "__") + ".jsonl"))
    ours = _items_ours(path)
    extra, missing, _why = DIFFERENCES.get(capture, (set(), set(), ""))
    assert ours - expected == extra, f"egresswatch reports more than tshark: {sorted(map(str, ours - expected))}"
    assert expected - ours == missing, f"egresswatch misses: {sorted(map(str, expected - ours))}"


def test_differences_are_reasoned() -> None:
    for capture, (extra, missing, why) in DIFFERENCES.items():
        assert extra or missing, capture
        assert len(why) > 20, f"{capture}: give the reason"
