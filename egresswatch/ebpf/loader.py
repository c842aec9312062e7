"""Load egress.bpf.o, attach what this kernel allows, answer lookups.

``KernelFlows.open()`` returns ``(flows, reason)``: a loaded instance, or None
and one line saying why the daemon falls back to userspace attribution
(``EGRESSWATCH_NO_BPF=1`` set, not root, no BTF, libbpf missing, load or
attach refused). Only ``on_send`` (tracepoint sock:sock_send_length) is
required; every other program adds coverage and is reported in ``attached``
/ ``missing``.
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path

from egresswatch.ebpf import libbpf
from egresswatch.ebpf.records import (
    ANY,
    EXEC_VAL,
    FLOW_KEY,
    FLOW_VAL,
    PREV_AT,
    VOL_VAL,
    ExecRecord,
    FlowOwner,
    FlowVolume,
    flow_key,
    pack_ip,
    parse_exec,
    parse_flow,
    parse_prev,
    parse_volume,
)

log = logging.getLogger(__name__)

OBJECT = Path(__file__).with_name("egress.bpf.o")
BTF = Path("/sys/kernel/btf/vmlinux")
DISABLE_ENV = "EGRESSWATCH_NO_BPF"
REQUIRED = "on_send"
TRACEFS = Path("/sys/kernel/tracing")
BPFFS = Path("/sys/fs/bpf")
#: exec records outlive the daemon: a server that renamed itself before a restart stays identified
PINS = {"execs": str(BPFFS / "egresswatch" / "execs_v1")}
BPF_FS_MAGIC = 0xCAFE4A11


def _ensure_tracefs() -> None:
    """syscalls:* tracepoints are found through tracefs; mount it if nobody did."""
    if (TRACEFS / "events").is_dir() or Path("/sys/kernel/debug/tracing/events").is_dir():
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"nodev", str(TRACEFS).encode(), b"tracefs", 0, None) != 0:
        log.debug("cannot mount tracefs: %s", os.strerror(ctypes.get_errno()))


def _pins() -> dict[str, str]:
    """PINS when a bpffs is (or can be) mounted at /sys/fs/bpf, else none."""
    libc = ctypes.CDLL(None, use_errno=True)
    buf = ctypes.create_string_buffer(256)  # struct statfs: f_type is the first field
    if libc.statfs(str(BPFFS).encode(), buf) == 0 and int.from_bytes(buf.raw[:8], "little") == BPF_FS_MAGIC:
        return PINS
    if BPFFS.is_dir() and libc.mount(b"bpf", str(BPFFS).encode(), b"bpf", 0, b"mode=700") == 0:
        return PINS
    return {}


_TIMES = struct.Struct("<QQ")  # first_ns, last_ns at offset 16 of a flow value
_PREV_TIMES = struct.Struct("<I4x8xQQ")  # the previous owner's tgid, (pid, start_ns,) first_ns, last_ns

#: the epoch <-> boot-time offset is measured again this often (NTP slews and steps the wall clock)
OFFSET_REFRESH = 5.0


def boot_offset() -> float:
    """Epoch seconds at CLOCK_BOOTTIME zero: of a few bracketed readings the
    tightest, so a preemption between two clock reads (a loaded machine) does
    not shift every record by milliseconds."""
    best, offset = float("inf"), 0.0
    for _ in range(5):
        b1 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        wall = time.time_ns()
        b2 = time.clock_gettime_ns(time.CLOCK_BOOTTIME)
        if b2 - b1 < best:
            best, offset = b2 - b1, (wall - (b1 + b2) / 2) / 1e9
    return offset


class KernelFlows:
    """The loaded programs and their maps."""

    def __init__(self, obj: libbpf.BpfObject, attached: list[str], missing: dict[str, str]) -> None:
        self._obj = obj
        self.attached = attached
        self.missing = missing
        self._flows = obj.map_fd("flows")
        self._execs = obj.map_fd("execs")
        self._events = obj.map_fd("udp_events")
        self._volume = obj.map_fd("volume")
        self._watched = obj.map_fd("watched")
        self._offset, self._offset_at = boot_offset(), time.monotonic()
        # every key exists from the start: the status file reads them from another thread
        self.counters: Counter[str] = Counter(dict.fromkeys(("hits", "misses", "later_socket", "previous_owner",
                                                            "udp_events", "watch_failed"), 0))  # fmt: skip
        self._ring: libbpf.RingBuffer | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def open(cls, path: Path = OBJECT) -> tuple[KernelFlows | None, str]:
        if os.environ.get(DISABLE_ENV, "") not in ("", "0"):
            return None, f"disabled by {DISABLE_ENV}={os.environ[DISABLE_ENV]}"
        if os.geteuid() != 0:
            return None, "not root (loading BPF programs needs CAP_BPF and CAP_PERFMON)"
        if not BTF.exists():
            return None, f"kernel has no BTF ({BTF} missing)"
        if not path.is_file():
            return None, f"{path} missing (rebuild with scripts/build-bpf.sh)"
        _ensure_tracefs()
        pins = _pins()
        try:
            try:
                obj = libbpf.BpfObject(str(path), pins=pins)
            except libbpf.BpfError:
                for pin in pins.values():  # a pinned map of another layout: start afresh
                    Path(pin).unlink(missing_ok=True)
                obj = libbpf.BpfObject(str(path), pins=pins)
        except libbpf.BpfError as exc:
            # one program the verifier refused: keep the required ones only
            try:
                obj = libbpf.BpfObject(str(path), skip=lambda n: n not in (REQUIRED, "on_state"))
            except libbpf.BpfError:
                return None, f"BPF load refused: {exc.strerror or exc}"
        attached: list[str] = []
        missing: dict[str, str] = {}
        for name in obj.programs:
            try:
                obj.attach(name)
                attached.append(name)
            except libbpf.BpfError as exc:
                missing[name] = f"{obj.section(name)}: {exc.strerror or exc}"
        if REQUIRED not in attached:
            obj.close()
            return None, f"cannot attach {missing.get(REQUIRED, REQUIRED)}"
        for name, why in missing.items():
            log.warning("eBPF program %s not attached (%s): less coverage", name, why)
        return cls(obj, attached, missing), f"libbpf {libbpf.version()}, {len(attached)} programs"

    # -- the capture filter's watched lane ------------------------------------
    def shared_maps(self) -> dict[str, int]:
        """The maps a capture filter reads (name -> fd), valid until close()."""
        return {"flows": self._flows, "watched": self._watched}

    def watch(self, tgids: Iterable[int]) -> int:
        """Mark thread groups as MCP trees' (the kernel adds their children at
        fork, drops a group when it exits); returns how many were stored."""
        n = 0
        for tgid in tgids:
            try:
                libbpf.update(self._watched, tgid.to_bytes(4, "little"), b"\x01")
                n += 1
            except libbpf.BpfError:
                self.counters["watch_failed"] += 1
        return n

    def unwatch(self, tgid: int) -> bool:
        """Unmark a thread group (tests; the kernel unmarks exited ones itself)."""
        return libbpf.delete(self._watched, tgid.to_bytes(4, "little"))

    def is_watched(self, tgid: int) -> bool:
        """Whether a thread group is marked as an MCP tree's (one map lookup)."""
        return libbpf.lookup(self._watched, tgid.to_bytes(4, "little"), 1) is not None

    def watched(self) -> set[int]:
        """The thread groups marked now (tests, status)."""
        return {int.from_bytes(k, "little") for k in libbpf.keys(self._watched, 4)}

    # -- lookups ------------------------------------------------------------
    def owner(
        self,
        proto: str,
        local: tuple[str, int],
        remote: tuple[str, int],
        at: float | None = None,
        slack: float = 1.0,
    ) -> FlowOwner | None:
        """The process that sent on a socket with this local end (and this
        remote end, or none: unconnected UDP; wildcard binds included). Ports
        are reused, and each record keeps its previous owner. Without ``at``,
        the latest sender wins. With ``at`` (the packet's time, epoch seconds)
        the owner whose sending spans it, else the nearest in time, wins, of
        those first seen no later than ``at + slack`` (a record filed after its
        packet): a socket on the port just after the packet, within the slack,
        does not take the packet from the socket that sent it."""
        try:
            lip, rip = pack_ip(local[0]), pack_ip(remote[0])
        except ValueError:
            return None
        best: tuple[tuple[float, int], bytes, bytes, bool] | None = (
            None  # rank, key, value, the previous owner's
        )
        for la, ra, rp in ((lip, rip, remote[1]), (lip, ANY, 0), (ANY, rip, remote[1]), (ANY, ANY, 0)):
            key = flow_key(proto, la, local[1], ra, rp)
            val = libbpf.lookup(self._flows, key, FLOW_VAL.size)
            if val is None:
                continue
            first, last = _TIMES.unpack_from(val, 16)
            if at is None:
                if best is None or -last < best[0][1]:
                    best = ((0.0, -last), key, val, False)
                continue
            ptgid, pfirst, plast = _PREV_TIMES.unpack_from(val, PREV_AT)
            for prev, f, lst in ((False, first, last), (True, pfirst, plast)):
                if prev and not ptgid:
                    continue
                start, end = self.epoch(f), self.epoch(lst)
                if start > at + slack:
                    if not prev:
                        self.counters["later_socket"] += 1  # a later socket on the port: its owner before?
                    continue
                rank = (start - at if start > at else at - end if end < at else 0.0, -lst)
                if best is None or rank < best[0]:
                    best = (rank, key, val, prev)
        if best is not None and best[3]:
            self.counters["previous_owner"] += 1
        rec = None if best is None else (parse_prev if best[3] else parse_flow)(best[1], best[2])
        self.counters["hits" if rec is not None else "misses"] += 1
        return rec

    def volume(self, proto: str, local: tuple[str, int], remote: tuple[str, int]) -> FlowVolume | None:
        """Bytes sent so far on the flow from ``local`` to ``remote`` (a wildcard
        bind's local address unspecified), or None when the kernel has no count."""
        try:
            lip, rip = pack_ip(local[0]), pack_ip(remote[0])
        except ValueError:
            return None
        for la in (lip, ANY) if lip != ANY else (ANY,):
            val = libbpf.lookup(self._volume, flow_key(proto, la, local[1], rip, remote[1]), VOL_VAL.size)
            if val is not None:
                return parse_volume(val)
        return None

    def epoch(self, boot_ns: int) -> float:
        if time.monotonic() - self._offset_at > OFFSET_REFRESH:
            self._offset, self._offset_at = boot_offset(), time.monotonic()
        return self._offset + boot_ns / 1e9

    def exec_record(self, tgid: int) -> ExecRecord | None:
        val = libbpf.lookup(self._execs, tgid.to_bytes(4, "little"), EXEC_VAL.size)
        return parse_exec(tgid, val) if val is not None else None

    def flows(self) -> list[FlowOwner]:
        """Every entry of the flow map (tests, diagnostics)."""
        out = []
        for key in libbpf.keys(self._flows, FLOW_KEY.size):
            val = libbpf.lookup(self._flows, key, FLOW_VAL.size)
            if val is not None:
                out.append(parse_flow(key, val))
        return out

    # -- first datagram of each (process, destination) UDP flow ---------------
    def start_events(self, sink: Callable[[FlowOwner], None]) -> None:
        def on_record(raw: bytes) -> None:
            self.counters["udp_events"] += 1
            try:
                sink(parse_flow(raw[: FLOW_KEY.size], raw[FLOW_KEY.size :]))
            except Exception:
                log.exception("udp_flow event handler failed")

        self._ring = libbpf.RingBuffer(self._events, on_record)
        self._thread = threading.Thread(target=self._poll_loop, name="bpf-events", daemon=True)
        self._thread.start()

    def _poll_loop(self) -> None:
        while not self._stop.is_set() and self._ring is not None:
            self._ring.poll(200)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._ring is not None:
            self._ring.close()
            self._ring = None
        self._obj.close()
