"""The live daemon: ``egresswatch run``.

Foreground, logs to stderr (journald/launchd capture it), ``Type=notify``:

- start: load the config (one-line error on a bad one), refuse files other
  users could write, open the capture, discover MCP servers, start lineage and
  attribution, build the one :class:`~egresswatch.pipeline.Pipeline`, then
  ``READY=1``;
- loop on the main thread: frames -> pipeline; every ``HOUSEKEEP`` seconds
  decide flows whose hello window passed while capture was idle, flush the
  store, tick the alerter, write the status file, ping the watchdog;
  prune old events once an hour in bounded chunks;
- signals go through a self-pipe (``signal.set_wakeup_fd``) and only set
  flags: SIGHUP reloads the config and allowlists (a bad config is logged and
  the old one kept), SIGTERM/SIGINT drain the capture ring, flush everything
  and exit 0.

One daemon per database and per status file: each holds an exclusive lock
(``<file>.lock``, root's, in a root-only directory). The status file says
whether events are being lost and why (:mod:`egresswatch.service.health`).
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import queue
import signal
import sys
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from egresswatch.capture.fastlane import jumps_queue
from egresswatch.capture.live import LiveSource
from egresswatch.config import Config, load_config
from egresswatch.errors import ConfigError, EgresswatchError, PermissionProblem
from egresswatch.model import Frame, Observation
from egresswatch.pipeline import Pipeline, Sink
from egresswatch.safefiles import InstanceLock, make_dir, require_trusted, write_atomic
from egresswatch.service import sdnotify
from egresswatch.service.health import Health

if TYPE_CHECKING:
    from egresswatch.mcp.discovery import Discovery

log = logging.getLogger("egresswatch.service")  # the name users see in the log: the stage, not the module

DEFAULT_STATUS_PATH = Path("/run/egresswatch/status.json")
HOUSEKEEP = 0.5  # seconds between flush/status/watchdog work
UDP_FLOW_HOLD = 0.2  # a udp_flow waits at most this long for the capture to pass its time
PRUNE_EVERY = 3600.0
SEED_LIMIT = 50_000  # learned (server, destination) pairs read back at start
HOSTS_FILE = Path("/etc/hosts")  # its names count as resolved (start and reload)
# SIGTERM: read what the capture ring still holds for up to this long (the
# systemd unit's TimeoutStopSec is 30 s), until no frame came for DRAIN_QUIET.
DRAIN_SECONDS = 20.0
DRAIN_QUIET = 0.2
HURRY_LAG = 0.25  # seconds behind the capture from which attribution makes no socket lookups
SHED_LAG = 5.0  # seconds behind (the ring holds about 12 s) from which DNS outside MCP trees is shed


@dataclass
class RunOptions:
    config_path: Path | None = None
    db_path: Path | None = None
    record_procs: Path | None = None
    interfaces: tuple[str, ...] = ()
    status_path: Path = DEFAULT_STATUS_PATH
    use_connector: bool = True


@dataclass
class _Flags:
    stop: bool = False
    reload: bool = False
    signals: list[int] = field(default_factory=list)


def trusted_file_problems(path: Path) -> list[str]:
    """Ways users other than root could change ``path`` (a config file or the
    database): writable file or directories, foreign owner, symlinked file."""
    from egresswatch.store.db import check_permissions

    return check_permissions(path)


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace the status file (readable by all: counters only),
    through an O_EXCL temporary file (the daemon checked the directory is root's)."""
    make_dir(path.parent)
    write_atomic(path, (json.dumps(data, indent=1, sort_keys=True) + "\n").encode(), 0o644)


