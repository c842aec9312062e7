"""Shedding under a capture backlog: DNS outside MCP trees skips the sinks; watched events never do."""

from __future__ import annotations

from dnslib import DNSRecord

from egresswatch.config import Config
from egresswatch.decode.engine import Engine
from egresswatch.judge.policy import Policy
from egresswatch.model import Attribution, Event, Frame, Observation, ProcessInfo
from egresswatch.pipeline import Pipeline
from tests.test_engine import frames_of, udp

WATCHED_PORT = 40001


UNKNOWN_PORT = 40002


class ByPort:
    """Attribution by local port: one port belongs to an MCP server's process,
    one to no process found, the rest to a process outside MCP trees."""

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        if obs.local()[1] == WATCHED_PORT:
            return Attribution(process=ProcessInfo(pid=7, create_time=1.0, name="node"), server="fs")
        if obs.local()[1] == UNKNOWN_PORT:
            return Attribution(reason="capture behind: remembered sockets only")
        return Attribution(
            process=ProcessInfo(pid=8, create_time=1.0, name="dig"), reason="not in an MCP tree"
        )


class Sink:
    def __init__(self) -> None:
        self.events: list[Event] = []

    def write(self, event: Event) -> None:
        self.events.append(event)

    def close(self) -> None:
        pass


def queries(n: int) -> list[Frame]:
    ports = [WATCHED_PORT if i % 10 == 0 else UNKNOWN_PORT if i % 10 == 1 else 50000 + i for i in range(n)]
    pkts = [udp(port, 53, DNSRecord.question(f"q{i}.example.com").pack()) for i, port in enumerate(ports)]
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
    assert [e.attr.server for e in kept] == ["fs", None] * 5  # watched, and unknown owners: never shed
    assert p.counters["shed_unwatched_dns"] == 40


def test_replay_never_sheds() -> None:
    sink = Sink()
    p = Pipeline(Engine(), ByPort(), Policy(Config()), None, [sink])
    for f in queries(30):
        p.feed(f)
    assert len(sink.events) == 30 and p.counters["shed_unwatched_dns"] == 0
