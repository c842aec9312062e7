"""Which flagged events alert, and when: keys, a per-server budget, digests.

Pure and clock-free: every decision uses the event's frame time (``obs.ts``)
or the time a caller passes to :meth:`AlertRules.due`, so a replay of the
same capture makes the same alerts. What an alert is keyed on is
:mod:`egresswatch.alert.keys`, what it says :mod:`egresswatch.alert.message`;
the delivery side lives in :mod:`egresswatch.alert.deliver`. The rules, and
why, are in docs/alerts.md:

- an alert is keyed on what a person acts on: (server, reason, registrable
  domain or IP, shape), ``shape`` being ``payload`` or ``volume`` for
  ``dns_exfil`` and empty otherwise;
- a key alerts once per ``window_seconds``; its repeats (new names under the
  same registrable domain included) go into the server's next digest;
- a new key spends a token of the server's bucket (``budget_per_minute``,
  ``budget_burst``); with none left, or while a summary is pending, it goes
  into the digest instead;
- except an *urgent* one, which alerts at once whatever the budget: its
  (reason, shape) was not alerted for the server within the window, or its
  severity is higher than any alerted there. Reasons and shapes are few, so
  an attacker cannot flood with urgent keys;
- one digest per server, ``digest_seconds`` after its first pending event
  (by frame time, by the daemon's timer when nothing new arrives, and at
  shutdown).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from egresswatch.alert.keys import Key, key_of, rank
from egresswatch.alert.message import AlertRecord, format_alert, shown_destination, when
from egresswatch.config import AlertsConfig
from egresswatch.model import FLAGGED, Event
from egresswatch.textsafe import safe

DIGEST_ITEMS = 20  # lines listed in a digest
MAX_PENDING = 1000  # distinct keys a server's digest tracks; more are only counted


@dataclass
class _Pending:
    count: int = 0
    first: float = 0.0
    last: float = 0.0
    severity: str = "info"
    alerted: bool = False  # repeats of an alerted key, else held by the budget


@dataclass
class _Server:
    tokens: float
    refilled: float | None = None
    host: str | None = None
    alerted: dict[Key, float] = field(default_factory=dict)  # key -> frame time alerted
    classes: dict[tuple[str, str], tuple[float, str]] = field(default_factory=dict)
    pending: dict[Key, _Pending] = field(default_factory=dict)
    untracked: Counter[str] = field(default_factory=Counter)  # reason -> events beyond MAX_PENDING
    over_budget: bool = False  # the pending digest holds keys the budget kept back
    due: float | None = None


class AlertRules:
    """``decide(event)`` and ``due(now)`` return the records to deliver."""

    def __init__(self, config: AlertsConfig) -> None:
        self.config = config
        self.min_rank = rank(config.min_severity)
        self.counters: Counter[str] = Counter()
        self._servers: dict[str, _Server] = {}

    def decide(self, event: Event) -> list[AlertRecord]:
        v = event.verdict
        if v.verdict != FLAGGED or rank(v.severity) < self.min_rank:
            return []
        ts = event.obs.ts
        out = self.due(ts)
        cfg = self.config
        key = key_of(event)
        st = self._servers.get(key[0])
        if st is None:
            st = self._servers[key[0]] = _Server(tokens=float(cfg.budget_burst))
        st.host = event.attr.host or st.host
        self._refill(st, ts)
        since = ts - cfg.window_seconds
        alerted = st.alerted.get(key)
        if alerted is not None and alerted > since:
            self._hold(st, key, ts, v.severity, alerted=True)
            self.counters["alerts_suppressed"] += 1
            return out
        cls = (key[1], key[3] or ("lookup" if event.obs.is_dns else "connect"))  # lookups hide no POST
        seen = st.classes.get(cls)
        top = max((rank(s) for t, s in st.classes.values() if t > since), default=-1)
        urgent = seen is None or seen[0] <= since or rank(v.severity) > top
        if not urgent and (st.tokens < 1 or st.over_budget):
            self._hold(st, key, ts, v.severity, alerted=False)
            self.counters["alerts_over_budget"] += 1
            return out
        if st.tokens >= 1:
            st.tokens -= 1
        elif urgent:
            self.counters["alerts_urgent_over_budget"] += 1
        st.alerted[key] = ts
        st.classes[cls] = (ts, v.severity)
        if len(st.alerted) > 4 * MAX_PENDING:  # expired keys of a long run
            st.alerted = {k: t for k, t in st.alerted.items() if t > since}
        title, body = format_alert(event)
        p = event.attr.process
        out.append(AlertRecord("alert", ts, key[0], shown_destination(event), key[1], v.severity, title, body, 1,
                               event.attr.host, p.pid if p else None, p.name if p else None,
                               urgent=urgent, target=key[2]))  # fmt: skip
        return out

    def due(self, now: float) -> list[AlertRecord]:
        """Digests of every server whose digest is due by ``now`` (frame or wall time)."""
        return [
            self._digest(name, st)
            for name, st in self._servers.items()
            if st.due is not None and st.due <= now
        ]

    def flush(self) -> list[AlertRecord]:
        """Every pending digest (shutdown, end of a replay)."""
        return self.due(float("inf"))

    # -- state ---------------------------------------------------------------
    def _refill(self, st: _Server, ts: float) -> None:
        cfg = self.config
        if st.refilled is not None and ts > st.refilled:
            st.tokens = min(
                float(cfg.budget_burst), st.tokens + (ts - st.refilled) * cfg.budget_per_minute / 60
            )
        st.refilled = ts if st.refilled is None else max(st.refilled, ts)

    def _hold(self, st: _Server, key: Key, ts: float, severity: str, alerted: bool) -> None:
        st.over_budget = st.over_budget or not alerted
        p = st.pending.get(key)
        if p is None:
            if len(st.pending) >= MAX_PENDING:
                st.untracked[key[1]] += 1
                st.due = ts + self.config.digest_seconds if st.due is None else st.due
                return
            p = st.pending[key] = _Pending(first=ts, alerted=alerted)
        p.count += 1
        p.last = max(p.last, ts)
        if rank(severity) > rank(p.severity):
            p.severity = severity
        if st.due is None:
            st.due = ts + self.config.digest_seconds

    def _digest(self, server: str, st: _Server) -> AlertRecord:
        items = sorted(st.pending.items(), key=lambda kv: (-rank(kv[1].severity), -kv[1].count, kv[0]))
        total = sum(p.count for _, p in items) + sum(st.untracked.values())
        top = max((p.severity for _, p in items), key=rank, default="info")
        reasons = sorted({k[1] for k, _ in items} | set(st.untracked))
        first = min((p.first for _, p in items), default=st.due or 0.0)
        last = max((p.last for _, p in items), default=first)
        s = safe(server)
        per_target: Counter[str] = Counter()
        for k, p in items:
            per_target[k[2]] += p.count
        named = ", ".join(f"{safe(t)} ({n})" for t, n in list(per_target.items())[:3])
        title = f"egresswatch: {total} more from MCP server {s}: {named}" + (
            " ..." if len(per_target) > 3 else ""
        )
        lines = [
            f"{total} flagged event(s) of server {s} between {when(first)} and {when(last)} were not"
            " alerted one by one; each is in the database.",
            f"Registrable domains / addresses: {len(per_target)}"
            + (" (and more, not tracked one by one)" if st.untracked else ""),
            f"Reasons: {', '.join(safe(r) for r in reasons)}; highest severity: {safe(top)}",
        ]
        for k, p in items[:DIGEST_ITEMS]:
            why = "repeats of an alert sent" if p.alerted else "not alerted (budget spent)"
            shape = f" [{k[3]}]" if k[3] else ""
            lines.append(f"  {safe(k[2])}: {p.count} x {safe(k[1])}{shape}, {p.severity}, {why}")
        if len(items) > DIGEST_ITEMS:
            rest = items[DIGEST_ITEMS:]
            lines.append(f"  ... and {len(rest)} more domain(s), {sum(p.count for _, p in rest)} event(s)")
        for reason, n in sorted(st.untracked.items()):
            lines.append(f"  {n} more x {safe(reason)} under further domains")
        lines.append(f"Full record: egresswatch events --server {s} --verdict flagged --since {when(first)}")
        targets = list(per_target)
        dest = ", ".join(targets[:5]) + (f" +{len(targets) - 5}" if len(targets) > 5 else "")
        self.counters["digests"] += 1
        st.pending = {}
        st.untracked = Counter()
        st.over_budget = False
        st.due = None
        return AlertRecord("digest", last, server, dest, ",".join(reasons), top, title, "\n".join(lines),
                           total, st.host, target=dest)  # fmt: skip
