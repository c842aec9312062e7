"""Load capture.bpf.o, the capture socket filter with flow state.

``SocketFilter.open(gate)`` returns ``(filter, reason)``: a loaded program
ready for :meth:`SocketFilter.attach` (``SO_ATTACH_BPF`` on a packet socket),
or None and one line saying why the capture keeps the classic filter
(``EGRESSWATCH_NO_BPF=1`` set, not root, no BTF, libbpf missing, the verifier
refused the object). Each capture socket gets its own instance: its own map
of flows whose ClientHello is still arriving, and its own counters.
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
SO_ATTACH_BPF = 50
#: the `stats` array of capture.bpf.c, in index order
STATS = ("hello_starts", "continuations_passed", "continuations_dropped", "no_device")
_U32, _U64 = struct.Struct("=I"), struct.Struct("=Q")


class SocketFilter:
    """A loaded capture filter; ``gate``: continuations pass only while their
    flow's ClientHello still owes bytes (False: by shape, as the classic filter)."""

    def __init__(self, obj: libbpf.BpfObject, gate: bool) -> None:
        self._obj = obj
        self.gate = gate
        self._stats = obj.map_fd("stats")
        libbpf.update(obj.map_fd("settings"), _U32.pack(0), _U32.pack(int(gate)))

    @classmethod
    def open(cls, gate: bool = True, path: Path | None = None) -> tuple[SocketFilter | None, str]:
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
        try:
            obj = libbpf.BpfObject(str(path))
        except libbpf.BpfError as exc:
            return None, f"BPF load refused: {exc.strerror or exc}"
        try:
            if PROGRAM not in obj.programs:
                raise libbpf.BpfError(f"{path.name} has no program {PROGRAM}")
            return cls(obj, gate), f"libbpf {libbpf.version()}"
        except libbpf.BpfError as exc:
            obj.close()
            return None, f"BPF load refused: {exc.strerror or exc}"

    def attach(self, sock: socket.socket) -> None:
        """SO_ATTACH_BPF; raises OSError when the kernel refuses."""
        sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_BPF, _U32.pack(self._obj.prog_fd(PROGRAM)))

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
