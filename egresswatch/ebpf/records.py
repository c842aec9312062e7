"""Layouts of the BPF maps' keys and values (egress.bpf.c), packed and parsed.

Addresses are 16 bytes: IPv4 as ``::ffff:a.b.c.d``, the unspecified address
(a wildcard bind, an unconnected UDP socket's peer) as 16 zero bytes.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from functools import lru_cache

from egresswatch.host import CLK_TCK, boot_time

FLOW_KEY = struct.Struct("<BBHHH16s16s")  # proto, pad, lport, rport, pad, laddr, raddr
# tgid, pid, start_ns, first_ns, last_ns, bytes, netns, sends, comm, ppid, pad, parent's start_ns
FLOW_VAL = struct.Struct("<IIQQQQII16sIIQIIQQQIIQ16s")  # flowmap.bpf.h flow_val, its prev at the end
_PREV = struct.Struct("<IIQQQIIQ16s")
PREV_AT = struct.calcsize("<IIQQQQII16sIIQ")
VOL_VAL = struct.Struct("<QQQQII")  # bytes, first_ns, last_ns, end_ns, sends, pad (volume.bpf.h)
EXEC_VAL = struct.Struct("<QII16s256s512s")  # start_ns, pid, args_len, comm, filename, args
PROTOS = {"tcp": 6, "udp": 17, "udplite": 136, "icmp": 1, "icmp6": 58}  # icmp: echo ("ping") sockets
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
ANY = bytes(16)


@lru_cache(maxsize=8192)  # a flood's few addresses: ipaddress parsing costs ~2 us a call
def pack_ip(ip: str) -> bytes:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(addr, ipaddress.IPv4Address):
        return ANY if int(addr) == 0 else b"\0" * 10 + b"\xff\xff" + addr.packed
    if addr.ipv4_mapped is not None and int(addr.ipv4_mapped) == 0:
        return ANY
    return addr.packed


@lru_cache(maxsize=8192)
def unpack_ip(raw: bytes) -> str:
    addr = ipaddress.IPv6Address(raw)
    return str(addr.ipv4_mapped) if addr.ipv4_mapped is not None else str(addr)


def flow_key(proto: str, lip: bytes, lport: int, rip: bytes, rport: int) -> bytes:
    return FLOW_KEY.pack(PROTOS[proto], 0, lport, rport, 0, lip, rip)


def create_time(start_ns: int) -> float:
    """A kernel start_boottime as psutil's create_time (what /proc/PID/stat gives:
    whole clock ticks, divided by CLK_TCK, plus the boot time)."""
    ticks = start_ns // (1_000_000_000 // CLK_TCK)
    return ticks / CLK_TCK + boot_time()


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


@dataclass(frozen=True, slots=True)
class FlowOwner:
    """Who sent on a socket, as the kernel saw it at send time."""

    proto: str
    local: tuple[str, int]
    remote: tuple[str, int]  # ("::", 0) for an unconnected UDP socket
    tgid: int
    pid: int  # the sending thread
    create_time: float
    start_ns: int  # the group leader's start_boottime
    first_ns: int  # CLOCK_BOOTTIME
    last_ns: int
    bytes_out: int
    netns: int
    sends: int
    comm: str
    ppid: int  # the parent when it sent
    parent_create_time: float

    @property
    def key(self) -> tuple[int, float]:
        return (self.tgid, self.create_time)

    def near_keys(self) -> tuple[tuple[int, float], ...]:
        """The identity one clock tick off either way: what the tracker computes
        for a process that exited before it read /proc (from the fork event's time)."""
        tick = 1_000_000_000 // CLK_TCK
        return tuple((self.tgid, create_time(self.start_ns + d)) for d in (-tick, tick))


def parse_flow(key: bytes, val: bytes) -> FlowOwner:
    proto, _p, lport, rport, _p2, laddr, raddr = FLOW_KEY.unpack_from(key)
    tgid, pid, start, first, last, nbytes, netns, sends, comm, ppid, _p3, pstart, *_prev = (
        FLOW_VAL.unpack_from(val)
    )
    return FlowOwner(
        PROTO_NAMES.get(proto, str(proto)),
        (unpack_ip(laddr), lport),
        (unpack_ip(raddr), rport),
        tgid,
        pid,
        create_time(start),
        start,
        first,
        last,
        nbytes,
        netns,
        sends,
        _text(comm),
        ppid,
        create_time(pstart),
    )


def parse_prev(key: bytes, val: bytes) -> FlowOwner | None:
    """The address's owner before its current one (flowmap.bpf.h), or None."""
    proto, _p, lport, rport, _p2, laddr, raddr = FLOW_KEY.unpack_from(key)
    netns = FLOW_VAL.unpack_from(val)[6]
    tgid, pid, start, first, last, ppid, _p3, pstart, comm = _PREV.unpack_from(val, PREV_AT)
    if not tgid:
        return None
    return FlowOwner(PROTO_NAMES.get(proto, str(proto)), (unpack_ip(laddr), lport), (unpack_ip(raddr), rport),
                     tgid, pid, create_time(start), start, first, last, 0, netns, 0, _text(comm), ppid,
                     create_time(pstart))  # fmt: skip


@dataclass(frozen=True, slots=True)
class ExecRecord:
    """What the kernel saw at a process's last exec, before it ran."""

    tgid: int
    create_time: float
    comm: str
    filename: str
    argv: tuple[str, ...]  # from the first 512 bytes of the argument area
    truncated: bool  # the argument area was longer than what was kept


ARGS_MAX = 512


def parse_exec(tgid: int, val: bytes) -> ExecRecord:
    start, _pid, args_len, comm, filename, args = EXEC_VAL.unpack_from(val)
    raw = args[:args_len]
    truncated = args_len >= ARGS_MAX
    parts = raw.rstrip(b"\0").split(b"\0") if raw.strip(b"\0") else []
    return ExecRecord(
        tgid,
        create_time(start),
        _text(comm),
        _text(filename),
        tuple(p.decode("utf-8", "surrogateescape") for p in parts),
        truncated,
    )


@dataclass(frozen=True, slots=True)
class FlowVolume:
    """What a flow was handed to send so far (the ``volume`` map), whoever sent it."""

    bytes_out: int
    sends: int
    first_ns: int  # CLOCK_BOOTTIME
    last_ns: int
    end_ns: int  # the TCP flow stopped sending (FIN or reset); 0 while it may send


def parse_volume(val: bytes) -> FlowVolume:
    nbytes, first, last, end, sends, _pad = VOL_VAL.unpack_from(val)
    return FlowVolume(nbytes, sends, first, last, end)
