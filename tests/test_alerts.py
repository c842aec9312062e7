"""Alerts through apprise to a real local HTTP endpoint (json://127.0.0.1:PORT/...)."""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from egresswatch.alerts import Alerter, AlertRecord
from egresswatch.config import AlertsConfig
from egresswatch.model import DNS_QUERY, TLS_SNI
from egresswatch.store import Store
from tests.helpers.netlab import wait_for
from tests.test_store import T0, make_event


class Receiver:
    """An HTTP endpoint on 127.0.0.1 recording every JSON body posted to it."""

    def __init__(self, port: int = 0, status: int = 200) -> None:
        self.messages: list[dict[str, Any]] = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if outer.status == 200:
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

    @property
    def url(self) -> str:
        return f"json://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.close()


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "e.db")
    yield s
    s.close()


def flagged(ts: float, name: str = "evil.example.net", server: str = "fs", severity: str = "high",
            reason: str = "not_allowlisted", kind: str = TLS_SNI):  # fmt: skip
    return make_event(
        ts, kind=kind, name=name, server=server, verdict="flagged", reason=reason, severity=severity
    )


def alert_rows(store: Store) -> list[dict[str, Any]]:
    return [dict(r) for r in store.execute("SELECT * FROM alerts ORDER BY id")]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_alert_arrives_and_is_recorded(receiver: Receiver, store: Store) -> None:
    got: list[AlertRecord] = []
    a = Alerter(AlertsConfig(urls=(receiver.url,)), store)
    a.add_listener(got.append)
    a.write(flagged(T0))
    wait_for(lambda: receiver.messages, what="alert delivery")
    msg = receiver.messages[0]
    assert "fs" in msg["title"] and "evil.example.net" in msg["title"]
    for part in ("Server: fs", "host claude", "Destination: evil.example.net", "Reason: not_allowlisted",
                 "Verdict: flagged", "Process: node[100]", "Chain: systemd[1]", "Time: "):  # fmt: skip
        assert part in msg["message"]
    rows = wait_for(lambda: [r for r in alert_rows(store) if r["result"] == "sent"], what="alert row")
    assert rows[0]["kind"] == "alert" and rows[0]["attempts"] == 1 and rows[0]["server"] == "fs"
    assert rows[0]["destination"] == "evil.example.net" and rows[0]["reason"] == "not_allowlisted"
    assert f"127.0.0.1:{receiver.port}" in json.loads(rows[0]["targets"])[0]
    a.close()
    assert a.counters["alerts_sent"] == 1
    assert len(got) == 1 and got[0].kind == "alert" and got[0].server == "fs"


def test_only_flagged_at_min_severity(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,), min_severity="medium"), store)
    a.write(make_event(T0, verdict="allowed"))
    a.write(flagged(T0 + 1, severity="low", name="low.example"))
    a.write(flagged(T0 + 2, severity="medium", name="med.example"))
    a.close()  # drains the queue
    assert [m["title"].split(" contacted ")[1] for m in receiver.messages] == [
        "med.example (not_allowlisted)"
    ]


def test_dedup_window_and_digest_on_frame_time(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,), window_seconds=600), store)
    for i in range(5):
        a.write(flagged(T0 + i * 10))  # same (server, destination, reason)
    a.write(flagged(T0 + 60, name="other.example"))  # another key: its own alert
    a.write(flagged(T0 + 70, reason="dns_exfil", kind=DNS_QUERY))  # another reason: its own alert
    wait_for(lambda: len(receiver.messages) == 3, what="three alerts")
    assert a.counters["alerts_suppressed"] == 4
    a.write(flagged(T0 + 601))  # window of the first key closed by frame time: digest + new alert
    wait_for(lambda: len(receiver.messages) == 5, what="digest and new alert")
    digest = [m for m in receiver.messages if "4 more" in m["title"]]
    assert len(digest) == 1
    assert (
        "held back" in digest[0]["message"] and digest[0]["message"].count("node[100] tls_sni") == 1 + 4
    )  # first + held
    a.close()
    rows = alert_rows(store)
    assert sum(r["result"] == "held" for r in rows) == 4
    d = [r for r in rows if r["kind"] == "digest"]
    assert len(d) == 1 and d[0]["count"] == 4 and d[0]["result"] == "sent"


def test_digest_sent_on_close(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,), window_seconds=3600), store)
    for i in range(3):
        a.write(flagged(T0 + i))
    a.close()
    assert len(receiver.messages) == 2
    assert "2 more" in receiver.messages[1]["title"]


