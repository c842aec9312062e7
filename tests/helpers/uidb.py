"""An event database for the `egresswatch ui` tests, made the way the daemon makes
one: captures replayed through the pipeline (decoder, recorded process lookups,
policy) into the Store, flagged events through the Alerter into the alerts table.

The captures are pcaps/mcp-verdicts.pcap (every verdict and reason) and a
second capture written here with the same scenario builder (pcaps/make_verdicts.py,
scapy) in which the github and notes servers resolve and connect to
``<script>alert(1)</script>.example``: a name a hostile server controls.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from egresswatch.alert.deliver import Alerter
from egresswatch.cli.replay import replay_files
from egresswatch.config import AlertsConfig, load_config
from egresswatch.store.db import Store

PCAPS = Path(__file__).resolve().parents[2] / "pcaps"
XSS = "<script>alert(1)</script>.example"
XSS_IP = "198.51.100.99"
LATER = 120.0  # seconds after the verdict scenario
T0_VERDICTS = 1_767_225_600.0  # first packet of pcaps/mcp-verdicts.pcap


def _make_verdicts() -> Any:
    if str(PCAPS) not in sys.path:
        sys.path.insert(0, str(PCAPS))
    import make_verdicts  # type: ignore[import-not-found]

    return make_verdicts


def write_capture(out: Path, name: str, steps: list[tuple[str, ...]], offset: float) -> tuple[Path, Path]:
    """A capture + process records of ``steps`` (``("dns", who, name, answer)``
    or ``("tcp", who, ip, sni)``), ``offset`` seconds after the verdict scenario."""
    mv = _make_verdicts()
    from scapy.utils import wrpcap

    t0 = mv.T0
    mv.T0 = t0 + offset  # the scenario stamps process records from this
    try:
        s = mv.Scenario()
        s.port = 41000 + int(offset) % 1000
        for step in steps:
            if step[0] == "dns":
                s.dns(step[1], step[2], answers=(step[3],))
            else:
                s.tcp(step[1], step[2], step[3])
        for i, p in enumerate(s.pkts):
            p.time = mv.T0 + i * 0.01
    finally:
        mv.T0 = t0
    pcap, procs = out / f"{name}.pcap", out / f"{name}.procs.jsonl"
    wrpcap(str(pcap), s.pkts, linktype=1)
    procs.write_text("".join(line + "\n" for line in s.procs))
    return pcap, procs


def xss_capture(out: Path) -> tuple[Path, Path]:
    steps = [
        ("dns", "github", XSS, XSS_IP),
        ("tcp", "github", XSS_IP, XSS),
        ("dns", "notes", XSS, XSS_IP),
        ("tcp", "notes", XSS_IP, XSS),
    ]
    return write_capture(out, "xss", steps, LATER)


def replay_into(db: Path, captures: list[tuple[Path, Path]], alerts: bool = True) -> None:
    """Replay ``(pcap, procs)`` pairs as one capture into ``db`` (and its alerts table)."""
    cfg = load_config(PCAPS / "mcp-verdicts.toml")
    procs = db.parent / f"{db.stem}-{len(captures)}.procs.jsonl"
    procs.write_text("".join(p.read_text() for _, p in captures))
    store = Store(db)
    sinks: list[Any] = [store]
    if alerts:  # no apprise URL: rows are recorded as no_targets, nothing is sent anywhere
        sinks.append(Alerter(AlertsConfig(urls=(), window_seconds=3600.0), store))
    try:
        for _ in replay_files([pcap for pcap, _ in captures], cfg, sinks, procs):
            pass
    finally:
        for sink in reversed(sinks):
            sink.close()


def build(out: Path) -> Path:
    """events.db in ``out``: the verdict scenario, then the hostile name."""
    db = out / "events.db"
    replay_into(db, [(PCAPS / "mcp-verdicts.pcap", PCAPS / "mcp-verdicts.procs.jsonl"), xss_capture(out)])
    return db
