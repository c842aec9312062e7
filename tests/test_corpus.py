"""Conformance against an independent oracle: every public capture in
../shared/corpus replayed by egresswatch must give, per capture, the same set
of (kind, qname) and (kind, sni) as tshark's expected events.

Names are compared in one canonical form: tshark writes the root as
``<Root>``, control bytes as ``\\ooo`` (octal) and bytes >= 0x80 as U+FFFD;
egresswatch writes ``.``, ``\\DDD`` (decimal), ``\\.`` and ``\\\\`` (RFC 1035
presentation form), for DNS names and SNI alike.
Both sides are decoded to the same characters (bytes >= 0x80 as UTF-8,
replacing invalid sequences, as tshark does) before comparing.

Where egresswatch differs on purpose because tshark is wrong or does not look,
the difference is listed in DIFFERENCES with its reason, item by item: a
listed item that no longer differs fails the test too, so the list stays true.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from egresswatch.cli.replay import replay_files
from egresswatch.config import Config
from egresswatch.model import Event
from tests.corpus import CORPUS, corpus_dir

Item = tuple[str, str | None]

# capture (relative to public/) -> (extra in egresswatch, missing in egresswatch, reason)
DIFFERENCES: dict[str, tuple[set[Item], set[Item], str]] = {
    "zeek/dns/dns-invalid-names.pcap": (
        set(),
        {("dns_query", "<Name contains a pointer that loops>")},
        "tshark prints a placeholder text where the name is; the question name has a compression "
        "pointer loop, so egresswatch reports qname null (as tshark itself does for frames 1 and 3) "
        "rather than a string that looks like a domain",
    ),
}

_OCTAL = re.compile(r"\\([0-7]{3})")
_ESCAPE = re.compile(r"\\([0-9]{3}|[^0-9])")  # \DDD, \. and \\ (lossless presentation form)
# glib and Python replace invalid UTF-8 sequences with different numbers of U+FFFD
_FFFD_RUN = re.compile("\ufffd+")


def canon_tshark(name: str | None) -> str | None:
    if name is None:
        return None
    if name == "<Root>":
        return "."
    return _FFFD_RUN.sub("\ufffd", _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), name))


def canon_ours(name: str | None) -> str | None:
    if name is None:
        return None

    raw = bytearray()
    for i, part in enumerate(_ESCAPE.split(name)):
        if i % 2 == 0:
            raw += part.encode()
        else:
            raw += bytes([int(part)]) if part.isdigit() else part.encode()
    return _FFFD_RUN.sub("\ufffd", raw.decode("utf-8", errors="replace"))


def _items_expected(path: Path) -> set[Item]:
    items: set[Item] = set()
    for line in path.read_text().splitlines():
        e = json.loads(line)
        if e["kind"] in ("dns_query", "dns_answer"):
            items.add((e["kind"], canon_tshark(e["qname"])))
        elif e["kind"] in ("tls_sni", "quic_sni"):
            items.add((e["kind"], canon_tshark(e["sni"])))
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
            items.add((o.kind, canon_ours(o.sni)))
    return items


def _captures() -> list[str]:
    public = CORPUS / "public"
    if not public.is_dir():
        return ["<corpus absent>"]
    return sorted(
        str(p.relative_to(public))
        for p in public.rglob("*")
        if p.suffix in (".pcap", ".pcapng") and p.parent.name != "expected"
    )


@pytest.mark.corpus
@pytest.mark.parametrize("capture", _captures())
def test_capture_agrees_with_tshark(capture: str) -> None:
    corpus = corpus_dir()
    path = corpus / "public" / capture
    expected = _items_expected(corpus / "public" / "expected" / (capture.replace("/", "__") + ".jsonl"))
    ours = _items_ours(path)
    extra, missing, _why = DIFFERENCES.get(capture, (set(), set(), ""))
    assert ours - expected == extra, (
        f"egresswatch reports more than tshark: {sorted(map(str, ours - expected))}"
    )
    assert expected - ours == missing, f"egresswatch misses: {sorted(map(str, expected - ours))}"


def test_differences_are_reasoned() -> None:
    for capture, (extra, missing, why) in DIFFERENCES.items():
        assert extra or missing, capture
        assert len(why) > 20, f"{capture}: give the reason"
