"""Bytes sent per flow: the upload detector (judge/upload.py), its place in the
policy and the flow tracker, the daemon's summaries (service/volume.py) over a
kernel table, stored volumes (store/volume.py) and `egresswatch stats`."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from click.testing import CliRunner

from egresswatch.cli.events import stats_cmd
from egresswatch.cli.render import render_stats
from egresswatch.config import Config, PolicyConfig, ServerPolicy
from egresswatch.ebpf.records import FlowVolume
from egresswatch.judge.flows import FlowTracker, flow_id
from egresswatch.judge.policy import Policy
from egresswatch.judge.upload import UploadDetector
from egresswatch.model import (
    CONNECT,
    DNS_QUERY,
    FLOW_SUMMARY,
    TLS_SNI,
    Attribution,
    Event,
    Observation,
    ProcessInfo,
    Verdict,
)
from egresswatch.service.volume import VolumeWatch
from egresswatch.store.db import Store
from egresswatch.store.query import query_events
from egresswatch.store.stats import stats
from egresswatch.store.volume import add_volumes, upload_volume

MB = 1_000_000
WATCHED = Attribution(process=ProcessInfo(42, 1.0, name="node"), server="gh", host="cursor", phase="run")


def summary(new: int, total: int | None = None, ts: float = 100.0, dst: str = "192.0.2.7", sport: int = 40000,
            name: str | None = "api.github.com", ended: bool = False) -> Observation:  # fmt: skip
    return Observation(ts=ts, frame=0, kind=FLOW_SUMMARY, proto="tcp", src="10.0.0.2", sport=sport, dst=dst,
                       dport=443, sni=name, bytes_out=total if total is not None else new, bytes_new=new,
                       ended=ended)  # fmt: skip


def test_uploads_to_one_destination_add_up_within_the_window() -> None:
    det = UploadDetector(max_bytes=4 * MB, window=3600)
    # three connections of 1.5 MB each: the third crosses the limit
    verdicts = [
        det.judge("gh", summary(1_500_000, ts=100 + i, sport=40000 + i), "api.github.com") for i in range(3)
    ]
    assert [v.reason for v in verdicts] == ["volume", "volume", "upload"]
    v = verdicts[2]
    assert (v.verdict, v.severity) == ("flagged", "high")
    assert (
        "4,500,000 bytes" in (v.rule or "")
        and "github.com" in (v.rule or "")
        and "limit 4,000,000" in (v.rule or "")
    )
    # subdomains of one registrable domain add up; another server has its own count
    assert det.judge("gh", summary(10, ts=104), "uploads.github.com").reason == "upload"
    assert det.judge("other", summary(1_500_000, ts=104), "api.github.com").reason == "volume"
    # an hour later the old bytes no longer count
    assert det.judge("gh", summary(1_000, ts=100 + 3600 + 61), "api.github.com").reason == "volume"


def test_one_flow_over_the_limit_flags_and_zero_turns_it_off() -> None:
    det = UploadDetector(max_bytes=4 * MB, window=60)
    # a flow whose earlier bytes fell out of the window still carries its own total
    assert det.judge("gh", summary(100, total=5 * MB, ts=1000.0), "x.example").reason == "upload"
    det.configure(0, 60)
    assert det.judge("gh", summary(50 * MB, ts=1001.0), "x.example").reason == "volume"
    # without a name the address is the destination
    det.configure(MB, 60)
    v = det.judge("gh", summary(2 * MB, ts=1002.0, name=None, dst="198.51.100.9"), None)
    assert v.reason == "upload" and "198.51.100.9" in (v.rule or "")


def test_a_flood_of_destinations_does_not_reset_a_heavy_one() -> None:
    det = UploadDetector(max_bytes=4 * MB, window=3600, max_keys=100)
    det.judge("gh", summary(3 * MB, ts=1.0), "victim.example")
    for i in range(1000):  # an attacker flushes the table with tiny flows
        det.judge("gh", summary(1, ts=2.0, name=f"n{i}.example"), f"n{i}.example")
    assert det.counters["evicted"] >= 900
    assert det.judge("gh", summary(2 * MB, ts=3.0), "victim.example").reason == "upload"


def test_policy_flags_an_upload_to_an_allowlisted_name() -> None:
    config = Config(policy=PolicyConfig(learning=False, upload_max_bytes=4 * MB),
                    servers={"gh": ServerPolicy(allow=("api.github.com",))})  # fmt: skip
    p = Policy(config)
    assert p.judge(summary(5 * MB), WATCHED, "api.github.com").reason == "upload"
    assert p.judge(summary(100, name="other.example"), WATCHED, "other.example").reason == "volume"
    outside = Attribution(process=ProcessInfo(7, 1.0))
    assert p.judge(summary(50 * MB), outside, "api.github.com").reason == "outside_mcp"
    p.reload(Config(policy=PolicyConfig(learning=False, upload_max_bytes=0)))
    assert p.judge(summary(50 * MB), WATCHED, "api.github.com").reason == "volume"


def test_a_summary_takes_its_flows_id_and_decides_only_an_upload() -> None:
    ft = FlowTracker()
    syn = Observation(ts=10.0, frame=1, kind=CONNECT, proto="tcp", src="10.0.0.2", sport=40000, dst="192.0.2.7",
                      dport=443)  # fmt: skip
    hello = Observation(ts=10.1, frame=2, kind=TLS_SNI, proto="tcp", src="10.0.0.2", sport=40000, dst="192.0.2.7",
                        dport=443, sni="api.github.com")  # fmt: skip
    ok = Verdict("allowed", "allowlist", "x", "info")
    ft.admit(Event(syn, WATCHED, ok))
    decided = ft.admit(Event(hello, WATCHED, ok))
    fid = decided[-1].flow_id
    assert fid == flow_id(("tcp", "10.0.0.2", 40000, "192.0.2.7", 443), 10.0)
    low = ft.admit(Event(summary(10), WATCHED, Verdict("allowed", "volume", None, "info")))
    high = ft.admit(Event(summary(5 * MB), WATCHED, Verdict("flagged", "upload", None, "high")))
    assert [(e.flow_id, e.decides) for e in low + high] == [(fid, False), (fid, True)]
    d = high[0].to_dict()
    assert (d["bytes_out"], d["bytes_new"], d["ended"], d["flow_id"], d["decides"]) == (
        5 * MB,
        5 * MB,
        False,
        fid,
        True,
    )
    assert "sni" not in d  # the name is dst_name


class FakeKernel:
    def __init__(self) -> None:
        self.vols: dict[tuple[str, tuple[str, int], tuple[str, int]], FlowVolume] = {}

    def volume(self, proto: str, local: tuple[str, int], remote: tuple[str, int]) -> FlowVolume | None:
        return self.vols.get((proto, local, remote))

    def epoch(self, boot_ns: int) -> float:
        return 1000.0 + boot_ns / 1e9


def test_the_daemon_summarizes_watched_flows_only() -> None:
    k = FakeKernel()
    w = VolumeWatch(k, interval=10)
    tcp = Observation(ts=1001.0, frame=1, kind=TLS_SNI, proto="tcp", src="10.0.0.2", sport=40000, dst="192.0.2.7",
                      dport=443, sni="api.github.com")  # fmt: skip
    other = Observation(ts=1.0, frame=1, kind=CONNECT, proto="tcp", src="10.0.0.2", sport=40001, dst="192.0.2.7",
                        dport=443)  # fmt: skip
    dns = Observation(ts=1.0, frame=1, kind=DNS_QUERY, proto="udp", src="10.0.0.2", sport=40002, dst="10.0.0.1",
                      dport=53, qname="x.test")  # fmt: skip
    w.write(Event(tcp, WATCHED))
    w.write(Event(other, Attribution(process=ProcessInfo(7, 1.0))))  # outside MCP trees
    w.write(Event(dns, WATCHED))  # DNS is judged by its own detectors
    assert len(w) == 1
    key = ("tcp", ("10.0.0.2", 40000), ("192.0.2.7", 443))
    k.vols[key] = FlowVolume(1000, 2, 1_000_000_000, 2_000_000_000, 0)
    k.vols[("tcp", ("10.0.0.2", 40001), ("192.0.2.7", 443))] = FlowVolume(9 * MB, 9, 0, 1, 0)
    (obs, attr), = w.due(force=True)  # fmt: skip
    assert (obs.kind, obs.bytes_out, obs.bytes_new, obs.ended, obs.sni, obs.ts) == (
        FLOW_SUMMARY, 1000, 1000, False, "api.github.com", 1002.0)  # fmt: skip
    assert attr is WATCHED
    assert w.due(force=True) == []  # nothing new
    k.vols[key] = FlowVolume(1500, 3, 1_000_000_000, 3_000_000_000, 4_000_000_000)  # more, then the end
    (obs, _a), = w.due(force=True)  # fmt: skip
    assert (obs.bytes_out, obs.bytes_new, obs.ended, obs.ts) == (1500, 500, True, 1004.0)
    assert len(w) == 0  # forgotten after its end
    # the port reused by another connection before the first summary: not the flow's bytes
    w.write(Event(tcp, WATCHED))
    k.vols[key] = FlowVolume(7 * MB, 5, 10_000_000_000, 11_000_000_000, 0)  # started 9 s after the hello
    assert w.due(force=True) == [] and len(w) == 0 and w.counters["flow_summary_reused"] == 1
    # ... or after it: the count's start changed
    w.write(Event(tcp, WATCHED))
    k.vols[key] = FlowVolume(100, 1, 1_500_000_000, 1_600_000_000, 0)
    assert len(w.due(force=True)) == 1
    k.vols[key] = FlowVolume(9 * MB, 9, 5_000_000_000, 6_000_000_000, 0)
    assert w.due(force=True) == [] and len(w) == 0 and w.counters["flow_summary_reused"] == 2


def _store_with_uploads(path: Path) -> Store:
    store = Store(path)
    up = Verdict("flagged", "upload", "r", "high")
    vol = Verdict("allowed", "volume", "r", "info")
    hello = Observation(ts=10.0, frame=1, kind=TLS_SNI, proto="tcp", src="10.0.0.2", sport=40000,
                        dst="192.0.2.7", dport=443, sni="api.github.com")  # fmt: skip
    store.write(Event(hello, WATCHED, Verdict("allowed", "allowlist", "x", "info"), "api.github.com",
                      flow_id="f1", decides=True))  # fmt: skip
    store.write(Event(summary(3 * MB, ts=20.0), WATCHED, vol, "api.github.com", flow_id="f1", decides=False))
    store.write(Event(summary(2 * MB, 5 * MB, ts=30.0), WATCHED, up, "api.github.com", flow_id="f1",
                      decides=True))  # fmt: skip
    store.write(Event(summary(700, ts=31.0, sport=40009, dst="198.51.100.9", name=None), WATCHED, vol,
                      None, decides=False))  # fmt: skip
    store.flush()
    return store


def test_stored_volumes_and_stats(tmp_path: Path) -> None:
    store = _store_with_uploads(tmp_path / "e.db")
    try:
        rows = query_events(store, limit=0)
        sums = [r for r in rows if r["kind"] == "flow_summary"]
        assert [(r["bytes_out"], r["bytes_new"], r["ended"]) for r in sums] == [
            (700, 700, False), (5 * MB, 2 * MB, False), (3 * MB, 3 * MB, False)]  # fmt: skip
        vols = upload_volume(store)
        assert vols == {"gh": [
            {"destination": "api.github.com", "bytes_out": 5 * MB, "flows": 1, "largest_flow": 5 * MB,
             "flagged": 1, "first_seen": 20.0, "last_seen": 30.0},
            {"destination": "198.51.100.9", "bytes_out": 700, "flows": 1, "largest_flow": 700, "flagged": 0,
             "first_seen": 31.0, "last_seen": 31.0},
        ]}  # fmt: skip
        assert upload_volume(store, since=25.0)["gh"][0]["bytes_out"] == 2 * MB
        st = add_volumes(stats(store), store)
    finally:
        store.close()
    gh = st[0]
    # only the flagged summary counts as an event of the destination; every byte counts as volume
    assert gh["bytes_out"] == 5 * MB + 700 and gh["flagged_by_reason"] == {"upload": 1}
    assert {d["destination"]: (d["count"], d["bytes_out"]) for d in gh["destinations"]} == {
        "api.github.com": (2, 5 * MB)}  # fmt: skip
    out = io.StringIO()
    render_stats(st, "table", out, color=False)
    text = out.getvalue()
    assert "uploaded 5,000,700 bytes (4.8 MiB):" in text
    line = next(x for x in text.splitlines() if x.strip().startswith("api.github.com") and "5,000,000" in x)
    assert line.split()[1:] == ["5,000,000", "1", "5,000,000", "1"]
    out = io.StringIO()
    render_stats(st, "csv", out)
    assert list(csv.DictReader(io.StringIO(out.getvalue())))[0]["bytes_out"] == str(5 * MB)


def test_stats_command_prints_the_upload_volume(tmp_path: Path) -> None:
    _store_with_uploads(tmp_path / "e.db").close()
    res = CliRunner().invoke(stats_cmd, ["--db", str(tmp_path / "e.db"), "--format", "json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)[0]["uploads"][0]["bytes_out"] == 5 * MB
    res = CliRunner().invoke(stats_cmd, ["--db", str(tmp_path / "e.db")])
    assert "uploaded 5,000,700 bytes" in res.output
