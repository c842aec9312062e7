"""The interfaces between the stages (typing.Protocol): what the pipeline asks of each.

A decoder turns frames into observations, an attributor names the process
behind one, a judge gives the verdict, a sink keeps the event. The pipeline
(:mod:`egresswatch.pipeline`) composes them; each stage package implements one.
"""

from __future__ import annotations

from collections import Counter
from typing import Protocol

from egresswatch.model import UNKNOWN, Attribution, Event, Frame, Observation, Verdict


class Decoder(Protocol):
    """Turns frames into observations (egresswatch.decode.engine.Engine)."""

    counters: Counter[str]

    def feed(self, frame: Frame) -> list[Observation]: ...

    def finish(self) -> list[Observation]: ...


class Attributor(Protocol):
    """Finds the process (and MCP server) that owns an observation's local end."""

    def attribute(self, obs: Observation, frame: Frame) -> Attribution: ...


class Judge(Protocol):
    """Decides a verdict (egresswatch.judge.policy.Policy)."""

    def judge(
        self, obs: Observation, attr: Attribution, dst_name: str | None, candidates: tuple[str, ...] = ()
    ) -> Verdict: ...


class Sink(Protocol):
    def write(self, event: Event) -> None: ...

    def close(self) -> None: ...


class NullAttributor:
    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        return UNKNOWN


class UnwatchedJudge:
    """Used when no policy is configured: nothing is judged."""

    def judge(
        self, obs: Observation, attr: Attribution, dst_name: str | None, candidates: tuple[str, ...] = ()
    ) -> Verdict:
        return Verdict()


class NameMemoryLike(Protocol):
    """Per-process DNS memory (egresswatch.judge.names.NameMemory).

    ``observe`` records DNS answers for the answering process/server and returns
    the destination name for the event: the SNI or qname, or for a connection
    to a bare IP the one name that this process (or its server) resolved to it.
    ``candidates`` lists every name it resolved to a connection's address.
    """

    def observe(self, obs: Observation, attr: Attribution) -> str | None: ...

    def candidates(self, obs: Observation, attr: Attribution) -> tuple[str, ...]: ...
