"""The one pipeline shared by live capture and replay.

    frames -> Engine (decode) -> Attributor -> NameMemory -> Policy -> FlowTracker -> sinks

A source yields :class:`Frame` objects with their own timestamps; the frame's
timestamp is the only clock. A failing sink is logged and isolated, never
allowed to stop the pipeline. With a flow tracker (egresswatch.judge.flows) a SYN
reaches the sinks once its flow is decided: with its hello, or when its hello
window passed in frame time (:meth:`Pipeline.expire`), or at :meth:`Pipeline.finish`.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING

from egresswatch.model import Attribution, Event, Frame, Observation
from egresswatch.stages import (
    Attributor,
    Decoder,
    Judge,
    NameMemoryLike,
    NullAttributor,
    Sink,
    UnwatchedJudge,
)

if TYPE_CHECKING:
    from egresswatch.judge.flows import FlowTracker

log = logging.getLogger(__name__)


class Pipeline:
    def __init__(
        self,
        decoder: Decoder,
        attributor: Attributor | None = None,
        judge: Judge | None = None,
        names: NameMemoryLike | None = None,
        sinks: Iterable[Sink] = (),
        flows: FlowTracker | None = None,
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
        self.flows = flows
        self.counters: Counter[str] = Counter()
        self.frames = 0  # frames fed (the daemon decides idle flows only when none came)

    def feed(self, frame: Frame) -> list[Event]:
        """Decode one frame; return the events it completes or decides (most frames: none)."""
        self.frames += 1
        out = self.expire(frame.ts) if self.flows is not None and frame.ts >= self.flows.next_due else []
        try:
            observations = self.decoder.feed(frame)
        except Exception:  # a decoder bug must never stop capture
            log.exception("decoder failed on frame %d", frame.index)
            self.counters["decode_errors"] += 1
            return out
        for obs in observations:
            out += self._handle(obs, frame)
        return out

    def expire(self, ts: float) -> list[Event]:
        """Decide (and emit) the flows whose hello window has passed at time ``ts``.
        Called for every frame; the live daemon also calls it while capture is idle."""
        if self.flows is None:
            return []
        return [e for held in self.flows.expire(ts) for e in self._emit(held, admitted=True)]

    def inject(self, obs: Observation, attr: Attribution | None = None) -> list[Event]:
        """Handle an observation that comes from no frame (a ``udp_flow`` or
        ``flow_summary`` seen by the kernel) exactly like a decoded one; its own
        ``ts`` is its clock. ``attr``: its flow's attribution, known already."""
        return self._handle(obs, Frame(ts=obs.ts, data=b"", linktype=0), attr)

    def finish(self, last: Frame | None = None) -> list[Event]:
        """End of input: flush what the decoder still holds (incomplete hellos),
        then decide every flow still waiting for its hello."""
        frame = last or Frame(ts=0.0, data=b"", linktype=0)
        out = [e for obs in self.decoder.finish() for e in self._handle(obs, frame)]
        if self.flows is not None:
            out += [e for held in self.flows.flush() for e in self._emit(held, admitted=True)]
        return out

    def _judge(self, obs: Observation, frame: Frame, known: Attribution | None = None) -> Event | None:
        self.counters[obs.kind] += 1
        try:
            attr = known or self.attributor.attribute(obs, frame)
        except Exception:
            log.exception("attribution failed")
            self.counters["attribution_errors"] += 1
            attr = Attribution(reason="attribution error")
        if attr.process is None:
            self.counters["unattributed"] += 1
        dst_name = None
        candidates: tuple[str, ...] = ()
        if self.names is not None:
            dst_name = self.names.observe(obs, attr)
            if not obs.is_dns and not obs.sni:
                candidates = self.names.candidates(obs, attr)
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
            return None
        verdict = self.judge.judge(obs, attr, dst_name, candidates)
        return Event(obs=obs, attr=attr, verdict=verdict, dst_name=dst_name, candidates=candidates)

    def _handle(self, obs: Observation, frame: Frame, known: Attribution | None = None) -> list[Event]:
        event = self._judge(obs, frame, known)
        return [] if event is None else self._emit(event)

    def _emit(self, event: Event, admitted: bool = False) -> list[Event]:
        """Pass a judged event through the flow tracker, then to every sink."""
        events = [event] if admitted or self.flows is None else self.flows.admit(event)
        for ev in events:
            self.counters[f"verdict_{ev.verdict.verdict}"] += 1
            for sink in self.sinks:
                try:
                    sink.write(ev)
                except Exception:
                    log.exception("sink %s failed", type(sink).__name__)
                    self.counters["sink_errors"] += 1
        return events

    def close(self) -> None:
        for sink in self.sinks:
            try:
                sink.close()
            except Exception:
                log.exception("closing sink %s failed", type(sink).__name__)
