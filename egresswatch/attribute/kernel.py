"""Send-time attribution: the eBPF flow map first, the userspace path after.

:class:`KernelAttributor` wraps a :class:`LiveAttributor`. For each
observation it asks the kernel's flow map (egresswatch.ebpf) who last sent on
the socket with the observation's local end (and remote end, or none for an
unconnected UDP socket, wildcard binds included). The record names the
thread group and its start time, i.e. the identity ``(pid, create_time)``
the lineage tracker files processes under, exited ones included, so a socket
that lived a millisecond in a process started hours ago is attributed. When
the map has no record (forwarded traffic, a socket that never sent: an
incoming connection's SYN-ACK) or the tracker does not know the process, the
userspace path answers as before.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from egresswatch.attribute.answers import QueryOwners
from egresswatch.attribute.attributor import LiveAttributor
from egresswatch.attribute.procread import kernel_view
from egresswatch.attribute.sockets import norm_ip
from egresswatch.ebpf.records import ExecRecord, FlowOwner
from egresswatch.mcp.match import Lineage, attribution
from egresswatch.model import ICMP_FLOW, UDP_FLOW, Attribution, Frame, Observation, ProcessInfo, Proto


class FlowTable(Protocol):
    """egresswatch.ebpf.loader.KernelFlows, as far as attribution uses it."""

    def owner(
        self,
        proto: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        at: float | None = None,
        slack: float = 1.0,
    ) -> FlowOwner | None: ...

    def epoch(self, boot_ns: int) -> float: ...

    def is_watched(self, tgid: int) -> bool: ...


#: a record first seen this long after the packet belongs to a later socket on the
#: port. A TCP socket is filed when connect(2) returns or its state leaves SYN_SENT:
#: for a blocking connect that is a round trip after the SYN.
LATER_SOCKET = 1.0
#: a datagram's record is written when its packet enters the device queue, before
#: the capture sees it (on_dev_queue), and an answer's before the answer came: only
#: the clock conversion's error remains. Without on_dev_queue the record is written
#: as send returns (microseconds after the packet, more if the sender is preempted).
LATER_FILED = 0.005
LATER_DATAGRAM = 0.05
LATER_ANSWER = 0.005
#: the datagram sockets the kernel records as an Observation's proto
DATAGRAM_PROTOS: dict[str, Proto] = {"udp": "udp", "udplite": "udplite", "icmp": "icmp", "icmp6": "icmp6"}
#: a SYN is captured inside connect(2), its record written when connect returns:
#: a packet handled within this long of its capture may wait for the record
SETTLE = 0.005
#: ... but waiting costs at most this share of the time, so a flood of packets that
#: have no record (raw sockets, forwarded traffic) cannot stall the pipeline
SETTLE_SHARE = 0.02


class KernelAttributor:
    """The pipeline Attributor when the eBPF programs are loaded."""

    def __init__(self, kernel: FlowTable, live: LiveAttributor) -> None:
        self.kernel = kernel
        self.live = live
        self.lineage = live.lineage
        self.exec_record: Callable[[int], ExecRecord | None] | None = getattr(kernel, "exec_record", None)
        self.counters: Counter[str] = Counter()
        self.queries = QueryOwners()
        filed = "on_dev_queue" in getattr(kernel, "attached", ())
        self.later_datagram = LATER_FILED if filed else LATER_DATAGRAM
        self._budget, self._budget_at = SETTLE, time.monotonic()  # seconds of waiting allowed now

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        if (asked := self.queries.answer(obs)) is not None:
            self.counters["kernel_answer_of_query"] += 1
            return asked
        attr = self._attribute(obs, frame)
        if attr.reason == "kernel":
            self.queries.remember(obs, attr)
        return attr

    def _attribute(self, obs: Observation, frame: Frame) -> Attribution:
        ip, port = obs.local()
        local = (norm_ip(ip), port)
        rip, rport = obs.remote()
        remote = (norm_ip(rip), rport)
        slack = LATER_SOCKET if obs.proto == "tcp" else self.later_datagram if obs.outbound else LATER_ANSWER
        rec = self.kernel.owner(obs.proto, local, remote, frame.ts, slack)
        if rec is None and obs.outbound:
            rec = self._settle(obs.proto, local, remote, frame.ts, slack)
        if rec is not None and self._hurried(frame) and not self._maybe_watched(rec):
            # behind a flood: a process outside the MCP trees (neither in the kernel's
            # watched map nor, with its parent, in the tracker's trees) gets its pid
            # and name from the record, not its ancestry from the tracker
            self.counters["kernel_hurried"] += 1
            return attribution(ProcessInfo(rec.tgid, rec.create_time, rec.ppid, rec.comm), (), None, "kernel")
        if rec is not None:
            info, chain, lin = self.identify(rec)
            if info is not None:
                self.live.remember((obs.proto, local[0], port), info.key, frame.ts)
                self.counters["kernel"] += 1
                return attribution(info, chain, lin, "kernel")
            self.counters["kernel_unknown_process"] += 1
        self.counters["fallback"] += 1
        return self.live.attribute(obs, frame)

    def _hurried(self, frame: Frame) -> bool:
        """Behind the capture; never for an observation that came from no packet
        (a udp_flow record waits for the capture on purpose)."""
        hurry = self.live.hurry
        return hurry is not None and bool(frame.data) and hurry(frame)

    def _maybe_watched(self, rec: FlowOwner) -> bool:
        if self.kernel.is_watched(rec.tgid):
            return True
        return self.lineage.in_tree(rec.key, (rec.ppid, rec.parent_create_time))

    def _settle(
        self, proto: str, local: tuple[str, int], remote: tuple[str, int], ts: float, slack: float
    ) -> FlowOwner | None:
        now = time.monotonic()
        self._budget = min(SETTLE, self._budget + (now - self._budget_at) * SETTLE_SHARE)
        self._budget_at = now
        deadline = min(time.time() + self._budget, ts + SETTLE)
        rec = None
        while rec is None and time.time() < deadline:
            time.sleep(0.0005)
            rec = self.kernel.owner(proto, local, remote, ts, slack)
        self._budget -= time.monotonic() - now
        self.counters["kernel_settled" if rec is not None else "kernel_not_settled"] += 1
        return rec

    def identify(self, rec: FlowOwner) -> tuple[ProcessInfo | None, tuple[ProcessInfo, ...], Lineage | None]:
        """The tracker's process, chain and lineage for a kernel record."""
        info, chain, lin = self.lineage.lookup_key(rec.key)
        if info is None:  # not heard of yet (lookup() reads a live one from /proc)
            info, chain, lin = self.lineage.lookup(rec.tgid)
            if info is not None and info.key != rec.key:
                info = None
        for near in rec.near_keys() if info is None else ():
            info, chain, lin = self.lineage.lookup_key(near)
            if info is not None:
                break
        if info is None:  # gone before the tracker filed it: tie it through its parent
            info, chain, lin = self._via_parent(rec)
        elif rec.comm and (info.name or "")[:15] != rec.comm[:15]:
            info, lin = self._exec_since(info, chain, lin, rec.comm)
        return info, chain, lin

    def _exec_since(
        self, info: ProcessInfo, chain: tuple[ProcessInfo, ...], lin: Lineage | None, comm: str
    ) -> tuple[ProcessInfo, Lineage | None]:
        """The tracker's copy names another program than the kernel did at send
        time: the process exec'd after the tracker filed it (its fork copy holds
        the parent's command line until the proc connector's exec event is
        handled, and a child that connects a millisecond after exec is often
        attributed before that). The kernel's exec record, when it is this
        process's, says what runs now."""
        seen = self.exec_record(info.pid) if self.exec_record is not None else None
        if seen is None or seen.create_time != info.create_time or seen.comm[:15] != comm[:15]:
            # renamed itself (prctl), exec'd while no program watched, or exec'd
            # again after this send: the tracker's copy stays
            return info, lin
        now = kernel_view(info, seen)
        if now is info:
            return info, lin
        self.counters["kernel_exec_since_filed"] += 1
        return now, self.lineage.classify([now, *chain]) or lin

    def udp_flow(self, rec: FlowOwner) -> Observation | None:
        """The ``udp_flow`` (UDP or UDP-Lite) or ``icmp_flow`` (an echo "ping"
        socket's) observation of a kernel record of a first datagram, for
        processes of an MCP tree only (None for the rest of the machine). UDP to
        port 53 (DNS) and 443 (QUIC) is decoded from the packets already."""
        icmp = rec.proto in ("icmp", "icmp6")
        if icmp and rec.remote[0] in ("::", "0.0.0.0"):
            return None
        if not icmp and (not rec.remote[1] or rec.proto == "udp" and rec.remote[1] in (53, 443)):
            return None
        kind = ICMP_FLOW if icmp else UDP_FLOW
        proto = DATAGRAM_PROTOS.get(rec.proto, "udp")
        _info, _chain, lin = self.identify(rec)
        if lin is None:
            self.counters[f"{kind}_outside_mcp"] += 1
            return None
        self.counters[kind] += 1
        src = rec.local[0]
        if src == "::" and "." in rec.remote[0]:
            src = "0.0.0.0"
        # this datagram's time: the record was updated by this send. first_ns is the
        # first send on the address by this process, maybe from an earlier socket
        ts = self.kernel.epoch(rec.last_ns)
        return Observation(ts=ts, frame=0, kind=kind, proto=proto, src=src, sport=rec.local[1],
                           dst=rec.remote[0], dport=rec.remote[1])  # fmt: skip

    def _via_parent(
        self, rec: FlowOwner
    ) -> tuple[ProcessInfo | None, tuple[ProcessInfo, ...], Lineage | None]:
        """A process that sent and exited before the tracker heard of its fork
        (the proc connector lags under load): the kernel named its parent at
        send time; the child inherits the parent's lineage, as at fork, and
        the command line it exec'd if the kernel saw an exec."""
        parent, pchain, plin = self.lineage.lookup_key((rec.ppid, rec.parent_create_time))
        if parent is None or not rec.ppid:
            return None, (), None
        cmdline, name = parent.cmdline, rec.comm or parent.name
        seen = self.exec_record(rec.tgid) if self.exec_record is not None else None
        if seen is not None and seen.create_time == rec.create_time and seen.argv:
            cmdline, name = seen.argv, seen.comm or name
        info = ProcessInfo(rec.tgid, rec.create_time, rec.ppid, name, parent.exe, cmdline, parent.user)
        self.counters["kernel_via_parent"] += 1
        lin = replace(plin, depth=plin.depth + 1) if plin is not None else None
        if lin is not None and cmdline != parent.cmdline:  # it exec'd: classify its own chain
            lin = self.lineage.classify([info, parent, *pchain]) or lin
        return info, (parent, *pchain), lin
