"""FdCache probes (#17 monitor DoS, fallback path): between two listings of a
process too big to list at every lookup, a socket it opened since is found by
reading only the fd numbers it can have (the lowest free ones). Real sockets
of this process, real /proc."""

from __future__ import annotations

import os
import socket

from egresswatch.attribute.fdcache import PAST_TOP, FdCache


def inode(s: socket.socket) -> int:
    return os.fstat(s.fileno()).st_ino


def test_sockets_opened_after_a_listing_are_found_without_listing_again() -> None:
    fdc = FdCache(min_age=0.0, cost_factor=1e9)  # the listing stands "forever": only probes can find more
    me = os.getpid()
    old = [socket.socket() for _ in range(200)]
    try:
        for s in old[10:20]:  # holes below the top at the listing
            s.close()
        fdc.get(me)
        assert fdc.listings == 1
        refill = [socket.socket() for _ in range(10)]  # the kernel fills the lowest holes first
        new = [socket.socket() for _ in range(30)]  # then past the highest fd known
        for s in reversed(refill + new):
            assert inode(s) in fdc.get(me, inode(s))
        assert fdc.listings == 1 and fdc.probe_hits <= 40, (fdc.listings, fdc.probe_hits)
        # closed since the listing and its number reused: found at the next listing
        old[30].close()
        reused = socket.socket()
        assert inode(reused) not in fdc.get(me, inode(reused)) and fdc.listings == 1
        fdc.forget(me)
        assert inode(reused) in fdc.get(me, inode(reused)) and fdc.listings == 2
        reused.close()
        # a socket moved to an arbitrary high number is not probed for (found at the next listing)
        far = socket.socket()
        high = os.dup2(far.fileno(), 900 + len(new))
        try:
            far_inode = inode(far)
            far.close()
            assert far_inode not in fdc.get(me, far_inode) and fdc.listings == 2
            fdc.forget(me)
            assert fdc.get(me, far_inode)[far_inode] == high and fdc.listings == 3
        finally:
            os.close(high)
        for s in new + refill:
            s.close()
    finally:
        for s in old:
            s.close()


def test_a_probe_reads_at_most_its_bound() -> None:
    fdc = FdCache(min_age=0.0, cost_factor=1e9, probe=16)
    me = os.getpid()
    fdc.get(me)
    many = [socket.socket() for _ in range(40)]
    last = inode(many[-1])
    try:
        # the 40th new socket is beyond 16 probed numbers: a miss, no listing
        assert last not in fdc.get(me, last) and fdc.listings == 1 and fdc.probes == 1
        # each probe keeps the sockets it read and starts past them: the third reaches the 40th
        assert last not in fdc.get(me, last)
        assert last in fdc.get(me, last) and fdc.listings == 1 and fdc.probes == 3
        # the harvester's sweep (no inode asked for) reads up to 16 x as many at once
        more = [socket.socket() for _ in range(100)]
        assert {inode(s) for s in more} <= set(fdc.get(me)) and fdc.listings == 1
        for s in more:
            s.close()
    finally:
        for s in many:
            s.close()


def test_small_processes_are_listed_again_not_probed() -> None:
    fdc = FdCache(min_age=10.0, cost_factor=0.0)  # budget = min_age: a cheap listing
    me = os.getpid()
    fdc.get(me)
    s = socket.socket()
    try:
        assert inode(s) not in fdc.get(me, inode(s)) and fdc.probes == 0
    finally:
        s.close()


def test_a_process_with_many_free_numbers_costs_a_few_reads_per_probe() -> None:
    fdc = FdCache(min_age=0.0, cost_factor=1e9)
    me = os.getpid()
    socks = [socket.socket() for _ in range(400)]
    try:
        for s in socks[:300]:  # 300 free numbers below the highest: read at every probe otherwise
            s.close()
        fdc.get(me)
        reads = fdc.reads
        for _ in range(10):
            fdc.get(me)  # the harvester's sweep
            fdc.get(me, 1)  # a lookup of an inode it does not hold
        assert fdc.reads - reads <= 20 * 2 * PAST_TOP and fdc.listings == 1, fdc.reads - reads
        new = socket.socket()  # the lowest free number: the first hole
        assert inode(new) in fdc.get(me, inode(new)) and fdc.listings == 1
        new.close()
    finally:
        for s in socks[300:]:
            s.close()
