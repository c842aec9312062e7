"""Shedding under a capture backlog: DNS outside MCP trees skips the sinks; watched events never do."""

from __future__ import annotations

from dnslib import DNSRecord

from egresswatch.config import Config
from egresswatch.decode.engine import Engine
from egresswatch.model import Attribution, Event, Frame, Observation, ProcessInfo
from egresswatch.pipeline import Pipeline
from egresswatch.policy import Policy
from tests.test_engine import frames_of, udp

WATCHED_PORT = 40001


class ByPort:
    """Attribution by local port: one port belongs to an MCP server's process."""

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        if obs.local()[1] == WATCHED_PORT:
            return Attribution(process=ProcessInfo(pid=7, create_time=1.0, name="node"), server="fs")
        return Attribution(reason="not in an MCP tree")


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def write(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def queries(n: int) -> list[Frame]:
    pkts = [udp(WATCHED_PORT if i % 10 == 0 else 50000 + i, 53, DNSRecord.question(f"q{i}.example.com").pack())
            for i in range(n)]  # fmt: skip
    return frames_of(pkts)


def test_backlog_sheds_unwatched_dns_only() -> None:
    behind = {"now": False}
    sink = Sink()
    p = Pipeline(Engine(), ByPort(), Policy(Config()), None, [sink], shed=lambda f: behind["now"])
    frames = queries(100)
    for f in frames[:50]:
        p.feed(f)
    assert len(sink.events) == 50 and p.counters["shed_unwatched_dns"] == 0
    behind["now"] = True
    for f in frames[50:]:
        p.feed(f)
    kept = sink.events[50:]
    assert len(kept) == 5 and all(e.attr.server == "fs" and e.verdict.verdict != "unwatched" for e in kept)
    assert p.counters["shed_unwatched_dns"] == 45


def test_replay_never_sheds() -> None:
    sink = Sink()
    p = Pipeline(Engine(), ByPort(), Policy(Config()), None, [sink])
    for f in queries(30):
        p.feed(f)
    assert len(sink.events) == 30 and p.counters["shed_unwatched_dns"] == 0
