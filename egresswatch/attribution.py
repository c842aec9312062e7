"""Flow -> process -> MCP server, live.

:class:`LiveAttributor` finds the socket that owns an observation's local end
``(proto, local ip, local port)`` (``obs.local()``: the source of queries,
SYNs and hellos, the destination of DNS answers; a query to the loopback stub
resolver 127.0.0.53 is therefore owned by the querying process) and ties it
to a process through the lineage tracker. What is done when, in
``attribute()``, right as the packet is handled:

1. a socket remembered in the last ``recent_seconds`` whose process still
   runs is taken as is (the hello after a SYN, the answer after a query);
2. the socket itself: one exact NETLINK_SOCK_DIAG lookup of the 4-tuple in
   the initial network namespace (about 0.1 ms; /proc/net/tcp costs 3.5 ms
   per read on a big-memory host because it walks the whole hash) gives its
   inode; /proc/self/net tables when sock_diag is unavailable;
3. the inode's owner: the last known owner, then the MCP tree pids'
   /proc/PID/fd (FAST path), then processes born since the last full scan
   (at most ``newborn_seconds`` ago, newest first, at most 64) and processes
   the tracker has not heard of yet
   (highest pids first, at most 64), then every /proc/*/fd (about 11 ms, at
   most once per ``rescan_seconds``); psutil.net_connections() off Linux;
4. not in the initial namespace: /proc/PID/net/{tcp,udp}[6] of MCP tree
   processes living in other namespaces;
5. a remembered socket of a process that has since exited (kept for
   ``memory_seconds`` of frame time): a DNS answer or ClientHello arriving
   after a short-lived process exited still maps. Ports are reused, so an
   outbound packet only maps to a remembered process that had not exited yet
   when the packet was captured, and an inbound one (a DNS answer) only within
   ``answer_seconds`` of the last sighting; otherwise the entry is dropped.

In the background (``start()``), the harvester looks at the fds of MCP tree
processes every ``harvest_interval`` seconds, and at those of a tree process
that just forked or exec'd every ``newborn_interval`` seconds for its first
``newborn_watch`` seconds (the tracker tells it); each new socket is duplicated
for an instant with pidfd_getfd(2) to read its local address (getsockname)
and remembered with its process. So a child that lives 20-50 ms and makes one
connection is known even when its packets are handled after it exited;
processes themselves are known from fork/exec (proc connector) before they
open a socket, so the chain and lineage of an exited process are kept.
"""

from __future__ import annotations

import ctypes
import ipaddress
import logging
import os
import socket
import struct
import sys
import threading
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import psutil

from egresswatch.lineage import LineageTracker
from egresswatch.model import Attribution, Frame, Observation

log = logging.getLogger(__name__)

SockKey = tuple[str, str, int]  # (proto, normalised local ip, local port)
ProcKey = tuple[int, float]

_WILDCARD = {"0.0.0.0", "::"}


@lru_cache(maxsize=4096)
def norm_ip(ip: str) -> str:
    """Canonical text of an address; IPv4-mapped IPv6 becomes dotted IPv4."""
    try:
        a = ipaddress.ip_address(ip)
    except ValueError:
        return ip
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped is not None:
        return str(a.ipv4_mapped)
    return a.compressed


def _hex_ip(h: str) -> str:
    raw = bytes.fromhex(h)
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw[::-1]))
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, 16, 4))
    return norm_ip(str(ipaddress.IPv6Address(words)))


def parse_net_table(text: str, proto: str) -> dict[SockKey, int]:
    """Pure: a /proc/net/{tcp,udp}[6] table -> {(proto, local ip, port): inode}.
    Sockets without an owner (inode 0: TIME_WAIT, orphaned) map to 0."""
    out: dict[SockKey, int] = {}
    for line in text.splitlines()[1:]:
        f = line.split()
        if len(f) < 10:
            continue
        try:
            ip_hex, port_hex = f[1].split(":")
            key = (proto, _hex_ip(ip_hex), int(port_hex, 16))
            inode = int(f[9])
        except ValueError:
            continue
        if inode or key not in out:
            out[key] = inode
    return out


