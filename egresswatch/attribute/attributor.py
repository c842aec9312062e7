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

While the daemon is behind the capture (``hurry(frame)``, set by the
service: more than 0.25 s behind during a flood), steps 2-4 are skipped:
only sockets remembered in steps 1 and 5 (the harvester's among them) are
attributed, so a flood from outside the MCP trees cannot keep the daemon
busy with socket lookups while watched packets wait in the ring.

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

import logging
import os
import socket
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import psutil

from egresswatch.attribute.lineage import LineageTracker
from egresswatch.attribute.sockets import (
    FdCache,
    SockDiag,
    SockKey,
    fd_local_address,
    find_inode,
    netns_id,
    norm_ip,
    read_net_tables,
    socket_fds,
)
from egresswatch.mcp.match import attribution
from egresswatch.model import Attribution, Frame, Observation

log = logging.getLogger(__name__)

ProcKey = tuple[int, float]


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
        self._scan_budget = rescan_seconds  # grows with what a full scan costs
        self._fdc = FdCache()  # one listing per process per budget, whatever it holds
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
        self.hurry: Callable[[Frame], bool] | None = None  # set by the daemon: True while behind

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
            fds = self._fdc.get(pid)
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
        if self.hurry is not None and self.hurry(frame):
            # the capture is behind (a flood): no socket lookups, only the sockets
            # the harvester and earlier lookups remember, so the backlog drains
            self.counters["hurried"] += 1
            found, why = None, "capture behind: remembered sockets only"
        else:
            found, why = self._lookup(key, obs.remote())
        if found is not None:
            info, _c, _l = self.lineage.lookup(found)
            if info is not None:
                self._remember(key, info.key, frame.ts)
                attr = self._from_key(info.key, "live")
                if attr is not None:
                    self.counters["live"] += 1
                    return attr
            why = "socket owner exited before lookup"
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
        return attribution(info, chain, lin, how)

    def _lookup(self, key: SockKey, remote: tuple[str, int]) -> tuple[int | None, str]:
        """(owning pid, reason when there is none)."""
        if not self._linux:
            return self._psutil_lookup(key)
        if self._diag is not None:
            inode = self._diag.inode(key[0], (key[1], key[2]), (norm_ip(remote[0]), remote[1]))
        else:
            inode = find_inode(read_net_tables("self", key[0]), key)
        if inode is None:
            self.counters["no_socket"] += 1
            return self._other_namespaces(key)
        if inode == 0:
            return None, "socket has no owner (closed before lookup)"
        owner = self._owner(inode)
        if owner is None:
            return None, "socket owner not found (closed before lookup)"
        return owner, ""

    def _owner(self, inode: int) -> int | None:
        pid = self._inode_pid.get(inode)
        if pid is not None and inode in self._fdc.get(pid, inode):
            return pid
        now = time.monotonic()
        tree = self.lineage.tree_pids()
        newest = self.lineage.pids_seen_since(max(self._last_scan, now - self.newborn_seconds))[:64]
        for pid in (*tree, *newest):
            if inode in self._fdc.get(pid, inode):
                self._inode_pid[inode] = pid
                return pid
        for pid in self._untracked_pids():
            if inode in self._fdc.get(pid, inode):
                self._inode_pid[inode] = pid
                return pid
        if now - self._last_scan < self._scan_budget:
            self.counters["scan_rate_limited"] += 1
            return None
        self._last_scan = now
        self.counters["full_scans"] += 1
        self._inode_pid = self._scan_all()
        cost = time.monotonic() - now  # a host with 10,000 sockets: scan less often
        self._scan_budget = max(self.rescan_seconds, 10 * cost)
        return self._inode_pid.get(inode)

    def _untracked_pids(self) -> list[int]:
        """Up to 64 running pids the tracker has not heard of yet, newest (highest) first."""
        try:
            untracked = self.lineage.unknown([int(n) for n in os.listdir("/proc") if n.isdigit()])
        except OSError:
            return []
        return sorted(untracked, reverse=True)[:64]

    def _other_namespaces(self, key: SockKey) -> tuple[int | None, str]:
        by_ns: dict[int, list[int]] = {}
        candidates = self.lineage.tree_pids()
        if self.lineage.linker is not None and self.lineage.container_clis():
            # an MCP server runs in a container: its processes may be so new that
            # the tracker has not filed them yet (lookup() below reads them in)
            candidates += self.lineage.pids_seen_since(time.monotonic() - self.newborn_seconds)[:64]
            candidates += self._untracked_pids()
        for pid in dict.fromkeys(candidates):
            ns = netns_id(pid)
            if ns is not None and ns != self._own_ns:
                by_ns.setdefault(ns, []).append(pid)
        for pids in by_ns.values():
            inode = find_inode(read_net_tables(pids[0], key[0]), key)
            if inode:
                for pid in pids:
                    if inode in socket_fds(pid):
                        return pid, ""
                return None, "socket in another network namespace"
        if not self._is_local(key[1]):
            return None, "not a local address (forwarded or from another host)"
        return None, "no socket found (closed before lookup)"

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
        pid = find_inode(self._ps_map, key)
        if pid:
            return pid, ""
        return None, "no socket found (closed before lookup)"

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
    def remember(self, key: SockKey, proc: ProcKey, ts: float) -> None:
        """File a socket found elsewhere (the kernel's flow map) in the memory."""
        self._remember(key, proc, ts)

    def _remember(self, key: SockKey, proc: ProcKey, ts: float) -> None:
        with self._lock:
            self._mem[key] = _Seen(proc, ts)
            self._mem.move_to_end(key)
            while len(self._mem) > self.memory_size:
                self._mem.popitem(last=False)

    def _recall(self, key: SockKey) -> _Seen | None:
        with self._lock:
            return self._mem.get(key)
