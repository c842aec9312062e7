"""Alerts through apprise to a real local HTTP endpoint (json://127.0.0.1:PORT/...)."""

from __future__ import annotations

import json
import os
import pwd
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egresswatch.alert.deliver import Alerter
from egresswatch.alert.message import AlertRecord
from egresswatch.alert.targets import exposed_target
from egresswatch.config import AlertsConfig
from egresswatch.model import DNS_QUERY, TLS_SNI
from egresswatch.store.db import Store
from tests.helpers.alertsink import Receiver
from tests.helpers.netlab import missing as require_missing
from tests.helpers.netlab import wait_for
from tests.test_store import T0, make_event


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


def require_live() -> None:
    if os.geteuid() != 0:
        require_missing("needs root to run a process as another user")


def test_alert_arrives_and_is_recorded(receiver: Receiver, store: Store) -> None:
    got: list[AlertRecord] = []
    a = Alerter(AlertsConfig(urls=(receiver.url,)), store)
    a.add_listener(got.append)
    a.write(flagged(T0))
    wait_for(lambda: receiver.messages, what="alert delivery")
    msg = receiver.messages[0]
    assert "fs" in msg["title"] and "evil.example.net" in msg["title"]
    for part in ("Server: fs", "host claude", "Destination: evil.example.net", "Reason: not_allowlisted",
                 "Process: node[100] /usr/bin/node user alice", "Chain: systemd[1]", "Time: ",
                 "Full record: egresswatch events --server fs"):  # fmt: skip
        assert part in msg["message"]
    assert "server.js" not in msg["message"]  # no command line: it may carry tokens; the DB has it
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


def test_repeats_under_a_key_go_into_one_digest_on_frame_time(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,), window_seconds=600, digest_seconds=60), store)
    for i in range(5):  # one key: same server, reason and registrable domain, any name under it
        a.write(flagged(T0 + i, name=f"h{i}.evil.example.net"))
    a.write(flagged(T0 + 10, name="other.example"))  # another domain: its own alert
    a.write(flagged(T0 + 20, reason="dns_exfil", kind=DNS_QUERY))  # another reason: its own alert
    wait_for(lambda: len(receiver.messages) == 3, what="three alerts")
    assert a.rules.counters["alerts_suppressed"] == 4
    a.write(flagged(T0 + 61, name="x.other.example"))  # digest due by frame time, then this is held
    digest = wait_for(lambda: [m for m in receiver.messages if "4 more" in m["title"]], what="digest")
    assert "example.net (4)" in digest[0]["title"]
    assert "example.net: 4 x not_allowlisted, high, repeats of an alert sent" in digest[0]["message"]
    a.close()  # the last repeat's digest at shutdown
    assert (
        "1 more" in receiver.messages[-1]["title"] and "other.example (1)" in receiver.messages[-1]["title"]
    )
    rows = alert_rows(store)
    assert [r["kind"] for r in rows] == ["alert", "alert", "alert", "digest", "digest"]
    assert rows[3]["count"] == 4 and rows[3]["result"] == "sent" and rows[3]["destination"] == "example.net"


def test_a_key_alerts_again_after_its_window(receiver: Receiver, store: Store) -> None:
    a = Alerter(AlertsConfig(urls=(receiver.url,), window_seconds=600, digest_seconds=60), store)
    a.write(flagged(T0))
    a.write(flagged(T0 + 601))
    a.close()
    assert [m["title"].startswith("egresswatch: MCP server fs contacted") for m in receiver.messages] == [
        True,
        True,
    ]


def test_digest_timer_sends_by_wall_time(receiver: Receiver, store: Store) -> None:
    cfg = AlertsConfig(urls=(receiver.url,), digest_seconds=0.5)
    a = Alerter(cfg, store, digest_timer=0.05)
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
        # the alert that failed is the one sent (a digest queued later may go out at its first try)
        first = failed[0]["id"]
        row = wait_for(lambda: [r for r in alert_rows(store) if r["result"] == "sent" and r["id"] == first],
                       what="the failed alert sent")[0]  # fmt: skip
        assert row["attempts"] > 1  # the same alert, retried
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