def test_digest_timer_closes_windows_by_wall_time(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,), window_seconds=1.0), store, digest_timer=0.05)
    now = time.time()  # live capture: frame time follows the wall clock
    a.write(flagged(now))
    a.write(flagged(now + 0.001))
    wait_for(lambda: len(receiver.messages) == 1, what="first alert")
    assert "more" not in receiver.messages[0]["title"]
    wait_for(lambda: any("1 more" in m["title"] for m in receiver.messages), what="timer digest")
    a.close()


def test_endpoint_down_then_up(tmp_path: Path) -> None:
    port = free_port()
    store = Store(tmp_path / "e.db", batch_size=10)
    cfg = AlertsConfig(urls=(f"json://127.0.0.1:{port}/hook",), retry_seconds=0.1)
    a = Alerter(cfg, store, max_attempts=60)
    for i in range(100):  # the pipeline keeps storing while delivery fails
        e = flagged(T0 + i)
        store.write(e)
        a.write(e)
    store.flush()
    assert store.execute("SELECT count(*) FROM events")[0][0] == 100
    failed = wait_for(lambda: [r for r in alert_rows(store) if r["result"] == "failed"], what="failure row")
    assert failed[0]["error"] and "connection" in failed[0]["error"].lower()
    assert a.counters["delivery_failures"] >= 1 and a.counters["alerts_sent"] == 0
    up = Receiver(port=port)
    try:
        wait_for(lambda: up.messages, timeout=20, what="retried delivery")
        row = wait_for(lambda: [r for r in alert_rows(store) if r["result"] == "sent"], what="sent row")[0]
        assert row["attempts"] > 1 and row["id"] == failed[0]["id"]  # the same alert, retried
        a.close()
    finally:
        up.close()
        store.close()


def test_http_error_is_a_failure(store: Store) -> None:
    r = Receiver(status=500)
    try:
        a = Alerter(AlertsConfig(urls=(r.url,), retry_seconds=0.05), store, max_attempts=2)
        a.write(flagged(T0))
        wait_for(lambda: a.counters["alerts_failed"] == 1, what="final failure after two attempts")
        a.close()
        rows = alert_rows(store)
        assert rows[0]["result"] == "failed" and rows[0]["attempts"] == 2 and rows[0]["error"]
        assert a.counters["alerts_sent"] == 0
    finally:
        r.close()


def test_queue_full_drops_without_blocking(tmp_path: Path) -> None:
    """An endpoint that accepts but never answers stalls the worker; write() goes on."""
    hang = socket.socket()
    hang.bind(("127.0.0.1", 0))
    hang.listen(16)
    port = hang.getsockname()[1]
    store = Store(tmp_path / "e.db")
    cfg = AlertsConfig(urls=(f"json://127.0.0.1:{port}/x?cto=1&rto=1",), retry_seconds=60)
    a = Alerter(cfg, store, queue_size=2, max_attempts=1)
    try:
        for i in range(50):
            a.write(flagged(T0 + i, name=f"h{i}.example.net"))
        assert a.counters["alerts_dropped"] >= 40
        dropped = wait_for(lambda: [r for r in alert_rows(store) if r["result"] == "dropped"], what="dropped")
        assert dropped[0]["error"] == "alert queue full"
    finally:
        a.close(timeout=10)
        hang.close()
        store.close()


def test_control_characters_escaped_in_notification(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,)), store)
    a.write(flagged(T0, name="evil\x1b[31m.exa\u202emple"))
    a.close()
    text = receiver.messages[0]["title"] + receiver.messages[0]["message"]
    assert "\x1b" not in text and "\u202e" not in text
    assert "evil\\x1b[31m.exa\\u202emple" in text


def test_no_targets_still_records_and_notifies_listeners(store: Store) -> None:
    got: list[AlertRecord] = []
    a = Alerter(AlertsConfig(urls=()), store)
    a.add_listener(got.append)
    a.write(flagged(T0))
    a.close()
    assert [r.destination for r in got] == ["evil.example.net"]
    assert [r["result"] for r in alert_rows(store)] == ["no_targets"]


def test_flood_of_destinations_shares_one_window(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,)), store, max_windows=2)
    for i in range(6):
        a.write(flagged(T0 + i, name=f"x{i}.exfil.example", reason="dns_exfil", kind=DNS_QUERY))
    a.close()
    titles = [m["title"] for m in receiver.messages]
    assert len(titles) == 4  # x0, x1, x2 (opens the shared window), then one digest
    assert "3 more from MCP server fs to (many destinations) (dns_exfil)" in titles[3]
    assert a.counters["alerts_suppressed"] == 3
