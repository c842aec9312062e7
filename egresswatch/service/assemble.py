"""The daemon's stages, built at start: lineage, attribution (eBPF or the
userspace fallback), name memory, policy, store, alerter, export, and the one
:class:`~egresswatch.pipeline.Pipeline` that joins them (docs/daemon.md).

Also what start and SIGHUP both do: discover the MCP server definitions, read
/etc/hosts into the name memory.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from egresswatch.capture.fastlane import jumps_queue
from egresswatch.config import Config
from egresswatch.errors import EgresswatchError
from egresswatch.model import Frame
from egresswatch.pipeline import Pipeline, Sink

if TYPE_CHECKING:
    from egresswatch.mcp.discovery import Discovery

log = logging.getLogger("egresswatch.service")  # the name users see in the log: the stage, not the module

SEED_LIMIT = 50_000  # learned (server, destination) pairs read back at start
HOSTS_FILE = Path("/etc/hosts")  # its names count as resolved (start and reload)
HURRY_LAG = 0.25  # seconds behind the capture from which attribution makes no socket lookups
SHED_LAG = 5.0  # seconds behind (the ring holds about 12 s) from which DNS outside MCP trees is shed


@dataclass
class Stages:
    """What :func:`build` made; the daemon stops them in this order at exit."""

    lineage: Any
    attributor: Any  # the live attributor, or the kernel one over it (udp_flow records)
    kernel: Any  # egresswatch.ebpf.loader.KernelFlows when loaded
    attribution_mode: dict[str, Any]
    store: Any
    alerter: Any
    names: Any
    policy: Any
    pipeline: Pipeline
    recording: Any = None  # --record-procs
    jsonl: Any = None  # daemon.jsonl_path
    volume: Any = None  # egresswatch.service.volume.VolumeWatch (flow_summary events), eBPF only


def behind(frame: Frame, lag: float = SHED_LAG) -> bool:
    """The capture is more than ``lag`` seconds behind the wall clock (a flood)."""
    return time.time() - frame.ts > lag


def build(
    cfg: Config,
    db: Path,
    *,
    use_connector: bool,
    record: Path | None,
    label_limit: Callable[[], int],
    on_udp_record: Callable[[Any], None],
) -> Stages:
    """Start lineage and attribution and build the pipeline over the stages.
    ``label_limit()``: the current policy.exfil.max_label_len (reload changes it);
    ``on_udp_record``: the kernel's first-datagram records (eBPF only)."""
    from egresswatch.alert.deliver import Alerter
    from egresswatch.attribute.attributor import LiveAttributor
    from egresswatch.attribute.lineage import LineageTracker
    from egresswatch.decode.engine import Engine
    from egresswatch.judge.flows import FlowTracker
    from egresswatch.judge.names import NameMemory
    from egresswatch.judge.policy import Policy
    from egresswatch.store.db import Store

    found = discover_servers(cfg)
    lineage = LineageTracker(found.servers, cfg.discovery.launcher_patterns,
                             poll_interval=cfg.daemon.proc_poll_interval)  # fmt: skip
    if cfg.daemon.container_sockets:
        from egresswatch.attribute.containers import ContainerLinker, EngineApi

        apis = [EngineApi(path) for path in cfg.daemon.container_sockets]
        lineage.linker = ContainerLinker(apis, lineage.container_clis)
    kernel, mode = load_kernel(lineage)  # before the tracker starts: it reads exec records from it
    log.info("process lineage: %s", lineage.start(use_connector=use_connector))
    attributor: Any = LiveAttributor(lineage)
    # behind a flood, socket lookups are skipped, but never for what the fast lane lifts
    attributor.hurry = lambda f: behind(f, HURRY_LAG) and not jumps_queue(f.linktype, f.data, label_limit())
    if kernel is not None:
        from egresswatch.attribute.kernel import KernelAttributor

        attributor = KernelAttributor(kernel, attributor)
        mode["counters"] = attributor.counters  # the same Counters: the status file shows them live
        mode["map_counters"] = kernel.counters
        kernel.start_events(on_udp_record)  # udp_flow events, handled by the main loop
    attributor.start()
    recording = None
    first: Any = attributor
    if record is not None:
        from egresswatch.attribute.recorded import RecordingAttributor

        first = recording = RecordingAttributor(attributor, record)
    store = Store(db, group=cfg.daemon.db_group, retention=cfg.retention)
    alerter = Alerter(cfg.alerts, store, digest_timer=60.0)
    names = NameMemory()
    load_hosts(names)
    policy = Policy(cfg, resolved=names.resolved)
    seed_learning(store, policy)
    sinks: list[Sink] = [store, alerter]
    jsonl = None
    if cfg.daemon.jsonl_path is not None:
        from egresswatch.store.jsonl import JsonlSink

        jsonl = JsonlSink(cfg.daemon.jsonl_path)
        sinks.append(jsonl)
    volume = None
    if kernel is not None:
        from egresswatch.service.volume import VolumeWatch

        volume = VolumeWatch(kernel, cfg.daemon.flow_summary_seconds)
        sinks.append(volume)
    pipeline = Pipeline(Engine(), first, policy, names, sinks, FlowTracker(), shed=behind)  # SHED_LAG
    return Stages(
        lineage, attributor, kernel, mode, store, alerter, names, policy, pipeline, recording, jsonl, volume
    )


