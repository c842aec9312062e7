"""Alerts under a flood, live: the real daemon, a watched fake MCP server in a
lab namespace, and a real apprise json:// endpoint on loopback (tests/test_alerts.py).

The attack measured in issue #13: 20,000 random names under one domain in
5 s, then one exfiltration. The exfiltration must reach the endpoint within
1 s of its packet, the flood must not exceed the budget, and a summary must
name the flood's domain and count.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.alertsink import Receiver
from tests.helpers.daemonrun import REPO, Daemon, query
from tests.helpers.netlab import Lab, wait_for

pytestmark = pytest.mark.live
DATA = Path(__file__).resolve().parent / "e2e_data"
BURST = 5
EXFIL_LABEL = "nbswy3dpeb3w64tmmqqgc3dpnfzhgzlsmvxgizlsnb2gk4tfnzqxi"  # 53 bytes of base32


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns()
        yield lab


def flagged(db: Path) -> list[dict[str, Any]]:
    return query(db, "SELECT * FROM events WHERE server = 'flooder' AND verdict = 'flagged'")


@pytest.mark.parametrize("exfil_domain", ["exfil.test", "flood.test"], ids=["other-domain", "same-domain"])
def test_exfiltration_after_a_flood_alerts_at_once(lab: Lab, tmp_path: Path, exfil_domain: str) -> None:
    tmp = tmp_path / "ew"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    receiver = Receiver()
    config = f"""
[daemon]
database = "{tmp}/events.db"
interfaces = ["{lab.veth_host}"]  # this lab's traffic only, not other tests' floods
[discovery]
extra_homes = ["{tmp}/home"]
[alerts]
urls = ["{receiver.url}"]
budget_per_minute = 5
budget_burst = {BURST}
digest_seconds = 10
[policy]
learning = false
[servers.flooder]
allow = ["allowed.test"]
"""
    exfil = f"{EXFIL_LABEL}.{exfil_domain}"
    report = tmp / "report.json"
    home = tmp / "home" / ".cursor"
    home.mkdir(parents=True)
    args = [str(DATA / "flood_mcp_server.py"), lab.peer4, "flood.test", "20000", "5", exfil, str(report)]
    (home / "mcp.json").write_text(
        json.dumps({"mcpServers": {"flooder": {"command": sys.executable, "args": args}}})
    )
    daemon = Daemon(tmp, config)
    host = None
    try:
        daemon.start()
        host = subprocess.Popen([sys.executable, str(DATA / "fake_mcp_host.py"), str(home / "mcp.json")],
                                cwd=REPO, start_new_session=True)  # fmt: skip
        sent = wait_for(
            lambda: report.exists() and json.loads(report.read_text()), 60, "flood and exfiltration"
        )
        db = tmp / "events.db"

        def exfil_event() -> dict[str, Any] | None:
            return next((e for e in flagged(db) if e["qname"] == exfil), None)

        event = wait_for(exfil_event, 30, "the exfiltration query in the database")
        assert event["reason"] == "dns_exfil" and event["severity"] == "high"
        size = f"{len(exfil)}-byte name under {exfil_domain}"

        def delivered() -> tuple[float, dict[str, Any]] | None:
            return next(((t, m) for t, m in receiver.arrivals() if size in m["title"]), None)

        at, message = wait_for(delivered, 30, "the exfiltration's alert at the endpoint")
        assert EXFIL_LABEL not in json.dumps(message)  # the stolen bytes stay in the database
        # the flood's own alerts, whenever they arrived: within the budget; the rest goes into digests
        during = [
            m["title"] for _, m in receiver.arrivals() if "contacted" in m["title"] and size not in m["title"]
        ]
        assert 1 <= len(during) <= BURST, during
        # every query stored, then the summary names the flood's domain and how many were not alerted one by one
        wait_for(lambda: len(flagged(db)) >= sent["sent"] + 1, 60, "every flood query stored")
        flood = [e for e in flagged(db) if e["qname"].endswith(".flood.test") and e["qname"] != exfil]
        alerted = [t for t in during if "flood.test" in t]

        def summarised() -> int:
            titles = [
                m["title"] for _, m in receiver.arrivals() if "more from MCP server flooder" in m["title"]
            ]
            return sum(int(n) for t in titles for n in re.findall(r"flood\.test \((\d+)\)", t))

        wait_for(
            lambda: summarised() == len(flood) - len(alerted), 40, "digests naming flood.test and its count"
        )
        status = daemon.status()["counters"]
        assert status["kernel_drops"] == 0 and len(flood) == sent["sent"], (status, len(flood))
        assert at - event["ts"] <= 1.0, f"alert {at - event['ts']:.2f}s after its packet; {status}"
        print(f"\n{exfil_domain}: {len(flood)} flood events flagged, {len(during)} deliveries during the flood,"
              f" exfil alert {at - event['ts']:.3f}s after its packet, kernel drops {status['kernel_drops']}")  # fmt: skip
    finally:
        if host is not None:
            try:
                os.killpg(host.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            host.wait(timeout=10)
        daemon.stop(timeout=30)
        daemon.close()
        receiver.close()
