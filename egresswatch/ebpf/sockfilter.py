"""Load capture.bpf.o, the capture socket filter with flow state.

``SocketFilter.open(gate)`` returns ``(filter, reason)``: a loaded program
ready for :meth:`SocketFilter.attach` (``SO_ATTACH_BPF`` on a packet socket),
or None and one line saying why the capture keeps the classic filter
(``EGRESSWATCH_NO_BPF=1`` set, not root, no BTF, libbpf missing, the verifier
refused the object). Each capture socket gets its own instance: its own map
of flows whose ClientHello is still arriving, and its own counters.

``lane``: LANE_ALL (every frame the rules pass), or LANE_WATCHED: only the
frames of processes of MCP trees, told by the attribution programs' maps
``flows`` and ``watched`` (handed over as ``maps``, name -> fd) and, where the
kernel allows a socket filter to ask (Linux 6.10+), by the task sending the
packet (program ``capture_filter_cur``; else ``capture_filter``).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from egresswatch.ebpf import libbpf
from egresswatch.ebpf.loader import BTF, DISABLE_ENV

OBJECT = Path(__file__).with_name("capture.bpf.o")
PROGRAM = "capture_filter"
PROGRAM_CUR = "capture_filter_cur"
SO_ATTACH_BPF = 50
LANE_ALL, LANE_WATCHED = 0, 2
LANE_WATCHED_BY_SOCKET = 0x102  # LANE_WATCHED, by socket records alone (tests of their order)
SHARED_MAPS = ("flows", "watched")
#: the `stats` array of capture.bpf.c, in index order
STATS = (
    "hello_starts",
    "continuations_passed",
    "continuations_dropped",
    "no_device",
    "watched",
    "watched_by_current",
)
_U32, _U64 = struct.Struct("=I"), struct.Struct("=Q")


class SocketFilter:
    """A loaded capture filter; ``gate``: continuations pass only while their
    flow's ClientHello still owes bytes (False: by shape, as the classic filter)."""

    def __init__(self, obj: libbpf.BpfObject, gate: bool, lane: int = LANE_ALL) -> None:
        self._obj = obj
        self.gate = gate
        self.lane = lane
        self.program = PROGRAM_CUR if PROGRAM_CUR in obj.programs else PROGRAM
        self._stats = obj.map_fd("stats")
        settings = obj.map_fd("settings")
        libbpf.update(settings, _U32.pack(0), _U32.pack(int(gate)))
        libbpf.update(settings, _U32.pack(1), _U32.pack(lane))

    @classmethod
    def open(
        cls,
        gate: bool = True,
        path: Path | None = None,
        lane: int = LANE_ALL,
        maps: dict[str, int] | None = None,
    ) -> tuple[SocketFilter | None, str]:
        path = OBJECT if path is None else path
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            return None, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
        if os.geteuid() != 0:
            return (
                None,
                "not root (an eBPF socket filter reading the interface type needs CAP_BPF and CAP_PERFMON)",
            )
        if not BTF.exists():
            return None, f"kernel has no BTF ({BTF} missing)"
        if not path.is_file():
            return None, f"{path} missing (rebuild with scripts/build-bpf.sh)"
        if lane != LANE_ALL and not maps:
            return None, "the watched lane needs the attribution programs' maps"
        sizes = {} if maps else dict.fromkeys(SHARED_MAPS, 16)  # unused: keep them small
        how = ""
        try:
            if lane == LANE_ALL:
                obj = libbpf.BpfObject(str(path), skip=PROGRAM_CUR.__eq__, sizes=sizes)
            elif lane == LANE_WATCHED_BY_SOCKET:
                obj = libbpf.BpfObject(str(path), skip=PROGRAM_CUR.__eq__, reuse=maps)
                lane, how = LANE_WATCHED, ", by socket only"
            else:
                try:  # the sending task where a socket filter may ask for it (Linux 6.10+)
                    obj = libbpf.BpfObject(str(path), reuse=maps)
                    how = ", by socket or sending task"
                except libbpf.BpfError:
                    obj = libbpf.BpfObject(str(path), skip=PROGRAM_CUR.__eq__, reuse=maps)
                    how = ", by socket only (this kernel keeps the task from socket filters)"
        except libbpf.BpfError as exc:
            return None, f"BPF load refused: {exc.strerror or exc}"
        try:
            if PROGRAM not in obj.programs:
                raise libbpf.BpfError(f"{path.name} has no program {PROGRAM}")
            return cls(obj, gate, lane), f"libbpf {libbpf.version()}{how}"
        except libbpf.BpfError as exc:
            obj.close()
            return None, f"BPF load refused: {exc.strerror or exc}"

    def attach(self, sock: socket.socket) -> None:
        """SO_ATTACH_BPF; raises OSError when the kernel refuses."""
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, _U32.pack(self._obj.prog_fd(self.program)))

    def stats(self) -> dict[str, int]:
        """The program's counters since it was loaded."""
        out = {}
        for i, name in enumerate(STATS):
            raw = libbpf.lookup(self._stats, _U32.pack(i), _U64.size)
            out[name] = _U64.unpack(raw)[0] if raw is not None else 0
        return out

    def close(self) -> None:
        """Frees the object; a socket it is attached to keeps the program."""
        self._obj.close()
