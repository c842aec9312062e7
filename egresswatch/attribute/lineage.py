"""Which processes descend from an MCP server launch, and in which phase.

Two parts:

- pure matching: :func:`signature` reduces a command line to what was really
  launched, seeing through the wrappers hosts and package runners insert
  (``sh -c``, ``cmd /c``, ``env``, interpreters, ``npx``/``npm exec``,
  ``uvx``/``uv tool uvx``/``pipx run``, ``uv run``, ``docker run``);
  :class:`Matcher` ties a command line to a discovered ServerDef or to a
  configured launcher pattern; :func:`classify` turns an ancestor chain into a
  :class:`Lineage` (server, host, phase, root).
- live state: :class:`LineageTracker` knows every process, its parent (kept
  across the parent's exit) and its lineage, fed by the proc connector
  (egresswatch.attribute.procevents) or by psutil polling.

A chain is always the process itself first, then its parent, grandparent ...
The ROOT is the outermost process of the chain that matches (so ``sh -c "npx
-y pkg"`` is the root, and npm's install children, siblings of the final
server process, are tied to it too).

Phase: a root that is a package runner starts in "install"; walking down from
the root, the first process that is an install step (``npm install``,
``node-gyp``, ``pip install``, an npm lifecycle script, a PEP 517 build hook
...) fixes "install" for everything below it; the first process that is
neither a runner, a shell wrapper nor an install step is the server itself and
fixes "run" for everything below it (a server that later runs ``npm install``
is still running, so install allowlists do not cover it).
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import psutil

from egresswatch.attribute.containers import SHIMS, ContainerLinker
from egresswatch.attribute.procevents import (
    CLK_TCK,
    EXEC,
    EXIT,
    FORK,
    ProcConnector,
    boot_time,
    read_environ_has,
    read_process,
    read_stat,
)
from egresswatch.mcp.match import (
    INSTALL,
    LIFECYCLE_ENV,
    Lineage,
    Matcher,
    ServerLike,
    classify_with,
    host_app,
    signature,
)
from egresswatch.model import ProcessInfo

if TYPE_CHECKING:
    from egresswatch.ebpf.records import ExecRecord

log = logging.getLogger(__name__)


@dataclass(slots=True)
class _Rec:
    info: ProcessInfo
    parent: tuple[int, float] | None
    lineage: Lineage | None = None
    alive: bool = True
    exited_at: float = 0.0  # time.monotonic()
    exited_wall: float = 0.0  # time.time(), to compare with packet timestamps
    born: float = 0.0  # time.monotonic() when first seen


@dataclass(frozen=True, slots=True)
class TreeNode:
    process: ProcessInfo
    phase: str | None
    alive: bool
    children: tuple[TreeNode, ...] = ()


@dataclass(frozen=True, slots=True)
class ServerTree:
    server: str
    host: str | None
    root: TreeNode


class LineageTracker:
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
      it (``_held``: evicted only when none does, whatever else exits), so a
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
        self.matcher = Matcher(servers, patterns)
        self.poll_interval = poll_interval
        self.dead_keep = dead_keep
        self.dead_seconds = dead_seconds
        self._lock = threading.RLock()
        self._live: dict[int, _Rec] = {}
        self._dead: OrderedDict[tuple[int, float], _Rec] = OrderedDict()  # exited leaves, oldest first
        self._held: dict[tuple[int, float], _Rec] = {}  # exited, with tracked descendants
        self._kids: Counter[tuple[int, float]] = Counter()  # records whose parent is the key
        self.held_keep = 16 * dead_keep  # bounds a fork-and-exit chain of any length
        self._marks: set[tuple[int, float]] = set()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connector: ProcConnector | None = None
        self.mode = "none"
        self.counters: Counter[str] = Counter()
        self._listeners: list[Callable[[int], None]] = []
        #: ties a container's first process to the ``docker run`` of an MCP tree
        #: (set before start(); see egresswatch.attribute.containers)
        self.linker: ContainerLinker | None = None
        #: what the kernel saw at a pid's last exec (egresswatch.ebpf: argv read
        #: before the program ran), preferred over a rewritable /proc/PID/cmdline
        self.exec_source: Callable[[int], ExecRecord | None] | None = None

    # -- lifecycle ------------------------------------------------------
    def start(self, use_connector: bool = True) -> str:
        if use_connector and sys.platform.startswith("linux"):
            conn = ProcConnector()
            try:
                conn.open()
            except OSError as exc:
                log.info("proc connector unavailable (%s); polling every %.2fs", exc, self.poll_interval)
            else:
                self._connector = conn
        self.seed()  # after subscribing, so nothing falls in between
        target = self._follow if self._connector else self._poll
        self.mode = "connector" if self._connector else "poll"
        self._thread = threading.Thread(target=target, name=f"lineage-{self.mode}", daemon=True)
        self._thread.start()
        return self.mode

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=3)
        if self._connector is not None:
            self._connector.close()

    def seed(self) -> None:
        """Walk every process now (parents before children)."""
        infos = [i for i in (self._read(pid) for pid in psutil.pids()) if i is not None]
        infos.sort(key=lambda i: (i.create_time, i.pid))
        with self._lock:
            for info in infos:
                if info.pid not in self._live:
                    self._add(info, self._parent_key(info.ppid))
            shim_children = [
                r.info for r in self._live.values() if r.lineage is None and self._under_shim(r.info)
            ]
        if any([self._link(info) for info in shim_children]):
            with self._lock:  # the containers' own children were classified before their link
                for rec in sorted(self._live.values(), key=lambda r: (r.info.create_time, r.info.pid)):
                    if rec.lineage is None:
                        rec.lineage = classify_with(
                            self._chain(rec, include_self=True), self.matcher, self._marks
                        )

    # -- event handlers (also used by tests) ------------------------------
    def on_fork(self, pid: int, ppid: int, ts_ns: int = 0) -> None:
        st = read_stat(pid)
        with self._lock:
            parent = self._live.get(ppid) or self._ensure(ppid)
            if st is not None:
                ct = st[1]
            else:  # already gone: estimate from the event time, in clock ticks like /proc
                ct = int(ts_ns * CLK_TCK // 1_000_000_000) / CLK_TCK + boot_time()
            old = self._live.get(pid)
            if old is not None and old.info.create_time == ct:
                # read from /proc (on demand) before this event arrived: the fork's
                # parent is authoritative (it may have exited and been replaced by 1)
                if parent is not None and old.parent != parent.info.key:
                    self._set_parent(old, parent.info.key)
                    old.info = replace(old.info, ppid=ppid)
                    old.lineage = classify_with(
                        self._chain(old, include_self=True), self.matcher, self._marks
                    )
                return
            base = parent.info if parent else ProcessInfo(pid=pid, create_time=ct)
            info = ProcessInfo(pid, ct, ppid, base.name, base.exe, base.cmdline, base.user)
            rec = self._add(info, parent.info.key if parent else None, classify_now=False)
            lin = parent.lineage if parent else None
            rec.lineage = replace(lin, depth=lin.depth + 1) if lin is not None else None
            self.counters["forks"] += 1
        if lin is not None:
            self._notify(pid)

    def on_exec(self, pid: int) -> None:
        info = self._read(pid)
        with self._lock:
            self.counters["execs"] += 1
            if info is None:
                return  # gone already: the fork copy stays
            rec = self._live.get(pid)
            if rec is not None and rec.info.create_time == info.create_time:
                rec.info = info
                parent = rec.parent
            else:
                parent = self._parent_key(info.ppid)
                rec = self._add(info, parent, classify_now=False)
            if (
                rec.lineage is not None
                and rec.lineage.phase == INSTALL
                and read_environ_has(pid, LIFECYCLE_ENV)
            ):
                self._marks.add(info.key)
            # an exec changes what a process runs, never whom it descends from: a
            # lineage inherited at fork stays when the chain above is out of reach
            rec.lineage = (
                classify_with(self._chain(rec, include_self=True), self.matcher, self._marks) or rec.lineage
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
        with self._lock:
            infos = [r.info for r in self._live.values() if r.lineage is not None]
        return [i for i in infos if (sig := signature(i.cmdline)) is not None and sig.kind == "docker"]

    def _under_shim(self, info: ProcessInfo) -> bool:
        """A container's first process: its current parent is a container shim."""
        if self.linker is None or not info.ppid:
            return False
        parent = self._live.get(info.ppid)
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
        with self._lock:
            rec = self._live.get(info.pid)
            if rec is None or rec.info.create_time != info.create_time or self._get(cli) is None:
                log.debug("container process %d gone before its link", info.pid)
                return False
            self._set_parent(rec, cli)
            rec.lineage = classify_with(self._chain(rec, include_self=True), self.matcher, self._marks)
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
        with self._lock:
            rec = self._live.pop(pid, None)
            if rec is None:
                return
            self.counters["exits"] += 1
            rec.exited_at = time.monotonic()
            rec.exited_wall = time.time()
            self._retire(rec)

    # -- queries --------------------------------------------------------
    def lookup(self, pid: int) -> tuple[ProcessInfo | None, tuple[ProcessInfo, ...], Lineage | None]:
        """(process, ancestors parent first, lineage) of a live pid; reads /proc
        on demand for a process not seen yet; (None, (), None) if unknown."""
        with self._lock:
            rec = self._live.get(pid) or self._ensure(pid)
            if rec is None:
                return None, (), None
            return rec.info, tuple(self._chain(rec, include_self=False)), rec.lineage

    def lookup_key(
        self, key: tuple[int, float]
    ) -> tuple[ProcessInfo | None, tuple[ProcessInfo, ...], Lineage | None]:
        """Like lookup() for a (pid, create_time) identity, exited processes included."""
        with self._lock:
            rec = self._get(key)
            if rec is None:
                return None, (), None
            return rec.info, tuple(self._chain(rec, include_self=False)), rec.lineage

    def alive(self, key: tuple[int, float]) -> bool:
        """True while the process with this identity runs (as far as tracked)."""
        with self._lock:
            rec = self._live.get(key[0])
            return rec is not None and rec.info.create_time == key[1]

    def exit_time(self, key: tuple[int, float]) -> float | None:
        """Epoch seconds at which the process was seen exiting; None while it
        runs or when it is not known."""
        with self._lock:
            rec = self._get(key)
            return rec.exited_wall if rec is not None and not rec.alive else None

    def pids_seen_since(self, since: float) -> list[int]:
        """Live pids first seen at or after ``since`` (time.monotonic()), newest first."""
        with self._lock:
            recs = [r for r in self._live.values() if r.born >= since]
        return [r.info.pid for r in sorted(recs, key=lambda r: -r.born)]

    def unknown(self, pids: list[int]) -> list[int]:
        """Those of ``pids`` not tracked yet (events not processed yet)."""
        with self._lock:
            return [p for p in pids if p not in self._live]

    def tree_pids(self) -> list[int]:
        """Live pids that descend from an MCP server launch."""
        with self._lock:
            return [pid for pid, rec in self._live.items() if rec.lineage is not None]

    def trees(self) -> list[ServerTree]:
        """Per MCP server launch, its process tree (exited members shown as such
        while their record is kept; a subtree with no live member is left out)."""
        with self._lock:
            recs = [
                r
                for r in (*self._live.values(), *self._held.values(), *self._dead.values())
                if r.lineage is not None
            ]
            kids: dict[tuple[int, float], list[_Rec]] = {}
            for r in recs:
                if r.parent is not None:
                    kids.setdefault(r.parent, []).append(r)

            def node(r: _Rec, depth: int = 0) -> TreeNode | None:
                children = [] if depth > 64 else [node(c, depth + 1) for c in kids.get(r.info.key, [])]
                alive = tuple(c for c in children if c is not None)
                if not r.alive and not alive:
                    return None
                return TreeNode(r.info, r.lineage.phase if r.lineage else None, r.alive, alive)

            out = []
            for r in recs:
                lin = r.lineage
                assert lin is not None
                parent = self._get(r.parent) if r.parent else None
                if lin.root.key == r.info.key or parent is None or parent.lineage is None:
                    n = node(r)
                    if n is not None:
                        out.append(ServerTree(lin.server, lin.host, n))
            return sorted(out, key=lambda t: (t.server, t.root.process.create_time))

    # -- internals --------------------------------------------------------
    def _get(self, key: tuple[int, float]) -> _Rec | None:
        rec = self._live.get(key[0])
        if rec is not None and rec.info.create_time == key[1]:
            return rec
        return self._held.get(key) or self._dead.get(key)

    def classify(self, chain: list[ProcessInfo]) -> Lineage | None:
        """The lineage of a chain (the process first) built outside the tracker."""
        with self._lock:
            return classify_with(chain, self.matcher, self._marks)

    def _read(self, pid: int) -> ProcessInfo | None:
        info = _read_any(pid)
        if info is None or self.exec_source is None:
            return info
        try:
            rec = self.exec_source(pid)
        except OSError:
            return info
        if rec is None or rec.create_time != info.create_time:
            return info  # exec'd while no eBPF program watched
        seen = kernel_view(info, rec)
        if seen is not info:
            self.counters["argv_rewritten"] += 1
        return seen

    def _parent_key(self, ppid: int | None) -> tuple[int, float] | None:
        if not ppid:
            return None
        rec = self._live.get(ppid) or self._ensure(ppid)
        return rec.info.key if rec else None

    def _ensure(self, pid: int, depth: int = 0) -> _Rec | None:
        """The live record of ``pid``, reading /proc (and unknown parents) if needed."""
        rec = self._live.get(pid)
        if rec is not None or pid <= 0 or depth > 64:
            return rec
        info = self._read(pid)
        if info is None:
            return None
        parent = self._ensure(info.ppid, depth + 1) if info.ppid else None
        return self._add(info, parent.info.key if parent else None)

    def _add(self, info: ProcessInfo, parent: tuple[int, float] | None, classify_now: bool = True) -> _Rec:
        old = self._live.get(info.pid)
        if old is not None and old.info.create_time != info.create_time:  # missed exit: pid reused
            old.exited_at = time.monotonic()
            self._retire(old)
        rec = _Rec(info, None, born=time.monotonic())
        self._set_parent(rec, parent)
        self._live[info.pid] = rec
        if classify_now:
            rec.lineage = classify_with(self._chain(rec, include_self=True), self.matcher, self._marks)
        return rec

    def _chain(self, rec: _Rec, include_self: bool) -> list[ProcessInfo]:
        out = [rec.info] if include_self else []
        seen = {rec.info.key}
        cur = rec
        while cur.parent is not None and len(out) < 64:
            nxt = self._get(cur.parent)
            if nxt is None or nxt.info.key in seen:
                break
            seen.add(nxt.info.key)
            out.append(nxt.info)
            cur = nxt
        return out

    def _set_parent(self, rec: _Rec, parent: tuple[int, float] | None) -> None:
        """Link ``rec`` under ``parent``, keeping the descendant counts right."""
        old = rec.parent
        rec.parent = parent
        if parent is not None:
            self._kids[parent] += 1
            dead = self._dead.pop(parent, None)
            if dead is not None:  # an exited leaf gains a descendant (a container link)
                self._held[parent] = dead
        if old is not None:
            self._release(old)

    def _release(self, key: tuple[int, float]) -> None:
        """One descendant record of ``key`` is gone; an exited ``key`` with none
        left becomes an evictable leaf."""
        self._kids[key] -= 1
        if self._kids[key] > 0:
            return
        del self._kids[key]
        rec = self._held.pop(key, None)
        if rec is not None:
            self._dead[key] = rec

    def _retire(self, rec: _Rec) -> None:
        """``rec`` exited: held while tracked processes descend from it, else a leaf."""
        rec.alive = False
        if self._kids.get(rec.info.key, 0) > 0:
            self._held[rec.info.key] = rec
        else:
            self._dead[rec.info.key] = rec
        self._prune()

    def _evict(self, rec: _Rec) -> None:
        self._marks.discard(rec.info.key)
        if rec.parent is not None:
            self._release(rec.parent)

    def _prune(self) -> None:
        now = time.monotonic()
        while self._dead:
            key, rec = next(iter(self._dead.items()))
            if len(self._dead) <= self.dead_keep and now - rec.exited_at < self.dead_seconds:
                break
            del self._dead[key]
            self.counters["dead_evicted"] += 1
            self._evict(rec)
        while len(self._held) > self.held_keep:  # only a chain of fork-and-exit generations gets here
            key = next(iter(self._held))
            rec = self._held.pop(key)
            self._kids.pop(key, None)
            self.counters["held_evicted"] += 1
            self._evict(rec)

    def _follow(self) -> None:
        conn = self._connector
        assert conn is not None
        while not self._stop.is_set():
            try:
                events = conn.read(0.25)
            except OSError as exc:
                log.error("proc connector failed (%s); falling back to polling", exc)
                self.mode = "poll"
                self._poll()
                return
            for ev in events:
                try:
                    if ev.what == FORK and ev.pid == ev.tid:
                        self.on_fork(ev.pid, ev.ppid, ev.timestamp_ns)
                    elif ev.what == EXEC:
                        self.on_exec(ev.pid)
                    elif ev.what == EXIT and ev.pid == ev.tid:
                        self.on_exit(ev.pid)
                except Exception:  # one odd process must not stop tracking
                    log.exception("proc event %r", ev)

    def _poll(self) -> None:
        while not self._stop.wait(self.poll_interval):
            try:
                self.poll_once()
            except Exception:
                log.exception("process poll failed")

    def poll_once(self) -> None:
        """One polling round: add new processes, retire vanished ones."""
        pids = set(psutil.pids())
        with self._lock:
            known = set(self._live)
        for pid in sorted(pids - known):
            info = self._read(pid)
            if info is not None:
                with self._lock:
                    self._add(info, self._parent_key(info.ppid))
        for pid in known - pids:
            self.on_exit(pid)


