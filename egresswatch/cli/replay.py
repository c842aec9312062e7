"""`egresswatch replay`: run capture files through the very pipeline the daemon uses."""

from __future__ import annotations

import csv
import gc
import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import click

from egresswatch.capture.pcapfile import read_frames
from egresswatch.cli.main import format_option
from egresswatch.cli.render import EVENT_KEYS, csv_value
from egresswatch.config import Config, load_config
from egresswatch.decode import link, linkmore
from egresswatch.decode.engine import Engine
from egresswatch.errors import CaptureFileError, EgresswatchError
from egresswatch.judge.flows import FlowTracker
from egresswatch.judge.names import NameMemory
from egresswatch.judge.policy import Policy
from egresswatch.model import Event, Frame
from egresswatch.pipeline import Attributor, Pipeline, Sink
from egresswatch.textsafe import safe

_ENCODER = json.JSONEncoder(ensure_ascii=True, separators=(", ", ": "))


def event_json(event: Event) -> str:
    """One event as a JSON line; key order fixed, so output is byte-identical run to run."""
    return _ENCODER.encode(event.to_dict())


def event_json_in(event: Event, file: str) -> str:
    """event_json with the capture file's name after ``frame`` (replay output)."""
    d = event.to_dict()
    out: dict[str, object] = {}
    for k, v in d.items():
        out[k] = v
        if k == "frame":
            out["file"] = file
    return _ENCODER.encode(out)


def event_row(event: Event, file: str | None = None) -> str:
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
    where = f"{o.frame:>6}" if file is None else f"{file}:{o.frame}"
    return safe(
        f"{o.ts:.6f} {where} {o.kind:<14} {o.proto} {o.src}:{o.sport} > {o.dst}:{o.dport} "
        f"{name}{extra}  {event.verdict.verdict}:{event.verdict.reason} {who}"
    )


class OutputClosed(BaseException):
    """stdout's reader went away (``| head``). A BaseException, so that it passes
    the pipeline's guard around sinks (which logs and carries on) and stops the replay."""


REPLAY_CSV_KEYS = tuple(k for k in EVENT_KEYS if k != "id")
REPLAY_CSV_KEYS = (*REPLAY_CSV_KEYS[:2], "file", *REPLAY_CSV_KEYS[2:])  # ts, frame, file, ...


class _Printer:
    """Prints events as they come; ``file`` (the capture being read) goes into each."""

    def __init__(self, fmt: str, out: IO[str], show_file_in_table: bool = False) -> None:
        self.fmt, self.out = fmt, out
        self.file = ""
        self.show_file_in_table = show_file_in_table
        self.closed = False
        self.count = 0
        self._csv: Any = None

    def _line(self, event: Event) -> str:
        if self.fmt == "jsonl":
            return event_json_in(event, self.file) + "\n"
        if self.fmt == "json":  # one list, streamed
            return ("[\n" if self.count == 0 else ",\n") + event_json_in(event, self.file)
        if self.fmt == "csv":
            buf = io.StringIO()
            w = csv.writer(buf, lineterminator="\n")
            if self.count == 0:
                w.writerow(REPLAY_CSV_KEYS)
            d = event.to_dict() | {"file": self.file}
            w.writerow([csv_value(d.get(k)) for k in REPLAY_CSV_KEYS])
            return buf.getvalue()
        return event_row(event, self.file if self.show_file_in_table else None) + "\n"

    def write(self, event: Event) -> None:
        if self.closed:
            return
        line = self._line(event)
        self.count += 1
        self._put(line)

    def _put(self, text: str) -> None:
        try:
            self.out.write(text)
        except BrokenPipeError:
            self.closed = True
            raise OutputClosed() from None

    def close(self) -> None:
        if self.closed:
            return
        try:
            if self.fmt == "json":
                self.out.write("[]\n" if self.count == 0 else "\n]\n")
            self.out.flush()
        except BrokenPipeError:
            self.closed = True


