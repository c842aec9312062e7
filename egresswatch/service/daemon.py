"""The live daemon: ``egresswatch run``.

Foreground, logs to stderr (journald/launchd capture it), ``Type=notify``:

- start: load the config (one-line error on a bad one), refuse files other
  users could write (:mod:`~egresswatch.service.trust`), open the capture,
  build the stages and the one :class:`~egresswatch.pipeline.Pipeline`
  (:mod:`~egresswatch.service.assemble`), open the watched capture lane
  (:mod:`~egresswatch.service.lanes`), then ``READY=1``;
- loop on the main thread: frames -> pipeline; every ``HOUSEKEEP`` seconds
  decide flows whose hello window passed while capture was idle, flush the
  store, tick the alerter, write the status file
  (:mod:`~egresswatch.service.status`), ping the watchdog; prune old events
  once an hour in bounded chunks;
- signals only set flags (:mod:`~egresswatch.service.signals`): SIGHUP
  reloads the config and allowlists (a bad config is logged and the old one
  kept), SIGTERM/SIGINT drain the capture ring, flush everything and exit 0.

One daemon per database and per status file: each holds an exclusive lock
(``<file>.lock``, root's, in a root-only directory). The status file says
whether events are being lost and why (:mod:`egresswatch.service.health`).
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from egresswatch.capture.fastlane import jumps_queue
from egresswatch.capture.live import LiveSource
from egresswatch.config import Config
from egresswatch.errors import EgresswatchError
from egresswatch.safefiles import InstanceLock
from egresswatch.service import assemble, sdnotify
from egresswatch.service.drain import drain_ring
from egresswatch.service.health import Health
from egresswatch.service.lanes import WatchedLane
from egresswatch.service.signals import Signals
from egresswatch.service.status import DEFAULT_STATUS_PATH, gather_counters, write_status
from egresswatch.service.trust import check_outputs, load_trusted_config, require_trusted_database
from egresswatch.service.udpflows import UdpFlows
from egresswatch.service.volume import emit_summaries

log = logging.getLogger("egresswatch.service")  # the name users see in the log: the stage, not the module

HOUSEKEEP = 0.5  # seconds between flush/status/watchdog work
PRUNE_EVERY = 3600.0


@dataclass
class RunOptions:
    config_path: Path | None = None
    db_path: Path | None = None
    record_procs: Path | None = None
    interfaces: tuple[str, ...] = ()
    status_path: Path = DEFAULT_STATUS_PATH
    use_connector: bool = True


def _unusable(n: int) -> str:
    return (
        f"; {n} unusable alert URL{'s' if n != 1 else ''} ignored, see `egresswatch doctor`" if n > 0 else ""
    )


class Daemon:
    def __init__(self, opts: RunOptions) -> None:
        self.opts = opts
        self.signals = Signals()
        self.counters: Counter[str] = Counter()
        self.config: Config = Config()
        self.source: LiveSource | None = None
        self.stages: assemble.Stages | None = None
        self.lane: WatchedLane | None = None
        self.udp_flows = UdpFlows(self.counters)
        self._frames_seen = -1  # pipeline.frames at the last housekeeping tick
        self._last_frame_ts = 0.0
        self.started = time.time()
        self._watchdog: float | None = None
        self.health = Health()
        self.locks: list[InstanceLock] = []
        self._label_limit = 40  # policy.exfil.max_label_len: the fast lane's and hurry's test

    # -- start-up ----------------------------------------------------------------
    def db_path(self) -> Path:
        return self.opts.db_path or self.config.daemon.database

    def start(self) -> None:
        # The capture loop, the lineage tracker and the socket harvester are
        # threads: hand the GIL over every 0.5 ms instead of 5 ms so that a
        # short-lived process is looked up before it is gone (docs/attribution.md).
        sys.setswitchinterval(0.0005)
        self.config = load_trusted_config(self.opts.config_path)
        db = self.db_path()
        require_trusted_database(db)
        check_outputs(
            self.opts.status_path, self.opts.record_procs or self.config.daemon.record_procs, self.config
        )
        try:
            from egresswatch.store.files import make_db_dir

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
                self.stages = assemble.build(
                    self.config, db, use_connector=self.opts.use_connector,
                    record=self.opts.record_procs or self.config.daemon.record_procs,
                    label_limit=lambda: self._label_limit, on_udp_record=self.udp_flows.on_record,
                )  # fmt: skip
                self.lane = WatchedLane(self.source, self.stages.kernel, self.stages.lineage)
                self.lane.start()
            except BaseException:
                self.source.close()
                raise
        except BaseException:
            self._release_locks()
            raise
        self.signals.install()

    def _release_locks(self) -> None:
        for lock in self.locks:
            lock.release()
        self.locks.clear()

    # -- main loop ---------------------------------------------------------------
    def run(self) -> int:
        assert self.source is not None and self.stages is not None
        pipeline, signals = self.stages.pipeline, self.signals
        sdnotify.ready(f"capturing; {self.db_path()}")
        log.info(
            "capturing on %s; events to %s; config %s (%d server allowlists, %d alert targets%s)",
            ", ".join(self.source.interfaces) or "all interfaces",
            self.db_path(),
            self.config.source or "built-in defaults",
            len(self.config.servers),
            len(self.stages.alerter.targets),
            _unusable(len(self.config.alerts.urls) - len(self.stages.alerter.targets)),
        )
        watchdog = self._watchdog = sdnotify.watchdog_period()
        tick = min(HOUSEKEEP, watchdog / 2) if watchdog else HOUSEKEEP
        next_prune = time.monotonic() + 60.0
        feed = pipeline.feed
        try:
            while not signals.stop:
                for frame in self.source.frames(tick, wake_fd=signals.wake_fd):
                    feed(frame)
                    self._last_frame_ts = frame.ts
                    if self.udp_flows.waiting():
                        self._drain_udp_flows()
                self._drain_udp_flows()
                signals.drain_wakeups()
                if signals.reload:
                    signals.reload = False
                    self.reload()
                self.housekeep()
                if time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY
                    self._prune()
            sdnotify.stopping()
            drain_ring(self.source, feed, bool(self._watchdog))
            self._last_frame_ts = float("inf")  # stopping: every pending udp_flow goes in
            self._drain_udp_flows()
        finally:
            self.shutdown()
        return 0

    def _drain_udp_flows(self) -> None:
        if self.stages is not None:
            self.udp_flows.drain(self.stages.attributor, self.stages.pipeline, self._last_frame_ts)

    def housekeep(self) -> None:
        if self._watchdog:
            sdnotify.watchdog_ping()
        now = time.time()
        s = self.stages
        assert s is not None
        try:
            # capture idle since the last tick (no frame drove the clock): decide the flows
            # whose hello window passed by wall time (kernel frame times are wall-clock times)
            if s.pipeline.frames == self._frames_seen:
                s.pipeline.expire(now)
            self._frames_seen = s.pipeline.frames
            emit_summaries(s.volume, s.pipeline)
            if self.lane is not None:
                self.lane.sync()
            s.store.flush()
            s.store.check_file()
            s.alerter.tick(now)
        except Exception:  # the store logs and counts its own failures
            log.exception("housekeeping failed")
        self._write_status(now)

    def _prune(self) -> None:
        assert self.stages is not None
        try:
            self.stages.store.prune_logged(time.time())
        except Exception:
            log.exception("pruning the database failed")

    def reload(self) -> None:
        assert self.stages is not None
        sdnotify.reloading()
        try:
            cfg = load_trusted_config(self.opts.config_path)
            self.stages.policy.reload(cfg)
        except EgresswatchError as exc:
            log.error("reload rejected, keeping the running config: %s", exc)
            self.counters["reloads_rejected"] += 1
        else:
            self.config = cfg
            self._label_limit = cfg.policy.exfil.max_label_len
            assemble.rediscover(cfg, self.stages.lineage)
            assemble.load_hosts(self.stages.names)
            if self.stages.jsonl is not None:
                self.stages.jsonl.reopen()  # after log rotation
            self.counters["reloads"] += 1
            log.info("configuration reloaded from %s", cfg.source or "built-in defaults")
        sdnotify.ready()

    # -- status and exit -----------------------------------------------------------
    def stats(self) -> dict[str, int]:
        assert self.source is not None and self.stages is not None
        s = self.stages
        out = gather_counters(self.source, s.pipeline, s.store, s.alerter, s.jsonl)
        out.update(self.counters)
        out.update(s.volume.counters if s.volume is not None else {})
        return out

    def _write_status(self, now: float, state: str = "running") -> None:
        assert self.stages is not None
        counters = self.stats()
        if state == "running":
            problems = self.health.check(time.monotonic(), counters, self.stages.store.problem)
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
            "decoder": dict(self.stages.pipeline.decoder.counters),
            "attribution": self.stages.attribution_mode,
            "capture_filter": self.source.filter_info() if self.source else {},
            "watched_lane": self.lane.info() if self.lane else {},
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
        s = self.stages
        if s is not None:
            try:
                s.pipeline.finish()  # hellos still waiting for a segment
                emit_summaries(s.volume, s.pipeline, force=True)  # bytes sent since the last summaries
            except Exception:
                log.exception("flushing the decoder failed")
            s.pipeline.close()  # store flush, alert digests, jsonl
            parts: tuple[Any, ...] = (s.attributor, s.lineage, s.recording, s.kernel)
            for part in parts:
                if part is not None:
                    try:
                        part.stop() if hasattr(part, "stop") else part.close()
                    except Exception:
                        log.exception("stopping %s failed", type(part).__name__)
            self._write_status(time.time(), state="stopped")
        if self.source is not None:
            self.source.close()
        self._release_locks()


def run(opts: RunOptions) -> int:
    daemon = Daemon(opts)
    daemon.start()
    return daemon.run()
