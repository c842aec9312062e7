"""``flow_summary`` events: the bytes each watched flow sent, from the kernel.

The daemon adds a :class:`VolumeWatch` to the pipeline's sinks when the eBPF
programs are loaded. Every event of a flow of an MCP tree (``connect``, a
hello, ``udp_flow``, ``icmp_flow``) files its flow (5-tuple) with its attribution and name;
every ``daemon.flow_summary_seconds`` (and at shutdown) the watch reads each
filed flow's count from the kernel's ``volume`` map (egresswatch.ebpf) and,
when the flow sent more since the last summary, hands a ``flow_summary``
observation with the flow's attribution back to the pipeline, which judges
it (the upload detector, judge/upload.py), stores and alerts it. A TCP flow
that stopped sending (FIN or reset) gets its last summary (``ended``) and is
forgotten; others are forgotten after ``IDLE`` seconds without a new byte.

DNS flows are not filed (the DNS detectors judge their queries). Memory is
bounded: ``max_flows`` filed flows, the least recently filed dropped first
(counted as ``flow_summary_evicted``).
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

from egresswatch.ebpf.records import FlowVolume
from egresswatch.model import (
    CONNECT,
    FLOW_SUMMARY,
    ICMP_FLOW,
    QUIC_SNI,
    TLS_INCOMPLETE,
    TLS_SNI,
    UDP_FLOW,
    Attribution,
    Event,
    Observation,
)

WATCHED_KINDS = frozenset({CONNECT, TLS_SNI, TLS_INCOMPLETE, QUIC_SNI, UDP_FLOW, ICMP_FLOW})
#: a filed flow that sent nothing new for this long (seconds) is forgotten
IDLE = 600.0
#: a filed flow the kernel has no count for after this long never sent (a refused connect)
NEVER_SENT = 30.0
#: a kernel count that started this long after the filing event is a later connection's
LATER_CONNECTION = 2.0

FlowKey = tuple[str, str, int, str, int]


class VolumeTable(Protocol):
    """egresswatch.ebpf.loader.KernelFlows, as far as volumes go."""

    def volume(self, proto: str, local: tuple[str, int], remote: tuple[str, int]) -> FlowVolume | None: ...

    def epoch(self, boot_ns: int) -> float: ...


@dataclass
class _Flow:
    attr: Attribution
    sni: str | None
    filed: float  # wall time
    reported: int = 0  # bytes covered by the summaries so far
    changed: float = 0.0  # wall time the count last grew
    ts: float = 0.0  # the filing event's time
    first_ns: int = 0  # the kernel count's start: another value is another connection


class VolumeWatch:
    """A pipeline sink that files watched flows; :meth:`due` makes their summaries."""

    def __init__(self, kernel: VolumeTable, interval: float = 10.0, max_flows: int = 65536) -> None:
        self.kernel = kernel
        self.interval = max(interval, 0.1)
        self.max_flows = max(1, max_flows)
        self._flows: OrderedDict[FlowKey, _Flow] = OrderedDict()
        self._next = time.monotonic() + self.interval
        self.counters: Counter[str] = Counter()

    def __len__(self) -> int:
        return len(self._flows)

    # -- sink -----------------------------------------------------------------
    def write(self, event: Event) -> None:
        obs = event.obs
        if obs.kind not in WATCHED_KINDS or event.attr.server is None:
            return
        key: FlowKey = (obs.proto, obs.src, obs.sport, obs.dst, obs.dport)
        sni = obs.sni or event.dst_name
        flow = self._flows.get(key)
        if flow is None:
            now = time.time()
            self._flows[key] = _Flow(event.attr, sni, now, changed=now, ts=obs.ts)
            self.counters["flow_summary_filed"] += 1
            while len(self._flows) > self.max_flows:
                self._flows.popitem(last=False)
                self.counters["flow_summary_evicted"] += 1
        elif obs.sni:  # the hello names the flow its SYN opened
            flow.sni = obs.sni

    def close(self) -> None:
        pass

    # -- summaries ----------------------------------------------------------------
    def due(self, force: bool = False) -> list[tuple[Observation, Attribution]]:
        """Every ``interval`` seconds (or now with ``force``: shutdown): a
        ``flow_summary`` for each filed flow that sent more since its last one."""
        if not force and time.monotonic() < self._next:
            return []
        self._next = time.monotonic() + self.interval
        now = time.time()
        out: list[tuple[Observation, Attribution]] = []
        for key in list(self._flows):
            flow = self._flows[key]
            proto, src, sport, dst, dport = key
            vol = self.kernel.volume(proto, (src, sport), (dst, dport))
            if vol is None:
                if now - flow.filed > NEVER_SENT:
                    del self._flows[key]
                continue
            if not flow.first_ns and self.kernel.epoch(vol.first_ns) <= flow.ts + LATER_CONNECTION:
                flow.first_ns = vol.first_ns
            if vol.first_ns != flow.first_ns:
                # a later connection on the 5-tuple (the port reused, maybe by a
                # process outside the MCP trees): not this flow's bytes
                del self._flows[key]
                self.counters["flow_summary_reused"] += 1
                continue
            new = vol.bytes_out - flow.reported
            if new > 0:
                flow.reported, flow.changed = vol.bytes_out, now
                obs = Observation(
                    ts=self.kernel.epoch(vol.end_ns or vol.last_ns), frame=0, kind=FLOW_SUMMARY, proto=proto,  # type: ignore[arg-type]
                    src=src, sport=sport, dst=dst, dport=dport, sni=flow.sni,
                    bytes_out=vol.bytes_out, bytes_new=new, ended=bool(vol.end_ns),
                )  # fmt: skip
                out.append((obs, flow.attr))
                self.counters["flow_summaries"] += 1
            if vol.end_ns or now - flow.changed > IDLE:
                del self._flows[key]
        out.sort(key=lambda pair: pair[0].ts)
        return out


def emit_summaries(volume: VolumeWatch | None, pipeline: Any, force: bool = False) -> None:
    """Inject the flow_summary events of the watched flows that sent more (``force``:
    every flow with unreported bytes, at shutdown) into ``pipeline``."""
    if volume is not None:
        for obs, attr in volume.due(force):
            pipeline.inject(obs, attr)
