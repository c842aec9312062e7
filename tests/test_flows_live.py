"""Live: one verdict per flow, named by what the flow itself says (issue #15).

The real daemon watches a fake MCP server (tests/e2e_data/flows_mcp_server.py)
that resolves three names to the one address of a lab namespace (its DNS
server answers every name with it), the allowed name last, and then opens an
allowed-SNI, a foreign-SNI, an SNI-less, a hello-less and an ECH connection to
that address (a real openssl TLS server). The stored events and the alerts
the daemon raised must match pcaps/mcp-flows.pcap's verdicts.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from egresswatch.store.db import Store
from egresswatch.store.query import query_events
from tests.helpers.alertsink import Receiver
from tests.helpers.daemonrun import REPO, Daemon, query
from tests.helpers.flowcheck import Sent, check
from tests.helpers.netlab import Lab, wait_for

pytestmark = pytest.mark.live
DATA = Path(__file__).resolve().parent / "e2e_data"
NAMES = ["api.notes.test", "collector.exfil-sink.test", "ech-front.cdn.test"]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns()  # every name -> lab.peer4
        lab.start_tls(443)
        yield lab


def flow_rows(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    try:
        with Store(db, readonly=True) as s:
            return sorted(query_events(s, server="notes", limit=None), key=lambda r: r["id"])
    except Exception:
        return []


def alert_rows(db: Path) -> list[dict[str, Any]]:
    sql = "SELECT * FROM alerts WHERE kind = 'alert' AND server = 'notes' ORDER BY id"
    return query(db, sql, strict=True)


def test_live_flows_get_one_verdict_named_by_themselves(lab: Lab, tmp_path: Path) -> None:
    tmp = tmp_path / "ew"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    endpoint = Receiver()
    config = f"""
[daemon]
database = "{tmp}/events.db"
# only the lab's link: other tests' floods on this host must not fill the capture buffer
interfaces = ["{lab.veth_host}"]
[discovery]
extra_homes = ["{tmp}/home"]
[alerts]
urls = ["{endpoint.url}"]
min_severity = "low"
window_seconds = 0.001
desktop = false
[policy]
learning = false
[servers.notes]
allow = ["api.notes.test"]
"""
    home = tmp / "home" / ".cursor"
    home.mkdir(parents=True)
    server_cmd = [sys.executable, str(DATA / "flows_mcp_server.py"), lab.peer4]
    (home / "mcp.json").write_text(
        json.dumps({"mcpServers": {"notes": {"command": server_cmd[0], "args": server_cmd[1:]}}})
    )
    daemon = Daemon(tmp, config)
    host = None
    db = tmp / "events.db"
    try:
        daemon.start()
        host = subprocess.Popen([sys.executable, str(DATA / "fake_mcp_host.py"), str(home / "mcp.json")],
                                stdout=subprocess.PIPE, text=True, cwd=REPO, start_new_session=True)  # fmt: skip
        assert host.stdout is not None
        assert host.stdout.readline().strip() == "done"  # the server finished its five connections

        def decided() -> list[dict[str, Any]] | None:
            rows = flow_rows(db)
            flows = {r["flow_id"] for r in rows if r.get("flow_id")}
            done = {r["flow_id"] for r in rows if r.get("flow_id") and r["decides"]}
            return rows if len(flows) >= 5 and flows == done else None

        # the hello-less flow is decided once its hello window (5 s) has passed
        try:
            rows = wait_for(decided, 45, "five decided flows of the notes server")
        except AssertionError:
            seen = query(
                db,
                "SELECT kind, sni, qname, sport, verdict, reason, decides, server, process, attribution FROM events"
                " WHERE dst = ? OR src = ?",
                (lab.peer4, lab.peer4),
                strict=True,
            )
            raise AssertionError(f"stored: {seen}") from None
        flows: dict[str, list[dict[str, Any]]] = {}
        for r in rows:
            if r.get("flow_id"):
                flows.setdefault(r["flow_id"], []).append(r)
        assert len(flows) == 5, flows
        got = set()
        for recs in flows.values():
            (d,) = [r for r in recs if r["decides"]]
            # the SYN stays a record of its flow (a flow_summary is not a packet: its
            # time is the kernel's, and may read before the captured SYN's)
            syn = min((r for r in recs if r["kind"] != "flow_summary"), key=lambda r: r["ts"])
            assert syn["kind"] == "connect"
            assert syn["candidates"] == NAMES and syn["dst_name"] is None
            got.add((d["kind"], d.get("sni"), d.get("ech", False), d["verdict"], d["reason"],
                     tuple(d["candidates"]), d["rule"]))  # fmt: skip
        every = f"{lab.peer4} (one of {', '.join(NAMES)}; not allowlisted: {', '.join(NAMES[1:])})"
        assert got == {
            ("tls_sni", "api.notes.test", False, "allowed", "allowlist", (), "servers.notes.allow: api.notes.test"),
            ("tls_sni", "collector.exfil-sink.test", False, "flagged", "not_allowlisted", (),
             "collector.exfil-sink.test"),
            ("tls_sni", None, False, "flagged", "not_allowlisted", tuple(NAMES), every),
            ("connect", None, False, "flagged", "not_allowlisted", tuple(NAMES), every),
            ("tls_sni", "ech-front.cdn.test", True, "flagged", "not_allowlisted", (),
             "ech-front.cdn.test (ECH: outer name)"),
        }  # fmt: skip

        # alerts: the two flagged DNS queries, one per flagged flow, each named by its own flow
        def raised() -> list[dict[str, Any]] | None:
            got = [a for a in alert_rows(db) if a["result"] not in ("held", "dropped")]
            return got if len(got) >= 6 else None

        alerts = wait_for(raised, 30, "six alerts")
        check(rows, [Sent(a["ts"], a["pid"], a["destination"], a["reason"]) for a in alerts])
        assert sorted(a["destination"] for a in alerts) == sorted(
            ["collector.exfil-sink.test", "ech-front.cdn.test"]  # the queries
            + ["collector.exfil-sink.test", " | ".join(NAMES), " | ".join(NAMES), "ech-front.cdn.test"]
        )
        assert {a["result"] for a in alerts} == {"sent"}
        mine = [a for a in endpoint.messages if "MCP server notes" in json.dumps(a)]
        assert len(mine) >= 6 and not any("contacted api.notes.test (" in json.dumps(a) for a in mine)
        assert daemon.stop(timeout=30) == 0
    finally:
        if host is not None:
            try:
                os.killpg(host.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            host.wait(timeout=10)
        daemon.close()
        endpoint.close()