def load_kernel(lineage: Any) -> tuple[Any, dict[str, Any]]:
    """Send-time attribution from eBPF programs, else the userspace path
    (docs/attribution.md); which one runs and why goes to the log and status."""
    from egresswatch.ebpf.loader import KernelFlows

    try:
        kernel, why = KernelFlows.open()
    except Exception as exc:  # a loader bug must not stop the daemon: fall back
        log.exception("loading the eBPF programs failed")
        kernel, why = None, f"loader error: {type(exc).__name__}: {exc}"
    if kernel is not None:
        lineage.exec_source = kernel.exec_record
        log.info("attribution: ebpf (%s)", why)
        return kernel, {"mode": "ebpf", "reason": why, "programs": kernel.attached, "missing": kernel.missing}
    log.warning("attribution: fallback to userspace socket lookups (%s)", why)
    return None, {"mode": "fallback", "reason": why}


def load_hosts(names: Any) -> None:
    """/etc/hosts names count as resolved by every process (no DNS packet
    ever shows them); a missing or unreadable file is logged, not fatal."""
    try:
        text = HOSTS_FILE.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        log.warning("cannot read %s: %s", HOSTS_FILE, exc.strerror or exc)
        return
    log.info("%s: %d addresses known by name", HOSTS_FILE, names.load_hosts(text))


def seed_learning(store: Any, policy: Any) -> None:
    try:
        rows = store.execute(
            "SELECT server, dst_name, MIN(ts) FROM events WHERE server IS NOT NULL"
            " AND dst_name IS NOT NULL AND verdict != 'unwatched'"
            " GROUP BY server, dst_name ORDER BY MAX(id) DESC LIMIT ?",
            (SEED_LIMIT,),
        )
    except EgresswatchError as exc:
        log.warning("cannot read the learning baseline: %s", exc)
        return
    for row in rows:
        policy.remember(row[0], row[1], row[2])


def discover_servers(cfg: Config) -> Discovery:
    """The MCP server definitions of every home, the configured extra homes
    and files, and the projects running hosts work in; warnings logged."""
    from egresswatch.attribute.listings import host_project_dirs
    from egresswatch.mcp.discovery import all_homes, discover

    found = discover(
        homes=[*all_homes(), *cfg.discovery.extra_homes],
        extra_files=cfg.discovery.extra_files,
        project_dirs=host_project_dirs(),
        system=True,  # machine-wide managed files speak for every account
    )
    for warning in found.warnings:
        log.warning("discovery: %s", warning)
    log.info("watching %d MCP server definitions", len(found.servers))
    return found


def rediscover(cfg: Config, lineage: Any) -> None:
    """New MCP server definitions apply to servers launched from now on."""
    from egresswatch.mcp.matcher import Matcher

    try:
        found = discover_servers(cfg)
        lineage.matcher = Matcher(found.servers, cfg.discovery.launcher_patterns)
    except Exception:  # discovery must never take the daemon down
        log.exception("re-reading MCP host configs failed; keeping the previous server list")
