"""Which process holds a socket: /proc/PID/fd listings, kept cheap whatever a
process holds (docs/attribution.md, "Monitor DoS").

Listing the fds of a process that holds 10,000 sockets costs 10,000
``readlink`` calls; doing it for every SYN of that process made a monitor DoS
(#17). :class:`FdCache` lists a process at most once per budget
(``max(min_age, cost_factor x the last listing's cost)``), and between two
listings finds a new socket by probing only the fd numbers it can have: the
kernel gives a new file the lowest free fd number, so an fd opened since the
listing is one of the numbers that were free then (the holes, lowest first)
or just past the highest. A probe reads at most ``probe`` numbers (and stops
in each of the two ranges after 8 free ones in a row), and only
processes whose listing cost more than ``min_age / cost_factor`` are probed
(a small process is simply listed again once ``min_age`` has passed).

Not caught between two listings: a socket moved to an arbitrary number
(``dup2``, ``F_DUPFD``), or opened in a number that was open at the listing
and closed since; the next listing finds it (the eBPF path needs no listing
at all)."""

from __future__ import annotations

import itertools
import os
import threading
import time
from dataclasses import dataclass

#: consecutive free numbers past the highest known fd after which a probe stops
PAST_TOP = 8


def fd_listing(pid: int) -> tuple[dict[int, int], set[int]]:
    """({socket inode: fd number}, every open fd number) of a process (empty
    when it is gone or not ours to read)."""
    out: dict[int, int] = {}
    base = f"/proc/{pid}/fd"
    try:
        names = os.listdir(base)
    except OSError:
        return out, set()
    nums: set[int] = set()
    for n in names:
        try:
            link = os.readlink(f"{base}/{n}")
        except OSError:
            continue
        nums.add(int(n))
        if link.startswith("socket:["):
            out[int(link[8:-1])] = int(n)
    return out, nums


def socket_fds(pid: int) -> dict[int, int]:
    """{socket inode: fd number} of a process (empty when gone or not allowed)."""
    return fd_listing(pid)[0]


@dataclass
class _Listing:
    at: float  # monotonic time the listing was done
    budget: float  # how long it stands before a lookup may list again
    fds: dict[int, int]  # socket inode -> fd, grown by probes
    holes: list[int]  # fd numbers free at the listing (below the highest), ascending
    top: int  # highest fd number known open


class FdCache:
    """socket_fds() with a per-process budget and probes between listings."""

    def __init__(
        self, min_age: float = 0.002, cost_factor: float = 10.0, size: int = 4096, probe: int = 64
    ) -> None:
        self.min_age = min_age
        self.cost_factor = cost_factor
        self.size = size
        self.probe = probe
        self.sweep = probe * 16  # the bound when no inode is asked for (the harvester's tick)
        self._lock = threading.Lock()  # the lookup path and the harvester thread share listings
        self._c: dict[int, _Listing] = {}
        self.listings = 0  # full listings
        self.probes = 0  # probes (each at most ``probe`` readlinks)
        self.probe_hits = 0  # probes that found the socket asked for
        self.reads = 0  # readlink calls of the probes

    def get(self, pid: int, inode: int | None = None) -> dict[int, int]:
        """{socket inode: fd} of ``pid``, as listed or probed: with ``inode``,
        the cache's own dict (probes add to it: test membership only);
        without, a copy to iterate (the harvester)."""
        with self._lock:
            fds = self._get(pid, inode)
            return fds if inode is not None else dict(fds)

    def _get(self, pid: int, inode: int | None) -> dict[int, int]:
        now = time.monotonic()
        hit = self._c.get(pid)
        if hit is not None:
            if inode is not None and inode in hit.fds:
                return hit.fds
            if now - hit.at < hit.budget:
                if hit.budget > self.min_age:  # a process too big to list again: read only new fds
                    self._probe(pid, hit, inode)
                return hit.fds
        fds, nums = fd_listing(pid)
        done = time.monotonic()
        self.listings += 1
        self._c.pop(pid, None)
        top = max(nums, default=-1)
        holes = sorted(set(range(top + 1)) - nums) if len(nums) <= top else []
        self._c[pid] = _Listing(done, max(self.min_age, self.cost_factor * (done - now)), fds, holes, top)
        if len(self._c) > self.size:
            self._c.pop(next(iter(self._c)), None)
        return fds

    def _probe(self, pid: int, lst: _Listing, inode: int | None) -> bool:
        """Read the fd numbers a file opened since the listing can have, lowest
        first: the listing's holes until PAST_TOP in a row are free (the kernel
        fills the lowest first), then past the highest until PAST_TOP in a row
        are free; at most ``probe`` reads (``sweep`` when no ``inode`` is asked
        for; else stopping at it). Sockets found join the listing, so the
        harvester (which asks for none) sees them too. True when ``inode`` is
        found."""
        self.probes += 1
        base = f"/proc/{pid}/fd/"
        opened: set[int] = set()
        free_above: list[int] = []
        left = self.probe if inode is not None else self.sweep
        found = False

        def read(n: int) -> bool:
            """Whether ``n`` is open; a socket there joins the listing."""
            nonlocal found
            self.reads += 1
            try:
                link = os.readlink(base + str(n))
            except OSError:
                return False
            opened.add(n)
            if link.startswith("socket:["):
                got = int(link[8:-1])
                lst.fds[got] = n
                found = got == inode
            return True

        for numbers in (iter(lst.holes), itertools.count(lst.top + 1)):
            free_run = 0
            for n in numbers:
                if left <= 0 or found or free_run >= PAST_TOP:
                    break
                left -= 1
                if read(n):
                    free_run = 0
                else:
                    free_run += 1
                    if n > lst.top:
                        free_above.append(n)
        if opened:  # numbers found open are no longer holes; free ones below the new top become holes
            top = max(lst.top, max(opened))
            lst.holes = [h for h in lst.holes if h not in opened] + [f for f in free_above if f < top]
            lst.top = top
        self.probe_hits += found
        return found

    def forget(self, pid: int) -> None:
        with self._lock:
            self._c.pop(pid, None)
