"""The lineage tracker's records: every process, live or exited, under its parent.

:class:`ProcessTable` keeps one :class:`ProcRecord` per process identity
(pid, create_time): live ones by pid, exited ones while a tracked process
still descends from them (``held``: a chain survives its parent's exit, a
double fork + setsid and reparenting to pid 1), and exited leaves in a
bounded store (``dead_keep`` records, ``dead_seconds``) for late packet
lookups. It answers the questions that need no /proc read: a process's
ancestors, whether it still runs, when it exited, which pids are new. It
neither reads /proc nor classifies: egresswatch.attribute.lineage does, under
the table's ``lock``, which every method here expects to be held by the caller
unless it takes it itself (the public queries).
"""

from __future__ import annotations

import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass

from egresswatch.mcp.match import Lineage
from egresswatch.model import ProcessInfo

ProcKey = tuple[int, float]


@dataclass(slots=True)
class ProcRecord:
    info: ProcessInfo
    parent: ProcKey | None
    lineage: Lineage | None = None
    alive: bool = True
    exited_at: float = 0.0  # time.monotonic()
    exited_wall: float = 0.0  # time.time(), to compare with packet timestamps
    born: float = 0.0  # time.monotonic() when first seen
    forked: bool = False  # a fork's copy of its parent, until its exec (or a re-read) says what it runs