def read_status(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _unusable(n: int) -> str:
    return (
        f"; {n} unusable alert URL{'s' if n != 1 else ''} ignored, see `egresswatch doctor`" if n > 0 else ""
    )


class Daemon:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.flags = _Flags()
        self.counters: Counter[str] = Counter()
        self.config: Config = Config()
        self.source: LiveSource | None = None
        self.pipeline: Pipeline | None = None
        self._frames_seen = -1  # pipeline.frames at the last housekeeping tick
        self.store: Any = None
        self.alerter: Any = None
        self.policy: Any = None
        self.names: Any = None
        self.lineage: Any = None
        self.attributor: Any = None
        self.kernel: Any = None  # egresswatch.ebpf.loader.KernelFlows when loaded
        self.attribution_mode: dict[str, Any] = {"mode": "none"}
        self._udp_flows: queue.SimpleQueue[Any] = queue.SimpleQueue()  # kernel records of first datagrams
        self._udp_pending: deque[Observation] = (
            deque()
        )  # their udp_flow observations, waiting for the capture
        self._last_frame_ts = 0.0
        self.recording: Any = None
        self.jsonl: Any = None
        self.started = time.time()
        self._wake_r = -1
        self._wake_w = -1
        self._watchdog: float | None = None
        self.health = Health()
        self.locks: list[InstanceLock] = []
        self._label_limit = 40  # policy.exfil.max_label_len: the fast lane's and hurry's test

    # -- start-up ----------------------------------------------------------------
    def load(self) -> Config:
        from egresswatch.judge.policy import validate

        cfg = load_config(self.opts.config_path)
        try:  # allowlist entries too, so that the error names the file (start and reload)
            validate(cfg)
        except ConfigError as exc:
            raise ConfigError(f"{cfg.source or 'built-in defaults'}: {exc}") from None
        if cfg.source is not None:
            problems = trusted_file_problems(cfg.source)
            if problems:
                raise PermissionProblem(f"refusing to use config {cfg.source}: {problems[0]}")
        return cfg

    def db_path(self) -> Path:
        return self.opts.db_path or self.config.daemon.database

    def start(self) -> None:
        # The capture loop, the lineage tracker and the socket harvester are
        # threads: hand the GIL over every 0.5 ms instead of 5 ms so that a
        # short-lived process is looked up before it is gone (docs/attribution.md).
        sys.setswitchinterval(0.0005)
        self.config = self.load()
        db = self.db_path()
        problems = trusted_file_problems(db)
        if problems:
            raise PermissionProblem(f"refusing to use database {db}: {problems[0]}")
        self._check_outputs()
        try:
            from egresswatch.store.db import make_db_dir

            make_db_dir(db, self.config.daemon.db_group)  # the lock lives beside the database
            self.locks.append(InstanceLock(Path(f"{db}.lock"), f"database {db}").acquire())
            status = self.opts.status_path
            self.locks.append(InstanceLock(Path(f"{status}.lock"), f"status file {status}").acquire())
            ifaces = self.opts.interfaces or self.config.daemon.interfaces
            self.source = LiveSource(
                interfaces=ifaces, rcvbuf=int(self.config.daemon.capture_buffer_mb * (1 << 20))
            ).open()
            self._label_limit = self.config.policy.exfil.max_label_len
            self.source.priority = lambda linktype, data: jumps_queue(linktype, data, self._label_limit)
            try:
                self._build(db)
            except BaseException:
                self.source.close()
                raise
        except BaseException:
            self._release_locks()
            raise
        self._install_signals()

    def _check_outputs(self) -> None:
        """Every file the daemon writes must be in a directory only root can
        write (no planted symlink or hard link can redirect it)."""
        make_dir(self.opts.status_path.parent)
        require_trusted(self.opts.status_path, "status file")
        record = self.opts.record_procs or self.config.daemon.record_procs
        if record is not None:
            require_trusted(record, "--record-procs file")
        if self.config.daemon.jsonl_path is not None:
            require_trusted(self.config.daemon.jsonl_path, "daemon.jsonl_path")

    def _release_locks(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()

    def _build(self, db: Path) -> None:
        from egresswatch.alert.deliver import Alerter
        from egresswatch.attribute.attributor import LiveAttributor
        from egresswatch.attribute.lineage import LineageTracker
        from egresswatch.decode.engine import Engine
        from egresswatch.judge.flows import FlowTracker
        from egresswatch.judge.names import NameMemory
        from egresswatch.judge.policy import Policy
        from egresswatch.store.db import Store

        cfg = self.config
        found = self._discover()
        self.lineage = LineageTracker(found.servers, cfg.discovery.launcher_patterns,
                                      poll_interval=cfg.daemon.proc_poll_interval)  # fmt: skip
        if cfg.daemon.container_sockets:
            from egresswatch.attribute.containers import ContainerLinker, EngineApi

            apis = [EngineApi(path) for path in cfg.daemon.container_sockets]
            self.lineage.linker = ContainerLinker(apis, self.lineage.container_clis)
        self._load_kernel()  # before the tracker starts: it reads exec records from it
        mode = self.lineage.start(use_connector=self.opts.use_connector)
        log.info("process lineage: %s", mode)
        self.attributor = LiveAttributor(self.lineage)
        # behind a flood, socket lookups are skipped, but never for what the fast lane lifts
        self.attributor.hurry = lambda f: (
            _behind(f, HURRY_LAG) and not jumps_queue(f.linktype, f.data, self._label_limit)
        )
        if self.kernel is not None:
            from egresswatch.attribute.kernel import KernelAttributor

            self.attributor = KernelAttributor(self.kernel, self.attributor)
            self.kernel.start_events(self._on_udp_record)  # udp_flow events, handled in run()
        self.attributor.start()
        attributor: Any = self.attributor
        record = self.opts.record_procs or cfg.daemon.record_procs
        if record is not None:
            from egresswatch.attribute.recorded import RecordingAttributor

            attributor = self.recording = RecordingAttributor(attributor, record)
        self.store = Store(db, group=cfg.daemon.db_group, retention=cfg.retention)
        self.alerter = Alerter(cfg.alerts, self.store, digest_timer=60.0)
        names = self.names = NameMemory()
        self._load_hosts()
        self.policy = Policy(cfg, resolved=names.resolved)
        self._seed_learning()
        sinks: list[Sink] = [self.store, self.alerter]
        if cfg.daemon.jsonl_path is not None:
            from egresswatch.store.jsonl import JsonlSink

            self.jsonl = JsonlSink(cfg.daemon.jsonl_path)
            sinks.append(self.jsonl)
        self.pipeline = Pipeline(
            Engine(), attributor, self.policy, names, sinks, FlowTracker(), shed=_behind
        )  # SHED_LAG

    def _load_kernel(self) -> None:
        """Send-time attribution from eBPF programs, else the userspace path
        (docs/attribution.md); which one runs and why goes to the log and status."""
        from egresswatch.ebpf.loader import KernelFlows

        try:
            self.kernel, why = KernelFlows.open()
        except Exception as exc:  # a loader bug must not stop the daemon: fall back
            log.exception("loading the eBPF programs failed")
            self.kernel, why = None, f"loader error: {type(exc).__name__}: {exc}"
        if self.kernel is not None:
            self.lineage.exec_source = self.kernel.exec_record
            self.attribution_mode = {"mode": "ebpf", "reason": why, "programs": self.kernel.attached,
                                     "missing": self.kernel.missing}  # fmt: skip
            log.info("attribution: ebpf (%s)", why)
        else:
            self.attribution_mode = {"mode": "fallback", "reason": why}
            log.warning("attribution: fallback to userspace socket lookups (%s)", why)

    def _load_hosts(self) -> None:
        """/etc/hosts names count as resolved by every process (no DNS packet
        ever shows them); a missing or unreadable file is logged, not fatal."""
        try:
            text = HOSTS_FILE.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            log.warning("cannot read %s: %s", HOSTS_FILE, exc.strerror or exc)
            return
        log.info("%s: %d addresses known by name", HOSTS_FILE, self.names.load_hosts(text))

    def _seed_learning(self) -> None:
        try:
            rows = self.store.execute(
                "SELECT server, dst_name, MIN(ts) FROM events WHERE server IS NOT NULL"
                " AND dst_name IS NOT NULL AND verdict != 'unwatched'"
                " GROUP BY server, dst_name ORDER BY MAX(id) DESC LIMIT ?",
                (SEED_LIMIT,),
            )
        except EgresswatchError as exc:
            log.warning("cannot read the learning baseline: %s", exc)
            return
        for row in rows:
            self.policy.remember(row[0], row[1], row[2])

    def _install_signals(self) -> None:
        faulthandler.register(signal.SIGUSR1, all_threads=True)  # `kill -USR1`: stacks to the log
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        # only flags here; the main loop does the work
        if signum == signal.SIGHUP:
            self.flags.reload = True
        else:
            self.flags.stop = True

    # -- main loop ---------------------------------------------------------------
    def run(self) -> int:
        assert self.source is not None and self.pipeline is not None
        sdnotify.ready(f"capturing; {self.db_path()}")
        log.info(
            "capturing on %s; events to %s; config %s (%d server allowlists, %d alert targets%s)",
            ", ".join(self.source.interfaces) or "all interfaces",
            self.db_path(),
            self.config.source or "built-in defaults",
            len(self.config.servers),
            len(self.alerter.targets),
            _unusable(len(self.config.alerts.urls) - len(self.alerter.targets)),
        )
        watchdog = self._watchdog = sdnotify.watchdog_period()
        tick = min(HOUSEKEEP, watchdog / 2) if watchdog else HOUSEKEEP
        next_prune = time.monotonic() + 60.0
        feed = self.pipeline.feed
        try:
            while not self.flags.stop:
                for frame in self.source.frames(tick, wake_fd=self._wake_r):
                    feed(frame)
                    self._last_frame_ts = frame.ts
                    if self._udp_pending or not self._udp_flows.empty():
                        self._drain_udp_flows()
                self._drain_udp_flows()
                self._drain_wakeups()
                if self.flags.reload:
                    self.flags.reload = False
                    self.reload()
                self.housekeep()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    self._prune()
            self.drain()
            self._last_frame_ts = float("inf")  # stopping: every pending udp_flow goes in
            self._drain_udp_flows()
        finally:
            self.shutdown()
        return 0

    def _on_udp_record(self, rec: Any) -> None:
        if self._udp_flows.qsize() >= 65536:  # the main loop is behind: bounded, counted
            self.counters["udp_flow_dropped"] += 1
            return
        self._udp_flows.put(rec)

    def _drain_udp_flows(self) -> None:
        """udp_flow events: the kernel's records of the first datagram of each
        (process, destination) UDP flow, for MCP tree processes only. A record
        arrives before the packets sent just before it (a DNS answer that names
        its destination) have left the capture ring: it waits until the capture
        has passed its time, or UDP_FLOW_HOLD seconds when the capture is quiet."""
        if self.pipeline is None:
            return
        while True:
            try:
                rec = self._udp_flows.get_nowait()
            except queue.Empty:
                break
            try:
                obs = self.attributor.udp_flow(rec)
            except Exception:
                log.exception("udp_flow event failed")
                self.counters["udp_flow_errors"] += 1
                continue
            if obs is not None:
                self._udp_pending.append(obs)
        now = time.time()
        while self._udp_pending and (
            self._udp_pending[0].ts <= self._last_frame_ts or now - self._udp_pending[0].ts > UDP_FLOW_HOLD
        ):
            self.pipeline.inject(self._udp_pending.popleft())

    def drain(self) -> None:
        """After SIGTERM: feed what the capture ring still holds (a burst just
        before the signal): every frame the kernel stamped before now, i.e.
        until a later frame shows up or none came for DRAIN_QUIET seconds (the
        kernel hands a partly filled block over after 20 ms), at most
        DRAIN_SECONDS; the pipeline and the sinks are flushed next."""
        assert self.source is not None and self.pipeline is not None
        sdnotify.stopping()
        start = time.monotonic()
        cutoff = time.time()  # frames carry the kernel's wall-clock receive time
        deadline = start + DRAIN_SECONDS
        feed = self.pipeline.feed
        n = 0
        caught_up = False
        while not caught_up and time.monotonic() < deadline:
            if self._watchdog:
                sdnotify.watchdog_ping()
            before = n
            for frame in self.source.frames(min(DRAIN_QUIET, max(0.0, deadline - time.monotonic()))):
                feed(frame)
                n += 1
                if frame.ts > cutoff:  # the ring is in arrival order: all earlier frames are read
                    caught_up = True
                    break
            if n == before:
                break
        (log.warning if time.monotonic() >= deadline else log.info)(
            "stopping: %d frames drained from the capture ring in %.2fs", n, time.monotonic() - start
        )

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self._wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def housekeep(self) -> None:
        if self._watchdog:
            sdnotify.watchdog_ping()
        now = time.time()
        try:
            # capture idle since the last tick (no frame drove the clock): decide the flows
            # whose hello window passed by wall time (kernel frame times are wall-clock times)
            if self.pipeline is not None and self.pipeline.frames == self._frames_seen:
                self.pipeline.expire(now)
            self._frames_seen = self.pipeline.frames if self.pipeline is not None else 0
            self.store.flush()
            self.store.check_file()
            self.alerter.tick(now)
        except Exception:  # the store logs and counts its own failures
            log.exception("housekeeping failed")
        self._write_status(now)

    def _prune(self) -> None:
        try:
            result = self.store.prune(time.time(), max_chunks=20)
            deleted = result.deleted_by_age + result.deleted_by_size
            (log.info if deleted else log.debug)(
                "retention: %d events deleted (%d by age, %d by size) in %.3fs; database %.1f MB",
                deleted, result.deleted_by_age, result.deleted_by_size, result.seconds, result.size_bytes / 1e6,
            )  # fmt: skip
        except Exception:
            log.exception("pruning the database failed")

    def reload(self) -> None:
        sdnotify.reloading()
        try:
            cfg = self.load()
            self.policy.reload(cfg)
        except EgresswatchError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self.counters["reloads_rejected"] += 1
        else:
            self.config = cfg
            self._label_limit = cfg.policy.exfil.max_label_len
            self._rediscover()
            self._load_hosts()
            if self.jsonl is not None:
                self.jsonl.reopen()  # after log rotation
            self.counters["reloads"] += 1
            log.info("configuration reloaded from %s", cfg.source or "built-in defaults")
        sdnotify.ready()

    def _discover(self) -> Discovery:
        """The MCP server definitions of every home, the configured extra homes
        and files, and the projects running hosts work in; warnings logged."""
        from egresswatch.attribute.lineage import host_project_dirs
        from egresswatch.mcp.discovery import all_homes, discover

        cfg = self.config.discovery
        found = discover(
            homes=[*all_homes(), *cfg.extra_homes],
            extra_files=cfg.extra_files,
            project_dirs=host_project_dirs(),
            system=True,  # machine-wide managed files speak for every account
        )
        for warning in found.warnings:
            log.warning("discovery: %s", warning)
        log.info("watching %d MCP server definitions", len(found.servers))
        return found

    def _rediscover(self) -> None:
        """New MCP server definitions apply to servers launched from now on."""
        from egresswatch.attribute.lineage import Matcher

        try:
            found = self._discover()
            self.lineage.matcher = Matcher(found.servers, self.config.discovery.launcher_patterns)
        except Exception:  # discovery must never take the daemon down
            log.exception("re-reading MCP host configs failed; keeping the previous server list")

    def stats(self) -> dict[str, int]:
        assert self.source is not None and self.pipeline is not None
        self.source.kernel_stats()
        pc = self.pipeline.counters
        dc = self.pipeline.decoder.counters
        out = {
            "captured": self.source.counters["captured"],
            "kernel_packets": self.source.counters["kernel_packets"],
            "kernel_drops": self.source.counters["kernel_drops"],
            "duplicates": self.source.counters["duplicates"],
            "unattributed": pc["unattributed"],
            "unparsable": sum(v for k, v in dc.items() if "error" in k or "malformed" in k or "bad" in k)
            + pc["decode_errors"],
            "flagged": pc["verdict_flagged"],
            "shed_unwatched_dns": pc["shed_unwatched_dns"],
            "fast_lane": self.source.counters["fast_lane"],
            "alerts_sent": self.alerter.counters["alerts_sent"],
            "alerts_failed": self.alerter.counters["alerts_failed"],
            "alerts_digests": self.alerter.rules.counters["digests"],
            "alerts_held": self.alerter.rules.counters["alerts_suppressed"]
            + self.alerter.rules.counters["alerts_over_budget"],
            "events_stored": self.store.counters["events_written"],
            "store_errors": self.store.counters["write_errors"],
            # 1 while the database is full (events wait in memory: events_pending, bounded)
            "store_disk_full": int(self.store.disk_full),
            "sink_errors": pc["sink_errors"],
            # every way an event or alert can be lost or held back
            "events_dropped": self.store.counters["events_dropped"],
            "events_pending": self.store.pending,
            "db_file_lost": self.store.counters["db_file_lost"],
            "db_reopened": self.store.counters["db_reopened"],
            "alerts_dropped": self.alerter.counters["alerts_dropped"],
            "alerts_suppressed": self.alerter.rules.counters["alerts_suppressed"],
            "decode_errors": pc["decode_errors"],
            "attribution_errors": pc["attribution_errors"],
            "jsonl_errors": self.jsonl.counters["write_errors"] if self.jsonl is not None else 0,
            "status_errors": 0,
        }
        out.update(self.counters)
        return out

    def _write_status(self, now: float, state: str = "running") -> None:
        counters = self.stats()
        if state == "running":
            problems = self.health.check(time.monotonic(), counters, self.store.problem)
        else:
            problems = [f"daemon {state}"]
        data = {
            "pid": os.getpid(),
            "updated": now,
            "started": self.started,
            "state": state,
            "healthy": not problems,
            "problems": problems,
            "database": str(self.db_path()),
            "config": str(self.config.source) if self.config.source else None,
            "interval": HOUSEKEEP,
            "counters": counters,
            "decoder": dict(self.pipeline.decoder.counters) if self.pipeline else {},
            "attribution": self.attribution_mode,
        }
        try:
            write_status(self.opts.status_path, data)
        except OSError as exc:
            self.counters["status_errors"] += 1
            if self.counters["status_errors"] == 1:
                log.warning("cannot write status file %s: %s", self.opts.status_path, exc.strerror)

    def shutdown(self) -> None:
        sdnotify.stopping()
        log.info("stopping")
        if self.pipeline is not None:
            try:
                self.pipeline.finish()  # hellos still waiting for a segment
            except Exception:
                log.exception("flushing the decoder failed")
            self.pipeline.close()  # store flush, alert digests, jsonl
        for part in (self.attributor, self.lineage, self.recording, self.kernel):
            if part is not None:
                try:
                    part.stop() if hasattr(part, "stop") else part.close()
                except Exception:
                    log.exception("stopping %s failed", type(part).__name__)
        if self.pipeline is not None:
            self._write_status(time.time(), state="stopped")
        if self.source is not None:
            self.source.close()
        self._release_locks()


def _behind(frame: Frame, lag: float = SHED_LAG) -> bool:
    """The capture is more than ``lag`` seconds behind the wall clock (a flood)."""
    return time.time() - frame.ts > lag


def run(opts: RunOptions) -> int:
    daemon = Daemon(opts)
    daemon.start()
    return daemon.run()
