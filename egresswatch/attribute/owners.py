"""Which process owns a local socket now: socket -> inode -> pid.

:class:`SocketOwners` answers steps 2-4 of :class:`~egresswatch.attribute.attributor.LiveAttributor`:

2. the socket itself: one exact NETLINK_SOCK_DIAG lookup of the 4-tuple in
   the initial network namespace (about 0.1 ms; /proc/net/tcp costs 3.5 ms
   per read on a big-memory host because it walks the whole hash) gives its
   inode; /proc/self/net tables when sock_diag is unavailable;
3. the inode's owner: the last known owner, then the MCP tree pids'
   /proc/PID/fd (FAST path), then processes born since the last full scan
   (at most ``newborn_seconds`` ago, newest first, at most 64) and processes
   the tracker has not heard of yet (highest pids first, at most 64), then
   every /proc/*/fd (about 11 ms, at most once per ``rescan_seconds``, less
   often when a full scan costs more); psutil's socket list off Linux;
4. not in the initial namespace: /proc/PID/net/{tcp,udp}[6] of MCP tree
   processes living in other namespaces.

Not thread-safe: the attributor calls it from the pipeline thread (the
harvester only files inode owners with :meth:`note`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter

from egresswatch.attribute.lineage import LineageTracker
from egresswatch.attribute.listings import inet_socket_owners, local_addresses
from egresswatch.attribute.sockets import (
    FdCache,
    SockDiag,
    SockKey,
    find_inode,
    netns_id,
    norm_ip,
    read_net_tables,
    socket_fds,
)

log = logging.getLogger(__name__)


class SocketOwners:
    """Socket -> owning pid, with the reason when there is none (see the module docstring)."""

    def __init__(
        self,
        lineage: LineageTracker,
        fdc: FdCache,
        counters: Counter[str],
        rescan_seconds: float = 0.05,
        newborn_seconds: float = 5.0,
    ) -> None:
        self.lineage = lineage
        self.counters = counters
        self.rescan_seconds = rescan_seconds
        self.newborn_seconds = newborn_seconds
        self._fdc = fdc  # one listing per process per budget, whatever it holds
        self._inode_pid: dict[int, int] = {}
        self._ps_map: dict[SockKey, int] = {}
        self._local_addrs: frozenset[str] = frozenset()
        self._local_checked = -1e9
        self._last_scan = 0.0
        self._scan_budget = rescan_seconds  # grows with what a full scan costs
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

    def close(self) -> None:
        if self._diag is not None:
            self._diag.close()

    def note(self, inode: int, pid: int) -> None:
        """``pid`` holds the socket ``inode`` (the harvester saw it in its fds)."""
        self._inode_pid[inode] = pid

    def lookup(self, key: SockKey, remote: tuple[str, int]) -> tuple[int | None, str]:
        """(owning pid, reason when there is none)."""
        if not self._linux:
            return self._portable_lookup(key)
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

    def _portable_lookup(self, key: SockKey) -> tuple[int | None, str]:
        now = time.monotonic()
        if now - self._last_scan >= self.rescan_seconds:
            self._last_scan = now
            try:
                self._ps_map = inet_socket_owners()
            except OSError as exc:
                return None, f"cannot list sockets: {exc}"
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
                self._local_addrs = local_addresses()
            except OSError:
                pass
        return ip in self._local_addrs