class ProcessTable:
    """Process records linked to their parents, with bounded memory of exited ones."""

    def __init__(self, dead_keep: int = 4096, dead_seconds: float = 600.0) -> None:
        self.dead_keep = dead_keep
        self.dead_seconds = dead_seconds
        self.held_keep = 16 * dead_keep  # bounds a fork-and-exit chain of any length
        self.lock = threading.RLock()
        self.counters: Counter[str] = Counter()
        self.live: dict[int, ProcRecord] = {}
        self.dead: OrderedDict[ProcKey, ProcRecord] = OrderedDict()  # exited leaves, oldest first
        self.held: dict[ProcKey, ProcRecord] = {}  # exited, with tracked descendants
        self.kids: Counter[ProcKey] = Counter()  # records whose parent is the key
        #: processes known (from their environment) to be npm/pip lifecycle steps,
        #: forgotten with their record
        self.marks: set[ProcKey] = set()

    # -- queries (take the lock) ------------------------------------------
    def alive(self, key: ProcKey) -> bool:
        """True while the process with this identity runs (as far as tracked)."""
        with self.lock:
            rec = self.live.get(key[0])
            return rec is not None and rec.info.create_time == key[1]

    def exit_time(self, key: ProcKey) -> float | None:
        """Epoch seconds at which the process was seen exiting; None while it
        runs or when it is not known."""
        with self.lock:
            rec = self.get(key)
            return rec.exited_wall if rec is not None and not rec.alive else None

    def lookup_key(self, key: ProcKey) -> tuple[ProcessInfo | None, tuple[ProcessInfo, ...], Lineage | None]:
        """(process, ancestors parent first, lineage) of a (pid, create_time)
        identity, exited processes included; (None, (), None) if unknown."""
        with self.lock:
            rec = self.get(key)
            if rec is None:
                return None, (), None
            return rec.info, tuple(self.chain(rec, include_self=False)), rec.lineage

    def in_tree(self, *keys: ProcKey) -> bool:
        """Whether any of these identities is a known process of an MCP tree
        (no ancestry built: the hurried attribution's test)."""
        with self.lock:
            return any((rec := self.get(key)) is not None and rec.lineage is not None for key in keys)

    def pids_seen_since(self, since: float) -> list[int]:
        """Live pids first seen at or after ``since`` (time.monotonic()), newest first."""
        with self.lock:
            recs = [r for r in self.live.values() if r.born >= since]
        return [r.info.pid for r in sorted(recs, key=lambda r: -r.born)]

    def unknown(self, pids: list[int]) -> list[int]:
        """Those of ``pids`` not tracked yet (events not processed yet)."""
        with self.lock:
            return [p for p in pids if p not in self.live]

    def tree_pids(self) -> list[int]:
        """Live pids that descend from an MCP server launch."""
        with self.lock:
            return [pid for pid, rec in self.live.items() if rec.lineage is not None]

    # -- records (the caller holds the lock) ------------------------------
    def records(self) -> Iterator[ProcRecord]:
        """Every record: live, held, then exited leaves."""
        yield from self.live.values()
        yield from self.held.values()
        yield from self.dead.values()

    def get(self, key: ProcKey) -> ProcRecord | None:
        rec = self.live.get(key[0])
        if rec is not None and rec.info.create_time == key[1]:
            return rec
        return self.held.get(key) or self.dead.get(key)

    def insert(self, info: ProcessInfo, parent: ProcKey | None) -> ProcRecord:
        """A new live record (an older one under the same pid, whose exit was
        missed, is retired: the pid was reused)."""
        old = self.live.get(info.pid)
        if old is not None and old.info.create_time != info.create_time:  # missed exit: pid reused
            old.exited_at = time.monotonic()
            self.retire(old)
        rec = ProcRecord(info, None, born=time.monotonic())
        self.set_parent(rec, parent)
        self.live[info.pid] = rec
        return rec

    def remove(self, pid: int) -> ProcRecord | None:
        """``pid`` exited: its record, retired; None when it was not tracked."""
        rec = self.live.pop(pid, None)
        if rec is None:
            return None
        self.counters["exits"] += 1
        rec.exited_at = time.monotonic()
        rec.exited_wall = time.time()
        self.retire(rec)
        return rec

    def chain(self, rec: ProcRecord, include_self: bool) -> list[ProcessInfo]:
        out = [rec.info] if include_self else []
        seen = {rec.info.key}
        cur = rec
        while cur.parent is not None and len(out) < 64:
            nxt = self.get(cur.parent)
            if nxt is None or nxt.info.key in seen:
                break
            seen.add(nxt.info.key)
            out.append(nxt.info)
            cur = nxt
        return out

    def set_parent(self, rec: ProcRecord, parent: ProcKey | None) -> None:
        """Link ``rec`` under ``parent``, keeping the descendant counts right."""
        old = rec.parent
        rec.parent = parent
        if parent is not None:
            self.kids[parent] += 1
            dead = self.dead.pop(parent, None)
            if dead is not None:  # an exited leaf gains a descendant (a container link)
                self.held[parent] = dead
        if old is not None:
            self.release(old)

    def release(self, key: ProcKey) -> None:
        """One descendant record of ``key`` is gone; an exited ``key`` with none
        left becomes an evictable leaf."""
        self.kids[key] -= 1
        if self.kids[key] > 0:
            return
        del self.kids[key]
        rec = self.held.pop(key, None)
        if rec is not None:
            self.dead[key] = rec

    def retire(self, rec: ProcRecord) -> None:
        """``rec`` exited: held while tracked processes descend from it, else a leaf."""
        rec.alive = False
        if self.kids.get(rec.info.key, 0) > 0:
            self.held[rec.info.key] = rec
        else:
            self.dead[rec.info.key] = rec
        self.prune()

    def evict(self, rec: ProcRecord) -> None:
        self.marks.discard(rec.info.key)
        if rec.parent is not None:
            self.release(rec.parent)

    def prune(self) -> None:
        now = time.monotonic()
        while self.dead:
            key, rec = next(iter(self.dead.items()))
            if len(self.dead) <= self.dead_keep and now - rec.exited_at < self.dead_seconds:
                break
            del self.dead[key]
            self.counters["dead_evicted"] += 1
            self.evict(rec)
        while len(self.held) > self.held_keep:  # only a chain of fork-and-exit generations gets here
            key = next(iter(self.held))
            rec = self.held.pop(key)
            self.kids.pop(key, None)
            self.counters["held_evicted"] += 1
            self.evict(rec)