def build_attributor(procs: Path | None, config: Config) -> Attributor:
    """Replay attribution: ptcpdump per-packet comments first, then a recorded
    procs file (``run --record-procs``), else unknown."""
    from egresswatch.attribute.composite import CompositeAttributor
    from egresswatch.attribute.ptcpdump import PtcpdumpAttributor
    from egresswatch.attribute.recorded import RecordedAttributor
    from egresswatch.mcp.matcher import Matcher

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
    errors: list[str] | None = None,
) -> Iterator[tuple[Path, Pipeline]]:
    """Replay each file through a fresh decoder, sharing attribution, names,
    policy, flows and sinks (a capture split over files reads as one). An unreadable
    file raises CaptureFileError (one line) after its events; with ``errors``
    given, its message is appended there instead and the next file is read;
    frames of a link type no decoder reads are reported there too (counted)."""
    names = NameMemory()
    policy = Policy(config, resolved=names.resolved)
    attributor = build_attributor(procs, config)
    flows = FlowTracker()
    for path in files:
        engine = Engine()
        pipeline = Pipeline(engine, attributor, policy, names, sinks, flows)
        feed = pipeline.feed
        last: Frame | None = None
        unknown: dict[int, int] = {}  # link type no decoder reads -> frames skipped
        skipping = False
        try:
            # the engine's raw-bytes check drops bulk data before Frames are built,
            # as the kernel filter does for live capture
            for frame in read_frames(path, skip=engine.skip_raw):
                if last is None or frame.linktype != last.linktype:
                    skipping = (
                        frame.linktype not in link.LINKTYPES and frame.linktype not in linkmore.LINKTYPES
                    )
                if skipping:
                    unknown[frame.linktype] = unknown.get(frame.linktype, 0) + 1
                last = frame
                feed(frame)
        except CaptureFileError as exc:
            if errors is None:
                raise
            errors.append(str(exc))
        finally:
            pipeline.finish(last)
            for linktype, n in sorted(unknown.items()):
                message = f"{path}: {n} frame(s) of link type {linktype} not decoded (no decoder for it)"
                if errors is None:
                    click.echo(f"egresswatch: warning: {safe(message)}", err=True)
                else:
                    errors.append(message)
        yield path, pipeline


@click.command()
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(readable=False, dir_okay=False, path_type=Path)
)
@format_option(default="jsonl")
@click.option(
    "--db",
    type=click.Path(readable=False, dir_okay=False, path_type=Path),
    default=None,
    help="Also store the events in this SQLite database.",
)
@click.option(
    "--procs",
    type=click.Path(readable=False, exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Process lookups recorded by `egresswatch run --record-procs FILE`.",
)
@click.option(
    "--config",
    "config_path",
    type=click.Path(readable=False, dir_okay=False, path_type=Path),
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

    Needs no privileges. Each event names its file and its frame number in
    that file. A corrupt or truncated file prints the events that could be
    read and a one-line error; the other files are still read; exit 1.
    """
    config = load_config(config_path)
    # Millions of short-lived frames and events, almost no reference cycles:
    # run the cycle collector rarely (6% of replay time at the default threshold).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    printer = _Printer(fmt, sys.stdout, show_file_in_table=len(files) > 1)
    sinks: list[Sink] = [printer]
    store = None
    if db is not None:
        from egresswatch.store.db import Store

        store = Store(db)
        sinks.append(store)
    errors: list[str] = []
    try:
        runs = replay_files(list(files), config, sinks, procs, errors)
        for path in files:
            printer.file = str(path)  # the generator reads this file on next(): its events name it
            path, pipeline = next(runs)
            if stats:
                counters = dict(sorted((dict(pipeline.decoder.counters) | dict(pipeline.counters)).items()))
                click.echo(f"{safe(path)}: {json.dumps(counters)}", err=True)
    except OutputClosed:
        pass  # `| head`: stop reading, store what was decoded, exit quietly
    finally:
        for sink in sinks:
            sink.close()
    if store is not None and (store.counters["write_errors"] or store.counters["events_dropped"]):
        errors.append(f"{db}: some events could not be stored (see the log line above)")
    for message in errors[:-1]:
        click.echo(f"egresswatch: error: {safe(message)}", err=True)
    if errors:
        raise EgresswatchError(errors[-1])


COMMANDS = [replay]
