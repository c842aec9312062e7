"""Output of event dicts (``Event.to_dict()`` shape) and stats: table, json, jsonl, csv.

Shared by the commands that print events. Colour only on a TTY and never
when ``NO_COLOR`` is set. Strings from packets go through textsafe.safe() in
table and CSV output; JSON escapes every non-ASCII or control character.
"""

from __future__ import annotations

import csv
import io
import json
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from egresswatch.store.rows import destination
from egresswatch.textsafe import safe

FORMATS = ("table", "json", "jsonl", "csv")

# Every key an event dict can have, in Event.to_dict() order (``id`` from the store).
EVENT_KEYS: tuple[str, ...] = (
    "id", "ts", "frame", "kind", "proto", "src", "sport", "dst", "dport",
    "qname", "qtype", "rcode", "answers", "dns_id", "records",
    "sni", "alpn", "ech", "tls_versions", "quic_version", "bytes_out", "bytes_new", "ended", "note", "dst_name",
    "candidates", "flow_id", "decides",
    "pid", "process", "exe", "cmdline", "user", "chain", "server", "host", "phase", "attribution",
    "verdict", "reason", "rule", "severity",
)  # fmt: skip

_COLORS = {"flagged": "\x1b[1;31m", "allowed": "\x1b[32m", "unwatched": "\x1b[2m"}
_RESET = "\x1b[0m"
_WIDTHS = {"time": 25, "verdict": 9, "server": 12, "process": 18, "kind": 14, "destination": 30}
_MAX = {"server": 32, "process": 40, "destination": 80}


