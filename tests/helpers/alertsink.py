"""An apprise ``json://`` endpoint on 127.0.0.1 for tests: records every JSON
body posted to it and when it arrived (the alerts tests, the live daemon
tests and bench/alerts_bench.py)."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class Receiver:
    """An HTTP endpoint on 127.0.0.1 recording every JSON body posted to it."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.messages: list[dict[str, Any]] = []
        self.times: list[float] = []  # arrival (wall clock) of each message
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if outer.status == 200:
                    outer.times.append(time.time())
                    outer.messages.append(json.loads(body))
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        ThreadingHTTPServer.allow_reuse_address = True
        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def arrivals(self) -> list[tuple[float, dict[str, Any]]]:
        return list(zip(list(self.times), list(self.messages), strict=False))

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
