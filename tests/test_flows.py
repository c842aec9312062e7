"""One verdict per flow (egresswatch.judge.flows), names shared by one address
(egresswatch.judge.names), their judgement (egresswatch.judge.policy), storage and
`events --flows`. The capture-level scenario is pcaps/mcp-flows.pcap
(tests/test_golden.py); the live one tests/test_flows_live.py."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import click
import sqlite_utils
from click.testing import CliRunner

from egresswatch.cli.events import events as events_cmd
from egresswatch.config import Config, PolicyConfig, ServerPolicy
from egresswatch.judge.flows import HELLO_WINDOW, FlowTracker, flow_id
from egresswatch.judge.names import MAX_NAMES_PER_ADDRESS, NameMemory
from egresswatch.judge.policy import Policy
from egresswatch.model import (
    CONNECT,
    DNS_ANSWER,
    QUIC_SNI,
    TLS_SNI,
    Attribution,
    DnsRecord,
    Event,
    Frame,
    Observation,
    ProcessInfo,
)
from egresswatch.pipeline import Pipeline
from egresswatch.store.db import Store
from egresswatch.store.schema import _m0001

LOCAL, RESOLVER, CDN = "10.0.0.5", "10.0.0.53", "198.51.100.77"
SRV = Attribution(process=ProcessInfo(pid=42, create_time=1.0), server="notes", host="claude", phase="run")


def answer(name: str, ip: str = CDN, ts: float = 1.0, ttl: int = 300) -> Observation:
    return Observation(
        ts=ts, frame=1, kind=DNS_ANSWER, proto="udp", src=RESOLVER, sport=53, dst=LOCAL, dport=5353,
        qname=name, qtype=1, rcode=0, answers=(ip,), records=(DnsRecord(name, 1, ttl, ip),),
    )  # fmt: skip


def syn(ts: float, sport: int = 40000, dst: str = CDN, dport: int = 443) -> Observation:
    return Observation(
        ts=ts, frame=0, kind=CONNECT, proto="tcp", src=LOCAL, sport=sport, dst=dst, dport=dport
    )


def hello(ts: float, sni: str | None, sport: int = 40000, dst: str = CDN, **kw: object) -> Observation:
    kind = str(kw.pop("kind", TLS_SNI))
    proto = "udp" if kind == QUIC_SNI else "tcp"
    return Observation(
        ts=ts,
        frame=0,
        kind=kind,
        proto=proto,
        src=LOCAL,
        sport=sport,
        dst=dst,
        dport=443,
        sni=sni,  # type: ignore[arg-type]
        **kw,  # type: ignore[arg-type]
    )


class Script:
    """A decoder that yields prepared observations, one per frame (the
    observation's ts is the frame's ts)."""

    def __init__(self) -> None:
        from collections import Counter

        self.counters: Counter[str] = Counter()
        self.pending: list[Observation] = []

    def feed(self, frame: Frame) -> list[Observation]:
        return [self.pending.pop(0)] if self.pending else []

    def finish(self) -> list[Observation]:
        return []


class Rig:
    def __init__(
        self, allow: Iterable[str] = ("api.notes.example",), learning: bool = False, **kw: float
    ) -> None:
        config = Config(
            policy=PolicyConfig(learning=learning),
            servers={"notes": ServerPolicy(allow=tuple(allow))},
        )
        self.names = NameMemory()
        self.flows = FlowTracker(**kw)  # type: ignore[arg-type]
        self.decoder = Script()
        self.out: list[Event] = []

        class One:
            def attribute(self, obs: Observation, frame: Frame) -> Attribution:
                return SRV

        self.pipe = Pipeline(self.decoder, One(), Policy(config, resolved=self.names.resolved), self.names,
                             flows=self.flows)  # fmt: skip

    def __call__(self, obs: Observation | None, ts: float | None = None) -> list[Event]:
        """Feed one frame (carrying ``obs``, or nothing at time ``ts``)."""
        if obs is not None:
            self.decoder.pending.append(obs)
        got = self.pipe.feed(Frame(ts=obs.ts if obs is not None else float(ts or 0), data=b"", linktype=1))
        self.out += got
        return got

    def finish(self) -> list[Event]:
        got = self.pipe.finish()
        self.out += got
        return got


def shared(rig: Rig, names: Iterable[str] = ("collector.evil.example", "api.notes.example")) -> None:
    for i, n in enumerate(names):
        rig(answer(n, ts=1.0 + i / 100))


# --- the flow tracker ---------------------------------------------------------------


def test_hello_decides_and_the_syn_stays_a_provisional_record() -> None:
    rig = Rig()
    shared(rig)
    assert rig(syn(2.0)) == []  # held until its flow is decided
    first, second = rig(hello(2.1, "api.notes.example"))
    assert (first.obs.kind, first.decides, first.verdict.verdict) == (CONNECT, False, "flagged")
    assert first.candidates == ("api.notes.example", "collector.evil.example") and first.dst_name is None
    assert (second.obs.kind, second.decides, second.verdict.reason) == (TLS_SNI, True, "allowlist")
    assert first.flow_id == second.flow_id == flow_id(("tcp", LOCAL, 40000, CDN, 443), 2.0)
    assert rig.flows.next_due == float("inf")


def test_a_flow_without_hello_is_decided_on_frame_time_after_the_window() -> None:
    rig = Rig()
    shared(rig)
    rig(syn(2.0))
    assert rig(None, ts=2.0 + HELLO_WINDOW - 0.001) == []  # any later frame drives the clock
    (decided,) = rig(None, ts=2.0 + HELLO_WINDOW)
    assert decided.decides and decided.obs.kind == CONNECT
    assert decided.verdict.reason == "not_allowlisted" and "collector.evil.example" in (
        decided.verdict.rule or ""
    )
    assert decided.destination() == "api.notes.example | collector.evil.example"
    # a hello after the decision: recorded with the flow's id, and it cannot alert twice
    (late,) = rig(hello(9.0, "collector.evil.example"))
    assert late.flow_id == decided.flow_id and not late.decides


def test_a_hello_handed_over_before_its_syn_decides_and_the_late_syn_joins_its_flow() -> None:
    """The capture's fast lane hands a whole ClientHello over before the SYN
    queued ahead of it: the hello decides at once, the SYN is linked to it."""
    rig = Rig()
    shared(rig)
    (h,) = rig(hello(2.1, "collector.evil.example"))
    assert h.decides and h.verdict.verdict == "flagged" and rig.flows.next_due == float("inf")
    (s,) = rig(syn(2.0))  # stamped before the hello, handled after it
    assert s.obs.kind == CONNECT and s.flow_id == h.flow_id and not s.decides
    assert rig.flows.next_due == float("inf")  # not held: the flow is decided
    # an allowlisted hello first, then its SYN flagged on its address: the SYN decides (one alert)
    (ok,) = rig(hello(3.1, "api.notes.example", sport=40001))
    assert ok.decides and ok.verdict.reason == "allowlist"
    (late,) = rig(syn(3.0, sport=40001))
    assert late.flow_id == ok.flow_id and late.decides and late.verdict.verdict == "flagged"
    assert rig(syn(30.0)) == []  # a later connection on the same ports is a new flow, held


def test_finish_decides_held_flows_and_a_new_syn_on_the_same_tuple_ends_the_old_flow() -> None:
    rig = Rig()
    shared(rig)
    rig(syn(2.0))
    (old,) = rig(syn(3.0))  # port reuse: a new flow; the old one is decided by its address
    assert old.obs.ts == 2.0 and old.decides
    (new,) = rig.finish()
    assert new.obs.ts == 3.0 and new.decides and new.flow_id != old.flow_id
    assert len(rig.flows) == 0


def test_an_allowed_flow_escalates_once_on_a_flagged_late_hello() -> None:
    rig = Rig(allow=("api.notes.example", "collector.evil.example"))
    shared(rig)
    rig(syn(2.0))
    (allowed,) = rig(None, ts=2.0 + HELLO_WINDOW)
    assert allowed.verdict.reason == "allowlist" and "every name of" in (allowed.verdict.rule or "")
    (late,) = rig(hello(8.0, "third.example"))  # flagged after an allowed decision: now the decision
    assert late.decides and late.verdict.reason == "not_allowlisted" and late.flow_id == allowed.flow_id
    (again,) = rig(hello(8.5, "fourth.example"))
    assert not again.decides  # never a second alert for one flow


def test_a_hello_cannot_launder_a_hard_coded_address() -> None:
    rig = Rig()
    rig(syn(2.0, dst="203.0.113.9"))  # never resolved
    syn_ev, decision = rig(hello(2.1, "api.notes.example", dst="203.0.113.9"))
    assert syn_ev.verdict.reason == "direct_ip" and not syn_ev.decides
    assert decision.decides and decision.verdict.reason == "direct_ip"
    assert (
        decision.verdict.rule
        == "203.0.113.9:443 was never resolved by this server; hello SNI api.notes.example"
    )
    # a hello flagged high on its own keeps its own verdict
    rig(syn(3.0, sport=40001, dst="203.0.113.9"))
    _, doh = rig(hello(3.1, "dns.google", sport=40001, dst="203.0.113.9"))
    assert doh.verdict.reason == "doh_dot" and doh.decides


def test_quic_and_mid_capture_hellos_open_and_decide_their_flow() -> None:
    rig = Rig()
    (q,) = rig(hello(2.0, "api.notes.example", kind=QUIC_SNI))
    assert q.decides and q.flow_id == flow_id(("udp", LOCAL, 40000, CDN, 443), 2.0)


def test_held_syns_are_bounded() -> None:
    rig = Rig(max_open=2)
    shared(rig)
    assert rig(syn(2.0, sport=1)) == [] and rig(syn(2.1, sport=2)) == []
    (oldest,) = rig(syn(2.2, sport=3))
    assert oldest.obs.sport == 1 and oldest.decides
    assert len(rig.flows) == 2


def test_flow_ids_are_deterministic() -> None:
    def run() -> list[str | None]:
        rig = Rig()
        shared(rig)
        rig(syn(2.0))
        rig(hello(2.1, "api.notes.example"))
        rig(syn(2.5, sport=40002))
        rig.finish()
        return [e.flow_id for e in rig.out if e.obs.kind != DNS_ANSWER]

    assert run() == run()
    assert len(set(run())) == 2


# --- name memory: every name of an address --------------------------------------------


def test_every_name_resolved_to_an_address_is_kept_with_its_own_expiry() -> None:
    mem = NameMemory()
    mem.observe(answer("a.example", ts=0.0, ttl=10), SRV)  # kept at least MIN_TTL (300 s)
    mem.observe(answer("b.example", ts=200.0, ttl=10), SRV)
    owner = ("server", "claude", "notes")
    assert mem.queried(owner, CDN, 250.0) == ("a.example", "b.example")
    assert mem.lookup(owner, CDN, 250.0) == "b.example"  # the latest answer
    assert mem.queried(owner, CDN, 301.0) == ("b.example",)  # a.example expired on its own
    assert mem.observe(syn(301.0), SRV) == "b.example"  # one name left: it names the destination
    assert len(mem) == 1


def test_names_per_address_and_in_all_are_bounded() -> None:
    mem = NameMemory(max_entries=50)
    for i in range(MAX_NAMES_PER_ADDRESS + 5):
        mem.observe(answer(f"n{i:03d}.example", ts=float(i)), SRV)
    owner = ("server", "claude", "notes")
    kept = mem.queried(owner, CDN, 40.0)
    assert len(kept) == MAX_NAMES_PER_ADDRESS and "n000.example" not in kept
    for i in range(60):
        mem.observe(answer("x.example", ip=f"192.0.2.{i}", ts=50.0), SRV)
    assert len(mem) <= 50


# --- policy: names sharing an address -------------------------------------------------


def test_shared_address_allowed_only_by_cidr_or_every_name() -> None:
    rig = Rig(allow=("api.notes.example", "198.51.100.0/24:443"))
    shared(rig)
    rig(syn(2.0))
    (ev,) = rig.finish()
    assert ev.verdict.reason == "allowlist" and ev.verdict.rule == "servers.notes.allow: 198.51.100.0/24:443"
    rig = Rig(allow=("*.notes.example",))
    shared(rig, ("a.notes.example", "b.notes.example"))
    rig(syn(2.0))
    (ev,) = rig.finish()
    assert ev.verdict.rule == "servers.notes.allow: *.notes.example (every name of 198.51.100.77)"


def test_shared_address_in_learning_mode_learns_the_address() -> None:
    rig = Rig(allow=(), learning=True)
    shared(rig)
    rig(syn(2.0))
    rig(syn(3.0, sport=40001))
    first, second = rig.finish()
    assert (first.verdict.reason, second.verdict.reason) == ("first_seen", "learned")
    assert first.verdict.rule == "198.51.100.77 (one of api.notes.example, collector.evil.example)"


def test_shared_address_with_a_doh_name_is_doh() -> None:
    rig = Rig()
    shared(rig, ("api.notes.example", "dns.google"))
    rig(syn(2.0))
    (ev,) = rig.finish()
    assert ev.verdict.reason == "doh_dot" and "dns.google" in (ev.verdict.rule or "")


# --- storage and `events --flows` ---------------------------------------------------


def test_old_databases_migrate_and_old_rows_read_as_deciding(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    old = sqlite_utils.Migrations("egresswatch")
    old(name="0001_events_alerts")(_m0001)
    db = sqlite_utils.Database(path)
    old.apply(db)
    db.execute(
        "INSERT INTO events (ts, kind, proto, src, sport, dst, dport, verdict, reason, severity)"
        " VALUES (1.0, 'connect', 'tcp', '10.0.0.5', 40000, '198.51.100.77', 443, 'flagged', 'direct_ip', 'high')"
    )
    db.conn.commit()
    db.close()
    from egresswatch.store.query import query_events

    with Store(path) as s:
        (row,) = query_events(s)
        assert row["decides"] is True and row["flow_id"] is None and row["candidates"] == []
        cols = {r[1] for r in s.execute("PRAGMA table_info(events)")}
        assert {"flow_id", "candidates", "decides"} <= cols


def test_events_flows_one_line_per_flow(tmp_path: Path) -> None:
    rig = Rig()
    shared(rig)
    rig(syn(2.0))
    rig(hello(2.1, "collector.evil.example"))
    rig(syn(3.0, sport=40001))
    rig.finish()
    path = tmp_path / "e.db"
    with Store(path) as s:
        for e in rig.out:
            s.write(e)
    group = click.Group(commands={"events": events_cmd})
    r = CliRunner().invoke(group, ["events", "--db", str(path), "--format", "jsonl"])
    assert r.exit_code == 0 and len(r.stdout.splitlines()) == 5  # 2 DNS answers, 2 SYNs, 1 hello
    r = CliRunner().invoke(group, ["events", "--db", str(path), "--format", "jsonl", "--flows"])
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert [(d["kind"], d["flow_kinds"], d["decides"]) for d in rows] == [
        ("connect", ["connect"], True),
        ("tls_sni", ["connect", "tls_sni"], True),
    ]
    assert rows[0]["candidates"] == ["api.notes.example", "collector.evil.example"]
    r = CliRunner().invoke(group, ["events", "--db", str(path), "--flows"])
    lines = r.stdout.splitlines()
    assert r.exit_code == 0 and len(lines) == 3
    assert "connect+tls_sni" in lines[2] and "collector.evil.example (198.51.100.77:443)" in lines[2]
    assert "api.notes.example | collector.evil.example (198.51.100.77:443)" in lines[1]
    r = CliRunner().invoke(group, ["events", "--db", str(path)])
    assert "(provisional) not_allowlisted" in r.stdout
    r = CliRunner().invoke(group, ["events", "--db", str(path), "--flows", "--follow"])
    assert r.exit_code == 2 and "--flows cannot be combined with --follow" in r.stderr
    conn = sqlite3.connect(path)
    assert (
        conn.execute("SELECT count(DISTINCT flow_id) FROM events WHERE flow_id IS NOT NULL").fetchone()[0]
        == 2
    )
    conn.close()


def test_allowlist_suggest_names_a_flow_by_its_hello_not_its_syn() -> None:
    from egresswatch.judge.allowlist import suggest

    rig = Rig()
    shared(rig)
    rig(syn(2.0))
    rig(hello(2.1, "api.notes.example"))
    assert suggest([e.to_dict() for e in rig.out]) == {"notes": ["api.notes.example"]}


def test_stats_count_a_flow_once_by_its_decision(tmp_path: Path) -> None:
    from egresswatch.store.stats import stats

    rig = Rig()
    shared(rig)
    rig(syn(2.0))
    rig(hello(2.1, "api.notes.example"))  # allowed; its SYN was provisionally flagged
    with Store(tmp_path / "e.db") as s:
        for e in rig.out:
            s.write(e)
        s.flush()
        (srv,) = stats(s)
    assert (srv["events"], srv["flagged"], srv["flagged_by_reason"]) == (1, 0, {})
    assert [d["destination"] for d in srv["destinations"]] == ["api.notes.example"]


def test_stats_counting_flows_once_still_reads_only_the_covering_index(tmp_path: Path) -> None:
    from egresswatch.store.stats import stats

    rig = Rig()
    shared(rig)
    rig(syn(2.0))
    rig(hello(2.1, "api.notes.example"))
    with Store(tmp_path / "e.db") as s:
        for e in rig.out:
            s.write(e)
        s.flush()
        seen: list[str] = []
        s.conn.set_trace_callback(seen.append)
        stats(s, since=0.0)
        s.conn.set_trace_callback(None)
        grouped = [q for q in seen if "GROUP BY destination" in q]
        assert grouped
        for q in grouped:
            plan = " ".join(str(tuple(r)) for r in s.conn.execute("EXPLAIN QUERY PLAN " + q))
            assert "COVERING INDEX events_server_ts_dest" in plan, plan


def test_real_frames_hello_handed_over_before_its_syn() -> None:
    """The real engine and tracker, fed a whole ClientHello before the SYN that
    was queued ahead of it (the fast lane's order): one tls_sni that decides,
    the connect linked to it, no tls_incomplete, and the fast lane picks that
    hello frame (and not the SYN)."""
    from egresswatch.capture.fastlane import jumps_queue
    from egresswatch.decode.engine import Engine
    from tests.test_engine import ISN, tcp
    from tests.test_tls import python_hello

    syn_pkt = tcp(50000, 443, "S", ISN)
    hello_pkt = tcp(50000, 443, "PA", ISN + 1, python_hello("upload.evil.example"))
    assert jumps_queue(1, bytes(hello_pkt), 40) and not jumps_queue(1, bytes(syn_pkt), 40)
    config = Config(
        policy=PolicyConfig(learning=False), servers={"notes": ServerPolicy(allow=("ok.example",))}
    )

    class One:
        def attribute(self, obs: Observation, frame: Frame) -> Attribution:
            return SRV

    pipe = Pipeline(Engine(), One(), Policy(config), NameMemory(), flows=FlowTracker())
    got = pipe.feed(Frame(ts=10.02, data=bytes(hello_pkt), linktype=1, index=2))
    got += pipe.feed(Frame(ts=10.0, data=bytes(syn_pkt), linktype=1, index=1))
    got += pipe.feed(Frame(ts=30.0, data=bytes(tcp(50000, 443, "FA", ISN + 600)), linktype=1, index=3))
    got += pipe.finish()
    assert [(e.obs.kind, e.decides) for e in got] == [(TLS_SNI, True), (CONNECT, False)], got
    assert got[0].flow_id == got[1].flow_id and got[0].verdict.verdict == "flagged"