def test_severe_alerts_go_first_and_a_full_queue_gives_up_the_least(store: Store) -> None:
    """A worker stuck on a slow endpoint: what waits is delivered highest severity first."""
    gate = threading.Event()
    order: list[str] = []

    def slow(title: str, body: str) -> bool:
        gate.wait(20)
        order.append(title)
        return True

    cfg = AlertsConfig(budget_burst=100, min_severity="low")
    a = Alerter(cfg, store, notify=slow, queue_size=3)
    a.write(flagged(T0, name="first.example", severity="low", reason="first_seen"))
    wait_for(lambda: not a._heap, what="the worker holding the first alert")
    for i, (sev, reason) in enumerate([("low", "first_seen"), ("medium", "not_allowlisted"),
                                       ("low", "first_seen"), ("high", "direct_ip")]):  # fmt: skip
        a.write(flagged(T0 + 1 + i, name=f"n{i}.d{i}.example", severity=sev, reason=reason))
    gate.set()
    a.close()
    assert [t.split(" contacted ")[1].split(" ")[0] for t in order] == [
        "first.example",
        "n3.d3.example",
        "n1.d1.example",
        "n0.d0.example",
    ]  # the later low one was given up for the high one
    assert a.counters["alerts_dropped"] == 1
    assert [r["destination"] for r in alert_rows(store) if r["result"] == "dropped"] == ["n2.d2.example"]


def test_exposed_plain_http_targets() -> None:
    port = free_port()
    warning = exposed_target(f"json://127.0.0.1:{port}/hook")
    assert warning and "nothing listens there now" in warning and str(port) in warning
    assert exposed_target(f"form://localhost:{port}") is not None
    assert exposed_target(f"jsons://127.0.0.1:{port}/hook") is None  # https: a squatter has no certificate
    assert exposed_target("json://127.0.0.1:80/hook") is None  # only root binds it
    assert exposed_target("json://192.0.2.1:8080/hook") is None  # not this host
    assert exposed_target("ntfy://ntfy.example/topic") is None


def test_exposed_target_names_a_user_holding_the_port(tmp_path: Path) -> None:
    """A real unprivileged account binds the port first: the warning says so."""
    require_live()
    nobody = pwd.getpwnam("nobody")
    port = free_port()
    squatter = subprocess.Popen(
        ["/usr/bin/python3", "-c", "import socket,sys,time; s=socket.socket(); "
         f"s.bind(('127.0.0.1', {port})); s.listen(); print('up', flush=True); time.sleep(30)"],
        user=nobody.pw_uid, group=nobody.pw_gid, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert squatter.stdout is not None and squatter.stdout.readline() == "up\n"
        warning = exposed_target(f"json://127.0.0.1:{port}/hook")
        assert warning and f"now held by uid {nobody.pw_uid}" in warning
    finally:
        squatter.kill()
        squatter.wait()


def test_start_up_warns_about_an_exposed_target(caplog: pytest.LogCaptureFixture, store: Store) -> None:
    port = free_port()
    with caplog.at_level("WARNING", logger="egresswatch.alert.channels"):
        Alerter(AlertsConfig(urls=(f"json://127.0.0.1:{port}/hook", "ntfy://ntfy.example/t")), store).close()
    warned = [r.getMessage() for r in caplog.records if "plain-http target" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith("alerts.urls: entry 1:") and str(port) in warned[0]


def test_a_daemon_behind_a_flood_sends_digests_by_frame_time(receiver: Receiver, store: Store) -> None:
    """30 s behind the wall clock, the timer must not send a digest at every tick."""
    a = Alerter(AlertsConfig(urls=(receiver.url,), digest_seconds=5), store)
    behind = time.time() - 30
    for i in range(40):  # 4 s of frame time, each tick in between sees events flowing
        a.write(flagged(behind + i * 0.1))
        a.tick(time.time())
    assert a.rules.counters["digests"] == 0
    a.write(flagged(behind + 5.5))  # frame time passed the digest's time: one digest
    assert a.rules.counters["digests"] == 1
    wait_for(lambda: any("39 more" in m["title"] for m in receiver.messages), what="digest")
    a.write(flagged(behind + 5.6))
    time.sleep(1.1)  # quiet: the timer's wall clock rules again
    a.tick(time.time())
    assert a.rules.counters["digests"] == 2
    a.close()
