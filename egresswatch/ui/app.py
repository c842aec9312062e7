"""The web application: Starlette routes rendering Jinja2 templates (the only
module that imports either). Every route is a GET over a read-only Store.

Escaping: Jinja2 autoescapes every value in every template (HTML-escaping
``<``, ``>``, ``&``, quotes); strings from packets and processes additionally go
through :func:`egresswatch.textsafe.safe` (the ``text`` filter) so control and
bidi characters show as ``\\x1b`` / ``\\u202e``. Headers: a Content-Security-Policy
that allows scripts, styles and images from this origin only (no inline script
runs, whatever a page contains), ``nosniff``, no referrer, no framing; and only
``Host: 127.0.0.1`` / ``localhost`` is answered (a DNS-rebinding page cannot read it).
"""

from __future__ import annotations

import shlex
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from egresswatch.config import Config
from egresswatch.errors import EgresswatchError
from egresswatch.model import KINDS, VERDICTS
from egresswatch.store.db import Store
from egresswatch.store.query import query_events
from egresswatch.store.rows import destination
from egresswatch.textsafe import safe
from egresswatch.ui import charts, queries
from egresswatch.ui.params import BadParam, event_filters, parse_times
from egresswatch.ui.procs import ProcessWatcher, Snapshot

HERE = Path(__file__).resolve().parent
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
)
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"  # pygal's <style>; scripts never run
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


