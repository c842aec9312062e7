"""URL query parameters -> the filters of `egresswatch events`.

The names, forms and checks are the CLI's (``--since 2h``, ``--domain '*.x.com'``,
``--verdict flagged`` ... become ``?since=2h&domain=*.x.com&verdict=flagged``), and
the result is passed to the same :func:`egresswatch.store.query.query_events`, so a
link shows what the command shows. A bad value is a one-line :class:`BadParam`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from egresswatch.model import KINDS, VERDICTS
from egresswatch.store.query import parse_time
from egresswatch.textsafe import safe

FILTERS = ("since", "until", "server", "pid", "process", "domain", "verdict", "kind", "limit")
DEFAULT_LIMIT = 50
MAX_LIMIT = 5000  # `--limit 0` (all) is capped here: a browser page, not a pipe


class BadParam(ValueError):
    """A URL parameter the CLI would refuse: ``where: what``."""


@dataclass(frozen=True, slots=True)
class EventFilters:
    raw: dict[str, str]  # the parameters as given (non-empty ones), to rebuild links and the form
    since: float | None = None
    until: float | None = None
    server: str | None = None
    pid: int | None = None
    process: str | None = None
    domain: str | None = None
    verdict: str | None = None
    kind: str | None = None
    limit: int = DEFAULT_LIMIT

    def query_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of query_events(), as cli_events passes them."""
        return dict(
            since=self.since, until=self.until, server=self.server, pid=self.pid, process=self.process,
            domain_glob=self.domain, verdict=self.verdict, kind=self.kind, limit=self.limit or MAX_LIMIT,
        )  # fmt: skip

    def url(self, **changes: str | None) -> str:
        """This search with some parameters changed (None removes one)."""
        q = {**self.raw, **changes}
        return "/events?" + urlencode({k: v for k, v in q.items() if v})


def parse_times(args: Mapping[str, str], now: float) -> tuple[float | None, float | None]:
    return _time(args, "since", now), _time(args, "until", now)


def _time(args: Mapping[str, str], name: str, now: float) -> float | None:
    text = (args.get(name) or "").strip()
    if not text:
        return None
    try:
        return parse_time(text, now)
    except ValueError as exc:
        raise BadParam(f"{name}: {exc}") from None


def _choice(args: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str | None:
    v = (args.get(name) or "").strip()
    if not v:
        return None
    if v not in choices:
        raise BadParam(f"{name}: {safe(v)!r} is not one of {', '.join(choices)}")
    return v


def _int(args: Mapping[str, str], name: str, minimum: int) -> int | None:
    v = (args.get(name) or "").strip()
    if not v:
        return None
    try:
        n = int(v)
    except ValueError:
        raise BadParam(f"{name}: {safe(v)!r} is not a whole number") from None
    if n < minimum:
        raise BadParam(f"{name}: {n} is below {minimum}")
    return n


def event_filters(args: Mapping[str, str], now: float) -> EventFilters:
    since, until = parse_times(args, now)
    limit = _int(args, "limit", 0)
    return EventFilters(
        raw={k: args[k] for k in FILTERS if args.get(k)},
        since=since,
        until=until,
        server=args.get("server") or None,
        pid=_int(args, "pid", 0),
        process=args.get("process") or None,
        domain=args.get("domain") or None,
        verdict=_choice(args, "verdict", VERDICTS),
        kind=_choice(args, "kind", KINDS),
        limit=min(DEFAULT_LIMIT if limit is None else limit, MAX_LIMIT),
    )