def kernel_view(info: ProcessInfo, rec: ExecRecord) -> ProcessInfo:
    """``info`` with the command line and name the kernel saw at exec when the
    process has rewritten them since (a server posing as ``/usr/sbin/sshd -D``);
    ``info`` itself when /proc still shows what was launched. Only the first
    512 bytes of argv are kept at exec: a longer one that /proc still starts
    with is taken whole from /proc."""
    if not rec.argv:
        return info
    now, then = "\0".join(info.cmdline), "\0".join(rec.argv)
    same = now.startswith(then) if rec.truncated else now == then
    if same and info.name == rec.comm:
        return info
    return replace(info, cmdline=info.cmdline if same else rec.argv, name=rec.comm or info.name)


def _read_any(pid: int) -> ProcessInfo | None:
    if sys.platform.startswith("linux"):
        return read_process(pid)
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            d = p.as_dict(["ppid", "name", "exe", "cmdline", "username"], ad_value=None)
            return ProcessInfo(
                pid, p.create_time(), d["ppid"], d["name"], d["exe"], tuple(d["cmdline"] or ()), d["username"]
            )
    except (psutil.Error, OSError):
        return None


def host_project_dirs() -> list[Path]:
    """Working directories of running MCP host processes (Claude Code, Cursor,
    VS Code, Zed ...): where project-scope configs (.mcp.json, .cursor/mcp.json,
    .vscode/mcp.json ...) are found. The filesystem root and home folders are
    left out (a home is scanned as a home already)."""
    found: set[Path] = set()
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        try:
            info = ProcessInfo(pid=proc.pid, create_time=0.0, name=proc.info["name"],
                               cmdline=tuple(proc.info["cmdline"] or ()))  # fmt: skip
            cwd = proc.info["cwd"]
        except (psutil.Error, TypeError):
            continue
        if not cwd or host_app(info) is None:
            continue
        path = Path(cwd)
        if path == Path("/") or path.parent in (Path("/home"), Path("/Users")) or path == Path("/root"):
            continue
        found.add(path)
    return sorted(found)


def render_tree(tree: ServerTree) -> str:
    """A server's live process tree as indented text (pid, name, phase; exited
    processes marked), for `egresswatch servers`."""
    lines: list[str] = []

    def walk(node: TreeNode, depth: int) -> None:
        p = node.process
        cmd = " ".join(p.cmdline)[:100] or (p.name or "?")
        state = "" if node.alive else " (exited)"
        phase = f" [{node.phase}]" if node.phase else ""
        lines.append(f"{'  ' * depth}{'└─ ' if depth else ''}{p.pid} {cmd}{phase}{state}")
        for child in node.children:
            walk(child, depth + 1)

    walk(tree.root, 0)
    return "\n".join(lines)