class SecurityHeaders:
    """Adds the CSP and the other headers to every response (pages, static files, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                names = {k.lower() for k, _ in headers}
                if b"content-security-policy" not in names:
                    headers.append((b"content-security-policy", CSP.encode()))
                headers += [(k.lower().encode(), v.encode()) for k, v in HEADERS.items()]
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_headers)


def _time(ts: float | None) -> str:
    """Local time, to the second, without the offset (the page header shows it)."""
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def _ago(ts: float | None) -> str:
    if ts is None:
        return "-"
    s = max(time.time() - ts, 0.0)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return f"{int(s)}s ago"


def make_env() -> Environment:
    env = Environment(
        loader=FileSystemLoader(str(HERE / "templates")),
        autoescape=select_autoescape(default=True, default_for_string=True),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        text=safe,
        time=_time,
        ago=_ago,
        q=lambda s: quote(str(s), safe=""),
        destination=destination,
        cmd=lambda argv: " ".join(argv or ()),
        shq=lambda v: shlex.quote(str(v)),
    )
    env.globals.update(VERDICTS=VERDICTS, KINDS=KINDS, urlencode=urlencode)
    return env


class UI:
    """Routes over one read-only store."""

    def __init__(
        self,
        store: Store,
        config: Config,
        watcher: ProcessWatcher | None = None,
        status: Callable[[], dict[str, Any] | None] | None = None,
    ) -> None:
        self.store = store
        self.config = config
        self.watcher = watcher
        self.status = status or (lambda: None)
        self.env = make_env()

    # -- helpers ------------------------------------------------------------
    def page(self, request: Request, template: str, status_code: int = 200, **ctx: Any) -> HTMLResponse:
        head = queries.head(self.store)
        html = self.env.get_template(template).render(
            request=request, head=head, daemon=self.status(), path=request.url.path, **ctx
        )
        return HTMLResponse(html, status_code=status_code)

    def error(self, request: Request, exc: Exception, status_code: int) -> HTMLResponse:
        return HTMLResponse(
            self.env.get_template("error.html").render(message=str(exc), path=request.url.path),
            status_code=status_code,
        )

    def _window(self, request: Request, server: str | None = None) -> queries.Window:
        since, until = parse_times(request.query_params, time.time())
        return queries.window(self.store, since, until, server)

    def _guard(self, request: Request, fn: Callable[[], Response]) -> Response:
        try:
            return fn()
        except BadParam as exc:
            return self.error(request, exc, 400)
        except EgresswatchError as exc:
            return self.error(request, exc, 500)

    # -- pages ----------------------------------------------------------------
    def servers(self, request: Request) -> Response:
        def run() -> Response:
            win = self._window(request)
            rows = queries.overview(self.store, self.config, win, time.time())
            snap = self.watcher.current if self.watcher else Snapshot()
            return self.page(request, "servers.html", servers=rows, win=win, procs=snap,
                             watching=self.watcher is not None, raw=dict(request.query_params))  # fmt: skip

        return self._guard(request, run)

    def server(self, request: Request) -> Response:
        def run() -> Response:
            name = request.query_params.get("name") or ""
            if not name:
                raise BadParam("name: which server? (/server?name=NAME)")
            win = self._window(request, name)
            span = queries.server_span(self.store, name)
            rows = queries.server_rows(self.store, name, win)
            snap = self.watcher.current if self.watcher else Snapshot()
            window_q = {k: v for k, v in request.query_params.items() if k in ("since", "until") and v}
            return self.page(
                request, "server.html", name=name, win=win, span=span, dests=queries.destinations(rows),
                reasons=queries.flagged_reasons(rows),
                learn=queries.learning_state(self.config, name, span["first_seen"], time.time()),
                suggestion=queries.suggestion(rows, self.config, name),
                server_trees=snap.trees.get(name, []), procs=snap, watching=self.watcher is not None,
                chart_q=urlencode({"name": name, **window_q}), window_q=window_q,
                alerts=queries.alerts(self.store, name, limit=20),
            )  # fmt: skip

        return self._guard(request, run)

    def chart(self, request: Request) -> Response:
        kind = request.path_params["kind"]
        if kind not in ("verdicts", "destinations"):
            return Response("no such chart", status_code=404, media_type="text/plain")
        name = request.query_params.get("name") or ""
        try:
            win = self._window(request, name)
            end = win.until or queries.newest_ts(self.store) or win.since
            tl = queries.timeline(self.store, name, win, max(end, win.since + 1))
        except (BadParam, EgresswatchError) as exc:
            return Response(str(exc), status_code=400, media_type="text/plain")
        svg = charts.verdicts_svg(tl) if kind == "verdicts" else charts.destinations_svg(tl)
        return Response(svg, media_type="image/svg+xml", headers={"Content-Security-Policy": SVG_CSP})

    def alerts(self, request: Request) -> Response:
        def run() -> Response:
            server = request.query_params.get("server") or None
            rows = queries.alerts(self.store, server)
            return self.page(request, "alerts.html", alerts=rows, server=server)

        return self._guard(request, run)

    def events(self, request: Request) -> Response:
        def run() -> Response:
            f = event_filters(request.query_params, time.time())
            rows = query_events(self.store, **f.query_kwargs())
            return self.page(request, "events.html", rows=rows, f=f)

        return self._guard(request, run)

    def api_head(self, request: Request) -> Response:
        try:
            return JSONResponse(queries.head(self.store))
        except EgresswatchError as exc:
            return JSONResponse({"error": str(exc)}, status_code=500)


def create_app(
    store: Store,
    config: Config,
    watcher: ProcessWatcher | None = None,
    status: Callable[[], dict[str, Any] | None] | None = None,
    allowed_hosts: tuple[str, ...] = ("127.0.0.1", "localhost"),
) -> Starlette:
    ui = UI(store, config, watcher, status)
    routes = [
        Route("/", ui.servers),
        Route("/server", ui.server),
        Route("/chart/{kind:str}.svg", ui.chart),
        Route("/alerts", ui.alerts),
        Route("/events", ui.events),
        Route("/api/head", ui.api_head),
        Route("/favicon.ico", lambda request: Response(status_code=204)),
        Mount("/static", StaticFiles(directory=str(HERE / "static")), name="static"),
    ]
    middleware = [
        Middleware(SecurityHeaders),
        Middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts)),
    ]
    return Starlette(routes=routes, middleware=middleware)
