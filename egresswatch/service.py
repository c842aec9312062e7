"""The live daemon: ``egresswatch run``.

Foreground, logs to stderr (journald/launchd capture it), ``Type=notify``:

- start: load the config (one-line error on a bad one), refuse files other
  users could write, open the capture, discover MCP servers, start lineage and
  attribution, build the one :class:`~egresswatch.pipeline.Pipeline`, then
  ``READY=1``;
- loop on the main thread: frames -> pipeline; every ``HOUSEKEEP`` seconds
  flush the store, tick the alerter, write the status file, ping the watchdog;
  prune old events once an hour in bounded chunks;
- signals go through a self-pipe (``signal.set_wakeup_fd``) and only set
  flags: SIGHUP reloads the config and allowlists (a bad config is logged and
  the old one kept), SIGTERM/SIGINT flush everything and exit 0.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import os
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from egresswatch import sdnotify
from egresswatch.capture.live import LiveSource
from egresswatch.config import Config, load_config
from egresswatch.errors import EgresswatchError, PermissionProblem
from egresswatch.pipeline import Pipeline, Sink

if TYPE_CHECKING:
    from egresswatch.discovery import Discovery

log = logging.getLogger(__name__)

DEFAULT_STATUS_PATH = Path("/run/egresswatch/status.json")
HOUSEKEEP = 0.5  # seconds between flush/status/watchdog work
PRUNE_EVERY = 3600.0
SEED_LIMIT = 50_000  # learned (server, destination) pairs read back at start
HOSTS_FILE = Path("/etc/hosts")  # its names count as resolved (start and reload)


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
    from egresswatch.store import check_permissions

    return check_permissions(path)


def write_status(path: Path, data: dict[str, Any]) -> None:
    """Atomically replace the status file (readable by all: counters only)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1, sort_keys=True)
        fh.write("\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


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
        self.store: Any = None
        self.alerter: Any = None
        self.policy: Any = None
        self.names: Any = None
        self.lineage: Any = None
        self.attributor: Any = None
        self.recording: Any = None
        self.jsonl: Any = None
        self.started = time.time()
        self._wake_r = -1
        self._wake_w = -1
        self._watchdog: float | None = None

    # -- start-up ----------------------------------------------------------------
    def load(self) -> Config:
        cfg = load_config(self.opts.config_path)
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
        ifaces = self.opts.interfaces or self.config.daemon.interfaces
        self.source = LiveSource(
            interfaces=ifaces, rcvbuf=int(self.config.daemon.capture_buffer_mb * (1 << 20))
        ).open()
        try:
            self._build(db)
        except BaseException:
            self.source.close()
            raise
        self._install_signals()

    def _build(self, db: Path) -> None:
        from egresswatch.alerts import Alerter
        from egresswatch.attribution import LiveAttributor
        from egresswatch.decode.engine import Engine
        from egresswatch.lineage import LineageTracker
        from egresswatch.names import NameMemory
        from egresswatch.policy import Policy
        from egresswatch.store import Store

        cfg = self.config
        found = self._discover()
        self.lineage = LineageTracker(found.servers, cfg.discovery.launcher_patterns,
                                      poll_interval=cfg.daemon.proc_poll_interval)  # fmt: skip
        if cfg.daemon.container_sockets:
            from egresswatch.containers import ContainerLinker, EngineApi

            apis = [EngineApi(path) for path in cfg.daemon.container_sockets]
            self.lineage.linker = ContainerLinker(apis, self.lineage.container_clis)
        mode = self.lineage.start(use_connector=self.opts.use_connector)
        log.info("process lineage: %s", mode)
        self.attributor = LiveAttributor(self.lineage)
        self.attributor.start()
        attributor: Any = self.attributor
        record = self.opts.record_procs or cfg.daemon.record_procs
        if record is not None:
            from egresswatch.procfile import RecordingAttributor

            attributor = self.recording = RecordingAttributor(attributor, record)
        self.store = Store(db, group=cfg.daemon.db_group, retention=cfg.retention)
        self.alerter = Alerter(cfg.alerts, self.store, digest_timer=60.0)
        names = self.names = NameMemory()
        self._load_hosts()
        self.policy = Policy(cfg, resolved=names.resolved)
        self._seed_learning()
        sinks: list[Sink] = [self.store, self.alerter]
        if cfg.daemon.jsonl_path is not None:
            from egresswatch.jsonlsink import JsonlSink

            self.jsonl = JsonlSink(cfg.daemon.jsonl_path)
            sinks.append(self.jsonl)
        self.pipeline = Pipeline(Engine(), attributor, self.policy, names, sinks)

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
                self._drain_wakeups()
                if self.flags.reload:
                    self.flags.reload = False
                    self.reload()
                self.housekeep()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    self._prune()
        finally:
            self.shutdown()
        return 0

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
            self.store.flush()
            self.alerter.tick(now)
        except Exception:  # the store logs and counts its own failures
            log.exception("housekeeping failed")
        self._write_status(now, healthy=True)

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
        from egresswatch.discovery import all_homes, discover
        from egresswatch.lineage import host_project_dirs

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
        from egresswatch.lineage import Matcher

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
            "kernel_drops": self.source.counters["kernel_drops"],
            "duplicates": self.source.counters["duplicates"],
            "unattributed": pc["unattributed"],
            "unparsable": sum(v for k, v in dc.items() if "error" in k or "malformed" in k or "bad" in k)
            + pc["decode_errors"],
            "flagged": pc["verdict_flagged"],
            "alerts_sent": self.alerter.counters["alerts_sent"],
            "alerts_failed": self.alerter.counters["alerts_failed"],
            "events_stored": self.store.counters["events_written"],
            "store_errors": self.store.counters["write_errors"],
            "sink_errors": pc["sink_errors"],
        }
        out.update(self.counters)
        return out

    def _write_status(self, now: float, healthy: bool, state: str = "running") -> None:
        data = {
            "pid": os.getpid(),
            "updated": now,
            "started": self.started,
            "state": state,
            "healthy": healthy,
            "database": str(self.db_path()),
            "config": str(self.config.source) if self.config.source else None,
            "interval": HOUSEKEEP,
            "counters": self.stats(),
            "decoder": dict(self.pipeline.decoder.counters) if self.pipeline else {},
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
        for part in (self.attributor, self.lineage, self.recording):
            if part is not None:
                try:
                    part.stop() if hasattr(part, "stop") else part.close()
                except Exception:
                    log.exception("stopping %s failed", type(part).__name__)
        if self.pipeline is not None:
            self._write_status(time.time(), healthy=False, state="stopped")
        if self.source is not None:
            self.source.close()


def run(opts: RunOptions) -> int:
    daemon = Daemon(opts)
    daemon.start()
    return daemon.run()
