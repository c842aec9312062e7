"""The flow invariants of issue #15, checked over golden and live runs.

An independent oracle: works on event dicts (``Event.to_dict()`` or stored
rows, same keys) and on alerts given as (ts, pid, destination, reason).
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from typing import Any, NamedTuple

FLOW_KINDS = ("connect", "tls_sni", "tls_incomplete", "quic_sni")


class Sent(NamedTuple):
    ts: float
    pid: int | None
    destination: str
    reason: str


def own_destination(d: dict[str, Any]) -> str:
    """What an event's own flow carried: its SNI or query name, the one name
    resolved to the address, else all candidate names, else the address."""
    return (
        d.get("dst_name")
        or d.get("qname")
        or d.get("sni")
        or " | ".join(d.get("candidates") or ())
        or d["dst"]
    )


def shows(shown: str, full: str) -> bool:
    """Whether an alert's ``shown`` destination stands for ``full``: the name
    itself, a long name cut with "...", or for a tunnelled name its size and
    the domain it sits under ("70-byte name under exfil.example")."""
    if shown == full:
        return True
    if shown.endswith("...") and full.startswith(shown[:-3]):
        return True
    size, sep, under = shown.partition("-byte name under ")
    return bool(sep) and size == str(len(full)) and full.endswith("." + under)


def carried(flow: Iterable[dict[str, Any]]) -> set[str]:
    """Every destination a flow's own records name."""
    out: set[str] = set()
    for d in flow:
        out |= {x for x in (d.get("sni"), d.get("dst_name"), d["dst"]) if x}
        if d.get("candidates"):
            out.add(" | ".join(d["candidates"]))
    return out


def check(events: list[dict[str, Any]], alerts: Iterable[Sent]) -> Counter[str]:
    """Assert: every alert comes from one deciding event, names that event's own
    destination (one its flow carried), and no flow raises two alerts.
    Returns alerts per flow id."""
    flows: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for d in events:
        if d["kind"] in FLOW_KINDS:
            assert d.get("flow_id"), f"flow event without a flow id: {d}"
            flows[d["flow_id"]].append(d)
    for fid, flow in flows.items():
        keys = {(d["proto"], d["src"], d["sport"], d["dst"], d["dport"]) for d in flow}
        assert len(keys) == 1, f"flow {fid} spans several 5-tuples: {keys}"
        assert any(d["decides"] for d in flow), f"flow {fid} was never decided"
    index: dict[tuple[float, int | None, str], list[dict[str, Any]]] = defaultdict(list)
    for d in events:
        index[(round(d["ts"], 6), d.get("pid"), d["reason"])].append(d)
    per_flow: Counter[str] = Counter()
    for a in alerts:
        found = [
            d
            for d in index.get((round(a.ts, 6), a.pid, a.reason), [])
            if shows(a.destination, own_destination(d))
        ]
        assert found, f"alert {a} matches no event"
        for d in found:
            if d["kind"] in FLOW_KINDS:
                assert d["decides"], f"alert {a} from an event that does not decide its flow: {d}"
                assert any(shows(a.destination, c) for c in carried(flows[d["flow_id"]])), (
                    f"alert {a} names another flow"
                )
                per_flow[d["flow_id"]] += 1
    twice = {f: n for f, n in per_flow.items() if n > 1}
    assert not twice, f"flows with more than one alert: {twice}"
    return per_flow
