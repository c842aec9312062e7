"""The one pipeline shared by live capture and replay.

    frames -> Engine (decode) -> Attributor -> NameMemory -> Policy -> sinks

A source yields :class:`Frame` objects with their own timestamps; the frame's
timestamp is the only clock. A failing sink is logged and isolated, never
allowed to stop the pipeline.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Protocol

from egresswatch.model import UNKNOWN, Attribution, Event, Frame, Observation, Verdict

log = logging.getLogger(__name__)


class Decoder(Protocol):
    """Turns frames into observations (egresswatch.decode.engine.Engine)."""

    counters: Counter[str]

    def feed(self, frame: Frame) -> list[Observation]: ...

    def finish(self) -> list[Observation]: ...


class Attributor(Protocol):
    """Finds the process (and MCP server) that owns an observation's local end."""

    def attribute(self, obs: Observation, frame: Frame) -> Attribution: ...


class Judge(Protocol):
    """Decides a verdict (egresswatch.policy.Policy)."""

    def judge(self, obs: Observation, attr: Attribution, dst_name: str | None) -> Verdict: ...


class Sink(Protocol):
    def write(self, event: Event) -> None: ...

    def close(self) -> None: ...


class NullAttributor:
    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        return UNKNOWN


class UnwatchedJudge:
    """Used when no policy is configured: nothing is judged."""

    def judge(self, obs: Observation, attr: Attribution, dst_name: str | None) -> Verdict:
        return Verdict()


class Pipeline:
    def __init__(
        self,
        decoder: Decoder,
        attributor: Attributor | None = None,
        judge: Judge | None = None,
        names: NameMemoryLike | None = None,
        sinks: Iterable[Sink] = (),
        shed: Callable[[Frame], bool] | None = None,
    ) -> None:
        """``shed(frame)``: True while the capture is behind (live only); DNS
        events of a process found outside MCP trees then skip the sinks and are
        only counted (``shed_unwatched_dns``), so the backlog drains and watched
        events stay. An event whose process is unknown is never shed."""
        self.decoder = decoder
        self.shed = shed
        self.attributor = attributor or NullAttributor()
        self.judge = judge or UnwatchedJudge()
        self.names = names
        self.sinks = list(sinks)
        self.counters: Counter[str] = Counter()

    def feed(self, frame: Frame) -> list[Event]:
        """Decode one frame and handle what it completes (most frames: nothing)."""
        try:
            observations = self.decoder.feed(frame)
        except Exception:  # a decoder bug must never stop capture
            log.exception("decoder failed on frame %d", frame.index)
            self.counters["decode_errors"] += 1
            return []
        if not observations:
            return []
        return [self._handle(obs, frame) for obs in observations]

    def inject(self, obs: Observation) -> Event:
        """Handle an observation that comes from no frame (a ``udp_flow`` seen by
        the kernel) exactly like a decoded one; its own ``ts`` is its clock."""
        return self._handle(obs, Frame(ts=obs.ts, data=b"", linktype=0))

    def finish(self, last: Frame | None = None) -> list[Event]:
        """End of input: flush what the decoder still holds (incomplete hellos)."""
        frame = last or Frame(ts=0.0, data=b"", linktype=0)
        return [self._handle(obs, frame) for obs in self.decoder.finish()]

    def _handle(self, obs: Observation, frame: Frame) -> Event:
        self.counters[obs.kind] += 1
        try:
            attr = self.attributor.attribute(obs, frame)
        except Exception:
            log.exception("attribution failed")
            self.counters["attribution_errors"] += 1
            attr = Attribution(reason="attribution error")
        if attr.process is None:
            self.counters["unattributed"] += 1
        dst_name = None
        if self.names is not None:
            dst_name = self.names.observe(obs, attr)
        elif obs.sni or obs.qname:
            dst_name = obs.sni or obs.qname
        if (
            attr.server is None
            and attr.process is not None
            and obs.is_dns
            and self.shed is not None
            and self.shed(frame)
        ):
            self.counters["shed_unwatched_dns"] += 1
            return Event(obs=obs, attr=attr, verdict=Verdict(), dst_name=dst_name)
        verdict = self.judge.judge(obs, attr, dst_name)
        event = Event(obs=obs, attr=attr, verdict=verdict, dst_name=dst_name)
        self.counters[f"verdict_{verdict.verdict}"] += 1
        for sink in self.sinks:
            try:
                sink.write(event)
            except Exception:
                log.exception("sink %s failed", type(sink).__name__)
                self.counters["sink_errors"] += 1
        return event

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %s failed", type(sink).__name__)


class NameMemoryLike(Protocol):
    """Per-process DNS memory (egresswatch.names.NameMemory).

    ``observe`` records DNS answers for the answering process/server and returns
    the destination name for the event: the SNI or qname, or for a connection
    to a bare IP the name that this process (or its server) resolved to it.
    """

    def observe(self, obs: Observation, attr: Attribution) -> str | None: ...