def read_net_tables(pid: int | str, proto: str) -> dict[SockKey, int]:
    out: dict[SockKey, int] = {}
    for suffix in ("", "6"):
        try:
            with open(f"/proc/{pid}/net/{proto}{suffix}") as f:
                out.update(parse_net_table(f.read(), proto))
        except OSError:
            pass
    return out


NETLINK_SOCK_DIAG = 4
SOCK_DIAG_BY_FAMILY = 20
_NLMSG = struct.Struct("=IHHII")
_SYS_PIDFD_GETFD = 438  # same number on every architecture (asm-generic)


class SockDiag:
    """Exact one-socket lookups over NETLINK_SOCK_DIAG, in the namespace the
    netlink socket was opened in. ``open()`` may raise OSError."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self._seq = 0
        self._lock = threading.Lock()

    def open(self) -> None:
        s = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_SOCK_DIAG)
        s.settimeout(0.5)
        self.sock = s

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def inode(self, proto: str, local: tuple[str, int], remote: tuple[str, int]) -> int | None:
        """The inode of the socket with this 4-tuple (0: no owner, e.g.
        TIME_WAIT), None when there is none. UDP also finds wildcard binds."""
        if self.sock is None:
            return None
        fam = socket.AF_INET6 if ":" in local[0] else socket.AF_INET
        try:
            lip = socket.inet_pton(fam, local[0])
            rip = socket.inet_pton(fam, remote[0])
        except OSError:
            return None
        # TCP lookups take (local, remote); the kernel's UDP lookup reads the
        # request as a received packet: (remote, local).
        if proto == "tcp":
            a, ap, b, bp, ipproto = lip, local[1], rip, remote[1], socket.IPPROTO_TCP
        else:
            a, ap, b, bp, ipproto = rip, remote[1], lip, local[1], socket.IPPROTO_UDP
        body = (
            struct.pack("=BBBBI", fam, ipproto, 0, 0, 0xFFFFFFFF)
            + struct.pack("!HH", ap, bp)
            + a.ljust(16, b"\0")
            + b.ljust(16, b"\0")
            + struct.pack("=III", 0, 0xFFFFFFFF, 0xFFFFFFFF)
        )
        with self._lock:
            self._seq = (self._seq + 1) & 0xFFFFFFFF
            seq = self._seq
            try:
                self.sock.send(_NLMSG.pack(_NLMSG.size + len(body), SOCK_DIAG_BY_FAMILY, 1, seq, 0) + body)
                for _ in range(8):  # skip stale replies of timed-out requests
                    data = self.sock.recv(8192)
                    if len(data) < _NLMSG.size + 4:
                        return None
                    _ln, typ, _fl, rseq, _pid = _NLMSG.unpack_from(data)
                    if rseq != seq:
                        continue
                    if typ == 2 or len(data) < _NLMSG.size + 72:  # NLMSG_ERROR (ENOENT)
                        return None
                    return int(struct.unpack_from("=I", data, _NLMSG.size + 68)[0])
            except OSError:
                return None
        return None


_libc: ctypes.CDLL | None = None


def fd_local_address(pid: int, fd: int) -> SockKey | None:
    """(proto, local ip, port) of another process's socket fd, by duplicating
    it for an instant with pidfd_getfd(2) (root; Linux >= 5.6). None for
    non-inet sockets, unbound ones, or when the kernel refuses."""
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    try:
        pidfd = os.pidfd_open(pid)
    except OSError:
        return None
    try:
        nfd = _libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
        if nfd < 0:
            return None
        with socket.socket(fileno=nfd) as s:
            if s.family not in (socket.AF_INET, socket.AF_INET6):
                return None
            proto = {socket.SOCK_STREAM: "tcp", socket.SOCK_DGRAM: "udp"}.get(s.type)
            addr = s.getsockname()
        if proto is None or not addr[1]:
            return None
        return (proto, norm_ip(addr[0]), int(addr[1]))
    except OSError:
        return None
    finally:
        os.close(pidfd)


def socket_fds(pid: int) -> dict[int, int]:
    """{socket inode: fd number} of a process (empty when gone or not allowed)."""
    out: dict[int, int] = {}
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out
    for n in names:
        try:
            link = os.readlink(f"{base}/{n}")
        except OSError:
            continue
        if link.startswith("socket:["):
            out[int(link[8:-1])] = int(n)
    return out


def socket_inodes(pid: int) -> set[int]:
    return set(socket_fds(pid))


def netns_id(pid: int | str) -> int | None:
    try:
        return os.stat(f"/proc/{pid}/ns/net").st_ino
    except OSError:
        return None


def _find(table: dict[SockKey, int], key: SockKey) -> int | None:
    """Inode of the exact local address, else of a wildcard bind on that port."""
    inode = table.get(key)
    if inode is not None:
        return inode
    for w in _WILDCARD:
        inode = table.get((key[0], w, key[2]))
        if inode is not None:
            return inode
    return None


@dataclass(slots=True)
class _Seen:
    proc: ProcKey
    ts: float


class LiveAttributor:
    """The pipeline Attributor for live capture (see the module docstring)."""

    def __init__(
        self,
        lineage: LineageTracker,
        memory_seconds: float = 120.0,
        recent_seconds: float = 2.0,
        rescan_seconds: float = 0.05,
        harvest_interval: float = 0.01,
        memory_size: int = 65536,
        newborn_seconds: float = 5.0,
        answer_seconds: float = 10.0,
        newborn_watch: float = 0.1,
        newborn_interval: float = 0.002,
    ) -> None:
        self.lineage = lineage
        self.memory_seconds = memory_seconds
        self.recent_seconds = recent_seconds
        self.rescan_seconds = rescan_seconds
        self.harvest_interval = harvest_interval
        self.memory_size = memory_size
        self.newborn_seconds = newborn_seconds
        self.answer_seconds = answer_seconds
        self.newborn_watch = newborn_watch
        self.newborn_interval = newborn_interval
        self._watch: dict[int, float] = {}  # pid -> watch closely until (monotonic)
        self._wake = threading.Event()
        self.counters: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._mem: OrderedDict[SockKey, _Seen] = OrderedDict()
        self._fds: dict[int, dict[int, int]] = {}  # tree pid -> {inode: fd} resolved by the harvester
        self._inode_pid: dict[int, int] = {}
        self._ps_map: dict[SockKey, int] = {}
        self._local_addrs: frozenset[str] = frozenset()
        self._local_checked = -1e9
        self._last_scan = 0.0
        self._linux = sys.platform.startswith("linux")
        self._own_ns = netns_id("self") if self._linux else None
        self._diag: SockDiag | None = None
        if self._linux:
            diag = SockDiag()
            try:
                diag.open()
                self._diag = diag
            except OSError as exc:
                log.info("sock_diag unavailable (%s): reading /proc/net tables", exc)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- background harvester ---------------------------------------------
    def start(self) -> None:
        if self._linux and self.harvest_interval > 0 and self._thread is None:
            self.lineage.add_listener(self._newborn)
            self._thread = threading.Thread(target=self._harvest_loop, name="socket-harvest", daemon=True)
            self._thread.start()

    def _newborn(self, pid: int) -> None:
        with self._lock:
            self._watch[pid] = time.monotonic() + self.newborn_watch
        self._wake.set()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._diag is not None:
            self._diag.close()

    def _harvest_loop(self) -> None:
        last_full = 0.0
        while not self._stop.is_set():
            with self._lock:
                now = time.monotonic()
                self._watch = {p: t for p, t in self._watch.items() if t > now}
                watched = list(self._watch)
            busy = True
            try:
                if now - last_full >= self.harvest_interval:
                    last_full = now
                    busy = self.harvest() > 0 or bool(self._fds)
                elif watched:
                    self.harvest(watched, prune=False)
            except Exception:
                log.exception("socket harvest failed")
            # With no MCP tree process alive there is nothing to poll: sleep until
            # the tracker reports a newborn tree process (it sets _wake), or 1 s.
            self._wake.wait(self.newborn_interval if watched else self.harvest_interval if busy else 1.0)
            self._wake.clear()

    def harvest(self, pids: list[int] | None = None, prune: bool = True) -> int:
        """Remember every socket of the MCP trees (or of ``pids``) that appeared
        since the last call (a socket not bound yet is retried next time);
        returns how many were remembered."""
        if pids is None:
            pids = self.lineage.tree_pids()
        now = time.time()
        count = 0
        for pid in pids:
            fds = socket_fds(pid)
            done = self._fds.setdefault(pid, {})
            fresh = [(inode, fd) for inode, fd in fds.items() if inode not in done]
            if not fresh:
                continue
            info, _chain, _lin = self.lineage.lookup(pid)
            for inode, fd in fresh:
                key = fd_local_address(pid, fd)
                if key is None or info is None:
                    continue
                done[inode] = fd
                self._inode_pid[inode] = pid
                self._remember(key, info.key, now)
                count += 1
        if prune:
            for gone in set(self._fds) - set(pids):
                del self._fds[gone]
        self.counters["harvested"] += count
        return count

    # -- Attributor ---------------------------------------------------------
    def attribute(self, obs: Observation, frame: Frame) -> Attribution:
        ip, port = obs.local()
        key: SockKey = (obs.proto, norm_ip(ip), port)
        seen = self._recall(key)
        if seen is not None and frame.ts - seen.ts <= self.recent_seconds:
            attr = self._from_key(seen.proc, "live", alive_only=True)
            if attr is not None:
                self._remember(key, seen.proc, frame.ts)
                self.counters["recent"] += 1
                return attr
        found, why = self._lookup(key, obs.remote())
        if found is not None:
            info, _c, _l = self.lineage.lookup(found)
            if info is not None:
                self._remember(key, info.key, frame.ts)
                attr = self._from_key(info.key, "live")
                if attr is not None:
                    self.counters["live"] += 1
                    return attr
            why = "no socket found (process exited before lookup)"
        if seen is not None and frame.ts - seen.ts <= self.memory_seconds:
            if self._may_own(seen, obs, frame.ts):
                gone = self.lineage.exit_time(seen.proc) is not None
                attr = self._from_key(seen.proc, "remembered socket" + (" (process exited)" if gone else ""))
                if attr is not None:
                    self.counters["remembered"] += 1
                    return attr
            else:  # the port has a new, unknown owner: forget the old one
                with self._lock:
                    self._mem.pop(key, None)
                self.counters["memory_stale"] += 1
        self.counters["unknown"] += 1
        return Attribution(reason=why)

    def _may_own(self, seen: _Seen, obs: Observation, ts: float) -> bool:
        """Can the remembered process own this packet? A process sends only
        while it runs: for outbound packets it must have exited after ``ts``
        (ports are reused). An answer may arrive after its asker exited, so
        inbound packets only need to be within ``answer_seconds`` of the
        last sighting."""
        if not obs.outbound:
            return ts - seen.ts <= self.answer_seconds
        exited = self.lineage.exit_time(seen.proc)
        return exited is None or exited + 0.002 >= ts

    def _from_key(self, proc: ProcKey, how: str, alive_only: bool = False) -> Attribution | None:
        if alive_only and not self.lineage.alive(proc):
            return None
        info, chain, lin = self.lineage.lookup_key(proc)
        if info is None:
            return None
        return Attribution(
            process=info,
            chain=chain,
            server=lin.server if lin else None,
            host=lin.host if lin else None,
            phase=lin.phase if lin else None,
            reason=how,
        )

    def _lookup(self, key: SockKey, remote: tuple[str, int]) -> tuple[int | None, str]:
        """(owning pid, reason when there is none)."""
        if not self._linux:
            return self._psutil_lookup(key)
        if self._diag is not None:
            inode = self._diag.inode(key[0], (key[1], key[2]), (norm_ip(remote[0]), remote[1]))
        else:
            inode = _find(read_net_tables("self", key[0]), key)
        if inode is None:
            self.counters["no_socket"] += 1
            return self._other_namespaces(key)
        if inode == 0:
            return None, "socket has no owner (closed, process exited before lookup)"
        owner = self._owner(inode)
        if owner is None:
            return None, "socket owner not found (process exited before lookup)"
        return owner, ""

    def _owner(self, inode: int) -> int | None:
        pid = self._inode_pid.get(inode)
        if pid is not None and inode in socket_fds(pid):
            return pid
        now = time.monotonic()
        tree = self.lineage.tree_pids()
        newest = self.lineage.pids_seen_since(max(self._last_scan, now - self.newborn_seconds))[:64]
        for pid in (*tree, *newest):
            if inode in socket_fds(pid):
                self._inode_pid[inode] = pid
                return pid
        try:
            untracked = self.lineage.unknown([int(n) for n in os.listdir("/proc") if n.isdigit()])
        except OSError:
            untracked = []
        for pid in sorted(untracked, reverse=True)[:64]:
            if inode in socket_fds(pid):
                self._inode_pid[inode] = pid
                return pid
        if now - self._last_scan < self.rescan_seconds:
            self.counters["scan_rate_limited"] += 1
            return None
        self._last_scan = now
        self.counters["full_scans"] += 1
        self._inode_pid = self._scan_all()
        return self._inode_pid.get(inode)

    def _other_namespaces(self, key: SockKey) -> tuple[int | None, str]:
        by_ns: dict[int, list[int]] = {}
        for pid in self.lineage.tree_pids():
            ns = netns_id(pid)
            if ns is not None and ns != self._own_ns:
                by_ns.setdefault(ns, []).append(pid)
        for pids in by_ns.values():
            inode = _find(read_net_tables(pids[0], key[0]), key)
            if inode:
                for pid in pids:
                    if inode in socket_fds(pid):
                        return pid, ""
                return None, "socket in another network namespace"
        if not self._is_local(key[1]):
            return None, "not a local address (forwarded or from another host)"
        return None, "no socket found (process exited before lookup)"

    @staticmethod
    def _scan_all() -> dict[int, int]:
        out: dict[int, int] = {}
        for name in os.listdir("/proc"):
            if name.isdigit():
                pid = int(name)
                for inode in socket_fds(pid):
                    out.setdefault(inode, pid)
        return out

    def _psutil_lookup(self, key: SockKey) -> tuple[int | None, str]:
        now = time.monotonic()
        if now - self._last_scan >= self.rescan_seconds:
            self._last_scan = now
            try:
                conns = psutil.net_connections("inet")
            except (psutil.Error, OSError) as exc:
                return None, f"cannot list sockets: {exc}"
            self._ps_map = {
                (("tcp" if c.type == socket.SOCK_STREAM else "udp"), norm_ip(c.laddr.ip), c.laddr.port): c.pid
                or 0
                for c in conns
                if c.laddr
            }
        pid = _find(self._ps_map, key)
        if pid:
            return pid, ""
        return None, "no socket found (process exited before lookup)"

    def _is_local(self, ip: str) -> bool:
        if ip.startswith("127.") or ip == "::1":
            return True
        now = time.monotonic()
        if ip not in self._local_addrs and now - self._local_checked > 1.0:  # interfaces come and go
            self._local_checked = now
            try:
                self._local_addrs = frozenset(
                    norm_ip(a.address.split("%")[0]) for v in psutil.net_if_addrs().values() for a in v
                )
            except OSError:
                pass
        return ip in self._local_addrs

    # -- memory ---------------------------------------------------------------
    def _remember(self, key: SockKey, proc: ProcKey, ts: float) -> None:
        with self._lock:
            self._mem[key] = _Seen(proc, ts)
            self._mem.move_to_end(key)
            while len(self._mem) > self.memory_size:
                self._mem.popitem(last=False)

    def _recall(self, key: SockKey) -> _Seen | None:
        with self._lock:
            return self._mem.get(key)
