"""Which live processes descend from an MCP server launch, and in which phase.

:class:`LineageTracker` knows every process, its parent (kept across the
parent's exit: egresswatch.attribute.proctable) and its lineage (server,
host, phase, root: egresswatch.mcp.match), fed by the proc connector or by
polling (egresswatch.attribute.procfeed). A chain is always the process
itself first, then its parent, grandparent ...; the ROOT is the outermost
process of the chain that matches, and the phase rules are those of
:func:`egresswatch.mcp.match.classify_with`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace

from egresswatch.attribute.containers import SHIMS, ContainerLinker
from egresswatch.attribute.listings import all_pids
from egresswatch.attribute.procevents import CLK_TCK, boot_time, read_environ_has, read_stat
from egresswatch.attribute.procfeed import ProcessFeed
from egresswatch.attribute.procread import EXEC_EVENT_LAG, ExecSource, exec_since_fork, read_seen
from egresswatch.attribute.proctable import ProcessTable, ProcKey, ProcRecord
from egresswatch.attribute.trees import ServerTree, server_trees
from egresswatch.mcp.match import INSTALL, LIFECYCLE_ENV, Lineage, classify_with
from egresswatch.mcp.matcher import Matcher, ServerLike
from egresswatch.mcp.signature import signature
from egresswatch.model import ProcessInfo

log = logging.getLogger(__name__)


class LineageTracker(ProcessTable):
    """Every process's parent and MCP lineage, kept up to date live.

    ``start()`` follows the kernel proc connector when it can (Linux, root,
    initial netns) and otherwise polls with psutil every ``poll_interval``
    seconds; it returns which ("connector" or "poll"). What happens when:

    - fork: the child gets a record at once, a copy of the parent's command
      line and lineage, so even a child that never execs (or dies within
      microseconds) is tied to its server;
    - exec: /proc/PID/{stat,cmdline,exe,status} are read at once and the
      lineage recomputed; inside an installing tree /proc/PID/environ is
      checked for npm_lifecycle_event (postinstall scripts);
    - exit: the record is kept while a tracked process still descends from
      it (``held``: evicted only when none does, whatever else exits), so a
      chain survives the parent's exit, a double fork + setsid and reparenting
      to pid 1; an exited process without descendants goes to a bounded store
      (``dead_keep`` records, ``dead_seconds``) for late packet lookups.
    """

    def __init__(
        self,
        servers: Sequence[ServerLike],
        patterns: Sequence[str] = (),
        poll_interval: float = 0.5,
        dead_keep: int = 4096,
        dead_seconds: float = 600.0,
    ) -> None:
        super().__init__(dead_keep, dead_seconds)
        self.matcher = Matcher(servers, patterns)
        self._feed = ProcessFeed(self, poll_interval)
        self._listeners: list[Callable[[int], None]] = []
        #: ties a container's first process to the ``docker run`` of an MCP tree
        #: (set before start(); see egresswatch.attribute.containers)
        self.linker: ContainerLinker | None = None
        #: what the kernel saw at a pid's last exec (egresswatch.ebpf: argv read
        #: before the program ran), preferred over a rewritable /proc/PID/cmdline
        self.exec_source: ExecSource | None = None

    def start(self, use_connector: bool = True) -> str:
        """Follow process events (egresswatch.attribute.procfeed); returns
        "connector" or "poll"."""
        return self._feed.start(use_connector)

    def stop(self) -> None:
        self._feed.stop()

    @property
    def mode(self) -> str:
        return self._feed.mode

    def seed(self) -> None:
        """Walk every process now (parents before children)."""
        infos = [i for i in (self._read(pid) for pid in all_pids()) if i is not None]
        infos.sort(key=lambda i: (i.create_time, i.pid))
        with self.lock:
            for info in infos:
                if info.pid not in self.live:
                    self._add(info, self._parent_key(info.ppid))
            shim_children = [
                r.info for r in self.live.values() if r.lineage is None and self._under_shim(r.info)
            ]
        if any([self._link(info) for info in shim_children]):
            with self.lock:  # the containers' own children were classified before their link
                for rec in sorted(self.live.values(), key=lambda r: (r.info.create_time, r.info.pid)):
                    if rec.lineage is None:
                        rec.lineage = classify_with(
                            self.chain(rec, include_self=True), self.matcher, self.marks
                        )

    # -- event handlers (also used by tests) ------------------------------
    def on_fork(self, pid: int, ppid: int, ts_ns: int = 0) -> None:
        st = read_stat(pid)
        with self.lock:
            parent = self.live.get(ppid) or self._ensure(ppid)
            if st is not None:
                ct = st[1]
            else:  # already gone: estimate from the event time, in clock ticks like /proc
                ct = int(ts_ns * CLK_TCK // 1_000_000_000) / CLK_TCK + boot_time()
            old = self.live.get(pid)
            if old is not None and old.info.create_time == ct:
                # read from /proc (on demand) before this event arrived: the fork's
                # parent is authoritative (it may have exited and been replaced by 1)
                if parent is not None and old.parent != parent.info.key:
                    self.set_parent(old, parent.info.key)
                    old.info = replace(old.info, ppid=ppid)
                    old.lineage = classify_with(self.chain(old, include_self=True), self.matcher, self.marks)
                return
            base = parent.info if parent else ProcessInfo(pid=pid, create_time=ct)
            info = ProcessInfo(pid, ct, ppid, base.name, base.exe, base.cmdline, base.user)
            rec = self._add(info, parent.info.key if parent else None, classify_now=False)
            rec.forked = True
            lin = parent.lineage if parent else None
            rec.lineage = replace(lin, depth=lin.depth + 1) if lin is not None else None
            self.counters["forks"] += 1
        if lin is not None:
            self._notify(pid)

    def on_exec(self, pid: int) -> None:
        info = self._read(pid)
        with self.lock:
            self.counters["execs"] += 1
            if info is None:
                return  # gone already: the fork copy stays
            rec = self.live.get(pid)
            if rec is not None and rec.info.create_time == info.create_time:
                rec.info, rec.forked = info, False
                parent = rec.parent
            else:
                parent = self._parent_key(info.ppid)
                rec = self._add(info, parent, classify_now=False)
            if (
                rec.lineage is not None
                and rec.lineage.phase == INSTALL
                and read_environ_has(pid, LIFECYCLE_ENV)
            ):
                self.marks.add(info.key)
            # an exec changes what a process runs, never whom it descends from: a
            # lineage inherited at fork stays when the chain above is out of reach
            rec.lineage = (
                classify_with(self.chain(rec, include_self=True), self.matcher, self.marks) or rec.lineage
            )
            tied = rec.lineage is not None
            shim_child = not tied and self._under_shim(info)
        if shim_child:
            tied = self._link(info)
        if tied:
            self._notify(pid)

    # -- containers -------------------------------------------------------
    def container_clis(self) -> list[ProcessInfo]:
        """Live ``docker|podman run`` processes inside MCP trees."""
        with self.lock:
            infos = [r.info for r in self.live.values() if r.lineage is not None]
        return [i for i in infos if (sig := signature(i.cmdline)) is not None and sig.kind == "docker"]

    def _under_shim(self, info: ProcessInfo) -> bool:
        """A container's first process: its current parent is a container shim."""
        if self.linker is None or not info.ppid:
            return False
        parent = self.live.get(info.ppid)
        name = parent.info.name if parent is not None else None
        return name is not None and name.startswith(SHIMS)

    def _link(self, info: ProcessInfo) -> bool:
        """File a container's first process under the MCP tree's ``docker run``
        that started the container (called without the lock: it asks the engine)."""
        assert self.linker is not None
        try:
            cli = self.linker.link(info)
        except Exception:
            log.exception("linking pid %d to its container's docker run", info.pid)
            return False
        if cli is None:
            return False
        with self.lock:
            rec = self.live.get(info.pid)
            if rec is None or rec.info.create_time != info.create_time or self.get(cli) is None:
                log.debug("container process %d gone before its link", info.pid)
                return False
            self.set_parent(rec, cli)
            rec.lineage = classify_with(self.chain(rec, include_self=True), self.matcher, self.marks)
            self.counters["container_links"] += 1
            log.debug("container process %d: %s", info.pid, rec.lineage)
            return rec.lineage is not None

    def add_listener(self, callback: Callable[[int], None]) -> None:
        """``callback(pid)`` is called (from the tracker thread, without its lock)
        when a process of an MCP tree forks or execs: the socket harvester
        watches newborns closely."""
        self._listeners.append(callback)

    def _notify(self, pid: int) -> None:
        for cb in self._listeners:
            try:
                cb(pid)
            except Exception:
                log.exception("lineage listener failed")

    def on_exit(self, pid: int) -> None:
        with self.lock:
            self.remove(pid)

    # -- queries --------------------------------------------------------
    def lookup(self, pid: int) -> tuple[ProcessInfo | None, tuple[ProcessInfo, ...], Lineage | None]:
        """(process, ancestors parent first, lineage) of a live pid; reads /proc
        on demand for a process not seen yet; (None, (), None) if unknown."""
        with self.lock:
            rec = self.live.get(pid) or self._ensure(pid)
            if rec is None:
                return None, (), None
            if rec.forked:
                self._exec_unheard(rec)
            return rec.info, tuple(self.chain(rec, include_self=False)), rec.lineage

    def lookup_key(self, key: ProcKey) -> tuple[ProcessInfo | None, tuple[ProcessInfo, ...], Lineage | None]:
        with self.lock:
            rec = self.get(key)
            if rec is not None and rec.forked:
                self._exec_unheard(rec)
            return super().lookup_key(key)

    def _exec_unheard(self, rec: ProcRecord) -> None:
        """A fork's copy asked for before its exec event was handled (procread.exec_since_fork)."""
        young = rec.alive and time.monotonic() - rec.born < EXEC_EVENT_LAG
        now = exec_since_fork(rec.info, self.exec_source, young)
        if now is not None:
            rec.info, rec.forked = now, False
            rec.lineage = (
                classify_with(self.chain(rec, include_self=True), self.matcher, self.marks) or rec.lineage
            )
            self.counters["exec_before_event"] += 1

    def trees(self) -> list[ServerTree]:
        """Per MCP server launch, its process tree (egresswatch.attribute.trees)."""
        return server_trees(self)

    # -- internals --------------------------------------------------------
    def classify(self, chain: list[ProcessInfo]) -> Lineage | None:
        """The lineage of a chain (the process first) built outside the tracker."""
        with self.lock:
            return classify_with(chain, self.matcher, self.marks)

    def _read(self, pid: int) -> ProcessInfo | None:
        info, rewritten = read_seen(pid, self.exec_source)
        if rewritten:
            self.counters["argv_rewritten"] += 1
        return info

    def _parent_key(self, ppid: int | None) -> ProcKey | None:
        if not ppid:
            return None
        rec = self.live.get(ppid) or self._ensure(ppid)
        return rec.info.key if rec else None

    def _ensure(self, pid: int, depth: int = 0) -> ProcRecord | None:
        """The live record of ``pid``, reading /proc (and unknown parents) if needed."""
        rec = self.live.get(pid)
        if rec is not None or pid <= 0 or depth > 64:
            return rec
        info = self._read(pid)
        if info is None:
            return None
        parent = self._ensure(info.ppid, depth + 1) if info.ppid else None
        return self._add(info, parent.info.key if parent else None)

    def _add(self, info: ProcessInfo, parent: ProcKey | None, classify_now: bool = True) -> ProcRecord:
        rec = self.insert(info, parent)
        if classify_now:
            rec.lineage = classify_with(self.chain(rec, include_self=True), self.matcher, self.marks)
        return rec

    def poll_once(self) -> None:
        """One polling round: add new processes, retire vanished ones."""
        pids = set(all_pids())
        with self.lock:
            known = set(self.live)
        for pid in sorted(pids - known):
            info = self._read(pid)
            if info is not None:
                with self.lock:
                    self._add(info, self._parent_key(info.ppid))
        for pid in known - pids:
            self.on_exit(pid)
