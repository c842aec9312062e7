"""What an alert says: the record handed to delivery (:class:`AlertRecord`) and
the title and body of one flagged event (:func:`format_alert`).

What a responder needs, no more: no command line (it may hold tokens), no
tunnelled payload, every packet- or process-derived string escaped. Pure and
clock-free: times shown are the event's frame time.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from egresswatch.alert.keys import destination_of, target_of
from egresswatch.model import Event
from egresswatch.textsafe import safe

NAME_SHOWN = 80  # characters of a destination name shown in an alert


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert (``kind`` "alert") or digest (``kind`` "digest") to deliver."""

    kind: str
    ts: float
    server: str
    destination: str
    reason: str
    severity: str
    title: str
    body: str
    count: int = 1
    host: str | None = None
    pid: int | None = None
    process: str | None = None
    urgent: bool = False
    target: str = ""  # registrable domain(s) or IP of the key(s)


def when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def shown_destination(event: Event) -> str:
    """The destination as an alert shows it: a tunnelled name carries the
    stolen data, so dns_exfil shows its size and domain; long names are cut."""
    name = destination_of(event)
    if event.verdict.reason == "dns_exfil" and name != target_of(event):
        return f"{len(name)}-byte name under {target_of(event)}"
    return name if len(name) <= NAME_SHOWN else name[: NAME_SHOWN - 3] + "..."


def format_alert(event: Event) -> tuple[str, str]:
    """(title, body) for a flagged event: what a responder needs, no more.

    No command line (it may hold tokens) and no tunnelled payload: the
    database keeps the full record. Every packet- or process-derived string
    is escaped."""
    o, a, v = event.obs, event.attr, event.verdict
    server = safe(a.server or "-")
    dest = safe(shown_destination(event))
    title = f"egresswatch: MCP server {server} contacted {dest} ({safe(v.reason)})"
    p = a.process
    chain = " > ".join(f"{safe(c.name or '?')}[{c.pid}]" for c in a.chain) or "-"
    rule = safe(v.rule) if v.rule and v.reason != "dns_exfil" else safe((v.rule or "").split(": ", 1)[-1])
    lines = [
        f"Server: {server} (host {safe(a.host or '-')}, phase {safe(a.phase or '-')})",
        f"Destination: {dest} ({safe(o.dst)}:{o.dport}/{o.proto}, {safe(o.kind)})",
        f"Reason: {safe(v.reason)}" + (f" ({rule})" if rule else "") + f", severity {safe(v.severity)}",
        f"Time: {when(o.ts)}",
        f"Process: {safe(p.name) if p else '-'}[{p.pid if p else '-'}]"
        + (f" {safe(p.exe)}" if p and p.exe else "")
        + (f" user {safe(p.user)}" if p and p.user else ""),
        f"Chain: {chain}",
        f"Full record: egresswatch events --server {server} --since {when(o.ts)}",
    ]
    return title, "\n".join(lines)
