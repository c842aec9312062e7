"""Which kernel filter the capture socket gets: eBPF with flow state, else classic.

The eBPF socket filter (:mod:`egresswatch.ebpf.sockfilter`, source
``egresswatch/ebpf/capture.bpf.c``) decides every frame as the classic filter
(:mod:`egresswatch.capture.bpf`) does, but keeps ClientHello state per flow
in the kernel, so bulk continuation segments never reach userspace. Where it
cannot load or attach (no BTF, not root, lockdown, old kernel, verifier
refusal, ``EGRESSWATCH_NO_BPF=1``) the classic filter runs with the userspace
:class:`~egresswatch.capture.gate.HelloGate` behind it, as before. The
choice and its reason are reported (``doctor``, ``status``). The watched
lane's socket (``lane=LANE_WATCHED``, :mod:`egresswatch.capture.lanes`) takes
the eBPF filter or nothing: the classic filter cannot tell whose a frame is.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass
from typing import Any

from egresswatch.capture import bpf
from egresswatch.capture.gate import HelloGate
from egresswatch.ebpf.sockfilter import LANE_ALL, LANE_WATCHED, LANE_WATCHED_BY_SOCKET, SocketFilter

__all__ = ["CLASSIC", "EBPF", "LANE_ALL", "LANE_WATCHED", "LANE_WATCHED_BY_SOCKET", "ActiveFilter", "attach"]

log = logging.getLogger(__name__)

EBPF, CLASSIC = "ebpf", "classic"


@dataclass
class ActiveFilter:
    """The filter attached to one capture socket."""

    mode: str  # EBPF or CLASSIC
    reason: str
    kernel: SocketFilter | None = None
    gate: HelloGate | None = None  # the userspace continuation gate, when it is needed

    def info(self) -> dict[str, Any]:
        """For the status file: mode, reason and the eBPF program's counters."""
        out: dict[str, Any] = {"mode": self.mode, "reason": self.reason}
        if self.kernel is not None:
            out["counters"] = self.kernel.stats()
        return out

    def close(self) -> None:
        if self.kernel is not None:
            self.kernel.close()
            self.kernel = None


def attach(
    sock: socket.socket,
    program: list[bpf.Insn] | None = None,
    gate: bool = True,
    ebpf: bool = True,
    lane: int = LANE_ALL,
    maps: dict[str, int] | None = None,
) -> ActiveFilter:
    """Attach the best filter this kernel allows to ``sock``.

    ``program`` (a classic program) or ``ebpf=False`` forces the classic
    filter; ``gate=False`` passes continuation-shaped segments without looking
    at hello state (tests of the filter rules). Raises OSError when even the
    classic filter is refused, or when the watched lane cannot have its eBPF filter.
    """
    why = "a classic program was given" if program is not None else "not asked for" if not ebpf else ""
    if program is None and ebpf:
        kernel, loaded = SocketFilter.open(gate=gate, lane=lane, maps=maps)
        if kernel is not None:
            try:
                kernel.attach(sock)
            except OSError as exc:
                kernel.close()
                why = f"SO_ATTACH_BPF refused: {exc.strerror or exc}"
            else:
                what = "continuations gated on flow state" if gate else "continuations passed by shape"
                if lane != LANE_ALL:
                    what += "; MCP trees' frames only"
                log.info("capture filter: ebpf (%s; %s)", what, loaded)
                return ActiveFilter(EBPF, f"eBPF socket filter, {what} ({loaded})", kernel=kernel)
        else:
            why = loaded
    if lane != LANE_ALL:
        raise OSError(f"no eBPF filter for the watched lane ({why})")
    n = bpf.attach(sock, program)
    if program is None and ebpf:
        log.warning("capture filter: classic BPF, bulk uploads cost more CPU (%s)", why)
    return ActiveFilter(
        CLASSIC,
        f"classic BPF, {n} instructions, continuations gated in userspace ({why})",
        gate=HelloGate() if gate else None,
    )