def use_color(stream: TextIO) -> bool:
    """True on a terminal unless NO_COLOR is set to a non-empty value (no-color.org)."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def local_time(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _cut(s: str, n: int) -> str:
    return s if len(s) <= n else s[: n - 1] + "~"


def table_cells(d: dict[str, Any]) -> dict[str, str]:
    proc = d.get("process")
    pid = d.get("pid")
    process = f"{safe(proc) if proc else '?'}[{pid}]" if pid is not None else safe(proc or "-")
    reason = safe(d.get("reason") or "-")
    if d.get("decides") is False:  # not its flow's verdict (docs/events.md)
        reason = ("(provisional) " if d.get("kind") == "connect" else "(after the decision) ") + reason
    if d.get("rule"):
        reason += f" ({safe(d['rule'])})"
    return {
        "time": local_time(d.get("ts")),
        "verdict": safe(d.get("verdict") or "-"),
        "server": _cut(safe(d.get("server") or "-"), _MAX["server"]),
        "process": _cut(process, _MAX["process"]),
        "kind": safe("+".join(d["flow_kinds"]) if d.get("flow_kinds") else d.get("kind") or "-"),
        "destination": _cut(safe(destination(d)), _MAX["destination"]),
        "reason": reason,
    }


class TableWriter:
    """Aligned rows; widths grow as needed and a header is printed once."""

    COLUMNS = ("time", "verdict", "server", "process", "kind", "destination", "reason")

    def __init__(self, out: TextIO, color: bool) -> None:
        self.out = out
        self.color = color
        self.widths = dict(_WIDTHS)
        self.header_done = False

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        cells = [table_cells(d) for d in rows]
        for c in cells:
            for k, v in c.items():
                if k in self.widths:
                    self.widths[k] = max(self.widths[k], len(v))
        if not self.header_done:
            self.out.write(self._line({k: k.upper() for k in self.COLUMNS}, header=True))
            self.header_done = True
        for c in cells:
            self.out.write(self._line(c))
        self.out.flush()

    def _line(self, c: dict[str, str], header: bool = False) -> str:
        parts = []
        for k in self.COLUMNS:
            v = c[k]
            pad = v.ljust(self.widths[k]) if k in self.widths else v
            if k == "verdict" and self.color and not header and v in _COLORS:
                pad = _COLORS[v] + pad + _RESET
            parts.append(pad)
        return "  ".join(parts).rstrip() + "\n"


def csv_value(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, list | dict):
        return json.dumps(v, separators=(",", ":"))
    return safe(v)


class EventWriter:
    """Writes event dicts in one format, possibly in several batches (``--follow``)."""

    def __init__(self, fmt: str, out: TextIO, color: bool | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}")
        self.fmt = fmt
        self.out = out
        self.table = TableWriter(out, use_color(out) if color is None else color)
        self._csv: Any = None

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        if self.fmt == "table":
            self.table.write(rows)
        elif self.fmt == "json":
            self.out.write(json.dumps(list(rows), indent=2) + "\n")
        elif self.fmt == "jsonl":
            for d in rows:
                self.out.write(json.dumps(d, separators=(",", ":")) + "\n")
        else:
            if self._csv is None:
                self._csv = csv.writer(self.out, lineterminator="\n")
                self._csv.writerow(EVENT_KEYS)
            for d in rows:
                self._csv.writerow([csv_value(d.get(k)) for k in EVENT_KEYS])
        self.out.flush()


def render_events(rows: Sequence[dict[str, Any]], fmt: str, out: TextIO, color: bool | None = None) -> None:
    EventWriter(fmt, out, color).write(rows)


def events_to_string(rows: Sequence[dict[str, Any]], fmt: str, color: bool = False) -> str:
    buf = io.StringIO()
    render_events(rows, fmt, buf, color)
    return buf.getvalue()


STATS_CSV = ("server", "destination", "count", "flagged", "first_seen", "last_seen", "bytes_out")


def render_stats(stats: Sequence[dict[str, Any]], fmt: str, out: TextIO, color: bool | None = None) -> None:
    """Output of query.stats(): one block per server in a table, else structured."""
    if fmt == "json":
        out.write(json.dumps(list(stats), indent=2) + "\n")
    elif fmt == "jsonl":
        for s in stats:
            out.write(json.dumps(s, separators=(",", ":")) + "\n")
    elif fmt == "csv":
        w = csv.writer(out, lineterminator="\n")
        w.writerow(STATS_CSV)
        for s in stats:
            for d in s["destinations"]:
                w.writerow([csv_value(s["server"]), *(csv_value(d.get(k)) for k in STATS_CSV[1:])])
    else:
        _stats_table(stats, out, use_color(out) if color is None else color)
    out.flush()


def _stats_table(stats: Sequence[dict[str, Any]], out: TextIO, color: bool) -> None:
    if not stats:
        out.write("no events from MCP servers in this period\n")
        return
    red = _COLORS["flagged"] if color else ""
    reset = _RESET if color else ""
    for s in stats:
        flagged = f"{red}{s['flagged']} flagged{reset}" if s["flagged"] else "0 flagged"
        out.write(
            f"{safe(s['server'])}: {s['events']} events, {len(s['destinations'])} destinations, {flagged}\n"
        )
        if s["flagged_by_reason"]:
            reasons = ", ".join(f"{safe(r)} {n}" for r, n in s["flagged_by_reason"].items())
            out.write(f"  flagged by reason: {reasons}\n")
        width = max(len(safe(d["destination"])) for d in s["destinations"]) if s["destinations"] else 0
        width = min(width, 60)
        out.write(
            f"  {'DESTINATION'.ljust(width)}  {'COUNT':>7}  {'FLAGGED':>7}  {'FIRST SEEN':25}  LAST SEEN\n"
        )
        for d in s["destinations"]:
            dest = _cut(safe(d["destination"]), 60).ljust(width)
            fl = f"{d['flagged']:>7}"
            if d["flagged"] and color:
                fl = red + fl + reset
            out.write(
                f"  {dest}  {d['count']:>7}  {fl}  {local_time(d['first_seen']):25}  {local_time(d['last_seen'])}\n"
            )
        _uploads_table(s.get("uploads") or [], out)


def _uploads_table(ups: Sequence[dict[str, Any]], out: TextIO) -> None:
    """Bytes uploaded per destination (flow_summary events), most first."""
    if not ups:
        return
    total = sum(u["bytes_out"] for u in ups)
    out.write(f"  uploaded {total:,} bytes ({total / (1 << 20):.1f} MiB):\n")
    width = min(max(len(safe(u["destination"])) for u in ups), 60)
    out.write(
        f"  {'DESTINATION'.ljust(width)}  {'BYTES SENT':>15}  {'FLOWS':>7}  {'LARGEST FLOW':>15}  FLAGGED\n"
    )
    for u in ups:
        dest = _cut(safe(u["destination"]), 60).ljust(width)
        out.write(
            f"  {dest}  {u['bytes_out']:>15,}  {u['flows']:>7}  {u['largest_flow']:>15,}  {u['flagged']}\n"
        )
