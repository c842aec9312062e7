"""One verdict per flow: the SYN opens it, the hello decides it.

A flow is a 5-tuple (proto, src, sport, dst, dport) from its first packet to
its last. Its events are the ``connect`` (TCP SYN) and the ``tls_sni`` /
``tls_incomplete`` / ``quic_sni`` hello; each stays a record of its own,
linked by a :func:`flow_id`, and exactly one of them *decides* the flow
(``Event.decides``): only that one is alerted.

- The SYN is judged at once on its address (allowlisted CIDR, or every name
  the server resolved to it) but held back, provisional, for
  :data:`HELLO_WINDOW` seconds of frame time.
- A hello within the window decides the flow by its own SNI (ECH: the outer
  name); the held SYN is emitted just before it with ``decides=False``. One
  exception: a SYN judged ``direct_ip`` (an address the server never
  resolved) keeps that verdict unless the hello's own verdict is flagged
  high too; a hello's SNI cannot launder a hard-coded address.
- A flow without a hello in the window is decided by its SYN (on frame time:
  by the first later frame, or :meth:`FlowTracker.flush` at the end of input).
- A hello after its flow was decided is recorded with the flow's id; it
  becomes the decision only if it is flagged and the flow was not, so a flow
  never raises two alerts.
- A hello without a SYN seen (QUIC, a capture that started mid-connection,
  a hello the capture's fast lane handed over before its SYN) opens and
  decides its flow at once; a SYN of that flow handled later but stamped no
  later than the hello is recorded with the flow's id, deciding only if it is
  flagged and the flow was not.
- A ``flow_summary`` (bytes the flow sent) takes its flow's id; it decides
  (is alerted) only when it is flagged ``upload``, a finding of its own.

Pure: frame time only, bounded memory (``max_open`` held SYNs, the oldest
decided early beyond that; ``max_decided`` decided flows remembered).
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from dataclasses import replace

from egresswatch.model import CONNECT, FLAGGED, FLOW_KINDS, FLOW_SUMMARY, Event, Observation, Verdict

#: Seconds of frame time a SYN waits for its hello before the address decides the flow.
HELLO_WINDOW = 5.0

FlowKey = tuple[str, str, int, str, int]


def flow_key(obs: Observation) -> FlowKey:
    return (obs.proto, obs.src, obs.sport, obs.dst, obs.dport)


def flow_id(key: FlowKey, first_ts: float) -> str:
    """Deterministic id of a flow: its 5-tuple and the time of its first frame."""
    text = f"{key[0]} {key[1]} {key[2]} {key[3]} {key[4]} {first_ts:.6f}"
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class FlowTracker:
    """Holds SYNs until their flow is decided; see the module doc."""

    def __init__(self, window: float = HELLO_WINDOW, max_open: int = 65536, max_decided: int = 65536) -> None:
        self.window = window
        self.max_open = max(1, max_open)
        self.max_decided = max(1, max_decided)
        self._open: OrderedDict[FlowKey, Event] = OrderedDict()  # held SYNs, oldest first
        # -> (flow id, flagged, frame time of the flow's first event handled)
        self._decided: OrderedDict[FlowKey, tuple[str, bool, float]] = OrderedDict()
        #: frame time at which the oldest held SYN is due (inf: none held)
        self.next_due = float("inf")

    def __len__(self) -> int:
        return len(self._open)

    def admit(self, event: Event) -> list[Event]:
        """Take a judged event; return the events to emit now, in order."""
        obs = event.obs
        if obs.kind == FLOW_SUMMARY:  # bytes sent: linked to its flow, decides only an upload flag
            done = self._decided.get(flow_key(obs))
            fid = done[0] if done is not None else event.flow_id
            return [Event(obs, event.attr, event.verdict, event.dst_name, event.candidates, fid,
                          event.verdict.verdict == FLAGGED)]  # fmt: skip
        if obs.kind not in FLOW_KINDS:
            return [event]
        key = flow_key(obs)
        if obs.kind == CONNECT:
            late = self._decided.get(key)
            if late is not None and obs.ts <= late[2]:  # its hello went first (fast lane)
                return [self._later(key, event, late)]
            out = []
            held = self._open.pop(key, None)
            if held is not None:  # a new attempt on the same 5-tuple: the old one is over
                out.append(self._settle(key, held))
            self._decided.pop(key, None)
            self._open[key] = _linked(event, flow_id(key, obs.ts), False)
            while len(self._open) > self.max_open:
                old_key, old = self._open.popitem(last=False)
                out.append(self._settle(old_key, old))
            self._due()
            return out
        held = self._open.pop(key, None)
        if held is not None:
            self._due()
            assert held.flow_id is not None
            hello = _linked(event, held.flow_id, True, _decision(held, event))
            self._remember(key, held.flow_id, hello.verdict.verdict == FLAGGED, held.obs.ts)
            return [held, hello]
        done = self._decided.get(key)
        if done is not None:
            return [self._later(key, event, done)]
        fid = flow_id(key, obs.ts)
        self._remember(key, fid, event.verdict.verdict == FLAGGED, obs.ts)
        return [_linked(event, fid, True)]

    def _later(self, key: FlowKey, event: Event, done: tuple[str, bool, float]) -> Event:
        """An event of a flow already decided: linked; the decision only if it
        is flagged and the flow was not (a flow never raises two alerts)."""
        fid, flagged, first = done
        escalates = event.verdict.verdict == FLAGGED and not flagged
        if escalates:
            self._remember(key, fid, True, first)
        return _linked(event, fid, escalates)

    def expire(self, ts: float) -> list[Event]:
        """Decide the flows whose hello window has passed at frame time ``ts``."""
        if ts < self.next_due:
            return []
        out = []
        while self._open:
            key, held = next(iter(self._open.items()))
            if held.obs.ts + self.window > ts:
                break
            del self._open[key]
            out.append(self._settle(key, held))
        self._due()
        return out

    def flush(self) -> list[Event]:
        """End of input: every held SYN decides its flow."""
        out = [self._settle(key, held) for key, held in self._open.items()]
        self._open.clear()
        self._due()
        return out

    def _settle(self, key: FlowKey, held: Event) -> Event:
        assert held.flow_id is not None
        self._remember(key, held.flow_id, held.verdict.verdict == FLAGGED, held.obs.ts)
        return _linked(held, held.flow_id, True)

    def _remember(self, key: FlowKey, fid: str, flagged: bool, first: float) -> None:
        self._decided[key] = (fid, flagged, first)
        self._decided.move_to_end(key)
        while len(self._decided) > self.max_decided:
            self._decided.popitem(last=False)

    def _due(self) -> None:
        self.next_due = next(iter(self._open.values())).obs.ts + self.window if self._open else float("inf")


def _linked(e: Event, fid: str, decides: bool, verdict: Verdict | None = None) -> Event:
    """``e`` with its flow id and role (dataclasses.replace is several times slower)."""
    return Event(e.obs, e.attr, verdict or e.verdict, e.dst_name, e.candidates, fid, decides)


def _decision(syn: Event, hello: Event) -> Verdict:
    """The flow's verdict when its hello arrives: the hello's own, except that
    a ``direct_ip`` SYN stays ``direct_ip`` unless the hello is flagged high."""
    v, opened = hello.verdict, syn.verdict
    if opened.reason != "direct_ip" or (v.verdict == FLAGGED and v.severity == "high"):
        return v
    said = hello.obs.sni or "none"
    return replace(opened, rule=f"{opened.rule}; hello SNI {said}")
