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
from typing import Protocol

from egresswatch.attribution import LiveAttributor
from egresswatch.ebpf.records import FlowOwner
from egresswatch.mcpmatch import attribution
from egresswatch.model import Attribution, Frame, Observation
from egresswatch.sockets import norm_ip


class FlowTable(Protocol):
    """egresswatch.ebpf.loader.KernelFlows, as far as attribution uses it."""

    def owner(self, proto: str, local: tuple[str, int], remote: tuple[str, int]) -> FlowOwner | None: ...

    def epoch(self, boot_ns: int) -> float: ...


#: a record first seen this long after the packet belongs to a later socket on the port
LATER_SOCKET = 1.0
#: a SYN is captured inside connect(2), its record written when connect returns:
#: a packet handled within this long of its capture may wait for the record
SETTLE = 0.005


class KernelAttributor:
    """The pipeline Attributor when the eBPF programs are loaded."""

    def __init__(self, kernel: FlowTable, live: LiveAttributor) -> None:
        self.kernel = kernel
        self.live = live
        self.lineage = live.lineage
        self.counters: Counter[str] = Counter()

    def start(self) -> None:
        self.live.start()

    def stop(self) -> None:
        self.live.stop()

    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        ip, port = obs.local()
        local = (norm_ip(ip), port)
        rip, rport = obs.remote()
        remote = (norm_ip(rip), rport)
        rec = self.kernel.owner(obs.proto, local, remote)
        if rec is None and obs.outbound:
            deadline = frame.ts + SETTLE
            while rec is None and time.time() < deadline:
                time.sleep(0.0005)
                rec = self.kernel.owner(obs.proto, local, remote)
            if rec is not None:
                self.counters["kernel_settled"] += 1
        if rec is not None:
            first = self.kernel.epoch(rec.first_ns)
            if first <= frame.ts + LATER_SOCKET:
                info, chain, lin = self.lineage.lookup_key(rec.key)
                if info is None:  # not heard of yet (lookup() reads a live one from /proc)
                    info, chain, lin = self.lineage.lookup(rec.tgid)
                    if info is not None and info.key != rec.key:
                        info = None
                for near in rec.near_keys() if info is None else ():
                    info, chain, lin = self.lineage.lookup_key(near)
                    if info is not None:
                        break
                if info is not None:
                    self.live.remember((obs.proto, local[0], port), info.key, frame.ts)
                    self.counters["kernel"] += 1
                    return attribution(info, chain, lin, "kernel")
                self.counters["kernel_unknown_process"] += 1
            else:
                self.counters["kernel_later_socket"] += 1
        self.counters["fallback"] += 1
        return self.live.attribute(obs, frame)
