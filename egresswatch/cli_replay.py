"""`egresswatch replay`: run capture files through the very pipeline the daemon uses."""

from __future__ import annotations

import gc
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import click

from egresswatch.capture.pcapfile import read_frames
from egresswatch.config import Config, load_config
from egresswatch.decode.engine import Engine
from egresswatch.errors import EgresswatchError
from egresswatch.flows import FlowTracker
from egresswatch.model import Event, Frame
from egresswatch.names import NameMemory
from egresswatch.pipeline import Attributor, Pipeline, Sink
from egresswatch.policy import Policy
from egresswatch.textsafe import safe

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "))


def event_json(event: Event) -> str:
    """One event as a JSON line; key order fixed, so output is byte-identical run to run."""
    return _ENCODER.encode(event.to_dict())


def event_row(event: Event) -> str:
    o = event.obs
    if o.is_dns:
        name = o.qname if o.qname is not None else "<no parsable question>"
    else:
        name = o.sni or event.dst_name or " | ".join(event.candidates)
    extra = ""
    if o.kind == "dns_answer" and o.answers:
        extra = " -> " + ",".join(o.answers)
    if o.ech:
        extra += " [ech outer name]"
    if not event.decides:
        extra += " [provisional]"
    who = event.attr.server or "-"
    if event.attr.process is not None:
        who += f" {event.attr.process.name}[{event.attr.process.pid}]"
    return safe(
        f"{o.ts:.6f} {o.frame:>6} {o.kind:<14} {o.proto} {o.src}:{o.sport} > {o.dst}:{o.dport} "
        f"{name}{extra}  {event.verdict.verdict}:{event.verdict.reason} {who}"
    )


class _Printer:
    def __init__(self, fmt: str, out: IO[str]) -> None:
        self.fmt, self.out = fmt, out

    def write(self, event: Event) -> None:
        self.out.write((event_json(event) if self.fmt == "jsonl" else event_row(event)) + "\n")

    def close(self) -> None:
        self.out.flush()


def build_attributor(procs: Path | None, config: Config) -> Attributor:
    """Replay attribution: ptcpdump per-packet comments first, then a recorded
    procs file (``run --record-procs``), else unknown."""
    from egresswatch.mcpmatch import Matcher
    from egresswatch.procfile import CompositeAttributor, PtcpdumpAttributor, RecordedAttributor

    # Offline, MCP roots are recognised by the launcher patterns only: the
    # machine replaying a capture is not the one that made it.
    attributors: list[Attributor] = [PtcpdumpAttributor(Matcher((), config.discovery.launcher_patterns))]
    if procs is not None:
        attributors.insert(0, RecordedAttributor(procs))
    return CompositeAttributor(attributors)


def replay_files(
    files: list[Path],
    config: Config,
    sinks: list[Sink],
    procs: Path | None = None,
) -> Iterator[tuple[Path, Pipeline]]:
    """Replay each file through a fresh decoder, sharing attribution, names,
    policy, flows and sinks (a capture split over files reads as one). Raises
    EgresswatchError (one line) for the first unreadable file, after its events."""
    names = NameMemory()
    policy = Policy(config, resolved=names.resolved)
    attributor = build_attributor(procs, config)
    flows = FlowTracker()
    for path in files:
        engine = Engine()
        pipeline = Pipeline(engine, attributor, policy, names, sinks, flows)
        feed = pipeline.feed
        last: Frame | None = None
        try:
            # the engine's raw-bytes check drops bulk data before Frames are built,
            # as the kernel filter does for live capture
            for frame in read_frames(path, skip=engine.skip_raw):
                last = frame
                feed(frame)
        finally:
            pipeline.finish(last)
        yield path, pipeline


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["jsonl", "table"]),
    default="jsonl",
    show_default=True,
    help="jsonl: one JSON object per event (fields in docs/events.md); table: one line per event.",
)
@click.option(
    "--db",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also store the events in this SQLite database.",
)
@click.option(
    "--procs",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Process lookups recorded by `egresswatch run --record-procs FILE`.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Config with allowlists (default: /etc/egresswatch/config.toml if present).",
)
@click.option("--stats", is_flag=True, help="Print decoder counters to stderr at the end.")
def replay(
    files: tuple[Path, ...],
    fmt: str,
    db: Path | None,
    procs: Path | None,
    config_path: Path | None,
    stats: bool,
) -> None:
    """Replay pcap/pcapng FILES offline and print one event per line.

    Needs no privileges. A corrupt or truncated file prints the events that
    could be read, then a one-line error, and exits 1.
    """
    try:
        config = load_config(config_path)
    except EgresswatchError as exc:
        raise click.ClickException(str(exc)) from None
    # Millions of short-lived frames and events, almost no reference cycles:
    # run the cycle collector rarely (6% of replay time at the default threshold).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    sinks: list[Sink] = [_Printer(fmt, sys.stdout)]
    store = None
    if db is not None:
        from egresswatch.store import Store

        try:
            store = Store(db)
        except EgresswatchError as exc:
            raise click.ClickException(str(exc)) from None
        sinks.append(store)
    failed = None
    try:
        for path, pipeline in replay_files(list(files), config, sinks, procs):
            if stats:
                counters = dict(sorted((dict(pipeline.decoder.counters) | dict(pipeline.counters)).items()))
                click.echo(f"{safe(path)}: {json.dumps(counters)}", err=True)
    except EgresswatchError as exc:
        failed = str(exc)
    except OSError as exc:
        failed = f"{exc.filename}: {exc.strerror}"
    finally:
        for sink in sinks:
            sink.close()
    if failed:
        click.echo(f"egresswatch: error: {safe(failed)}", err=True)
        sys.exit(1)


COMMANDS = [replay]
