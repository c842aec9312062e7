"""Flood evasion, live: the real daemon watches a fake MCP server
(tests/e2e_data/storm_mcp_server.py, launched by a fake MCP host) that floods
random names, first-seen domains and SYNs into a lab namespace, then
exfiltrates once over DNS and once over HTTPS. Shared by
tests/test_flood_evasion_live.py (a small flood) and
bench/flood_evasion_bench.py (10,000 names/s).

Measured on the real thing: each exfiltration's alert latency (arrival at a
local apprise json:// endpoint minus the packet's kernel timestamp, the
event's ``ts``), the alerts and digests delivered, the daemon's status
counters, CPU and RSS (VmRSS sampled, VmHWM).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from tests.helpers.alertsink import Receiver
from tests.helpers.daemonrun import Notify
from tests.helpers.netlab import Lab, run, wait_for

REPO = Path(__file__).resolve().parents[2]
DATA = REPO / "tests" / "e2e_data"
TICK = os.sysconf("SC_CLK_TCK")
EXFIL_DNS = "nbswy3dpeb3w64tmmqqgc3dpnfzhgzlsmvxgizlsnb2gk4tfnzqxi.mfrggzdfmztwq2lknnwg23tpobyxe.exfil.test"
HTTPS_NAME = "upload.exfil-https.test"
BURST = 5


def proc_status(pid: int, field: str) -> float:
    """A /proc/PID/status field in MB (VmRSS, VmHWM); 0 once the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    try:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    except sqlite3.Error:
        return []
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def lab_for_storm(lab: Lab) -> str:
    """DNS and TLS servers in the namespace, and a /24 routed to it whose every
    address it answers (a SYN to any gets its RST): returns that /24's prefix.
    (198.19.N.0/24: inside the labs' 198.18.0.0/15, held by no other lab;
    the host's route goes with the lab's veth.)"""
    lab.start_dns()
    lab.start_tls(443)
    net = f"198.19.{lab.n}."
    run("ip", "route", "replace", f"{net}0/24", "via", lab.peer4, "dev", lab.veth_host)
    lab.nsrun("ip", "route", "add", "local", f"{net}0/24", "dev", "lo", "table", "local")
    return net


class Storm:
    """One daemon, one storm server; :meth:`run` returns the figures."""

    def __init__(self, lab: Lab, net: str, tmp: Path, rate: int, seconds: float, domains: int,
                 syn_rate: int) -> None:  # fmt: skip
        self.lab, self.tmp = lab, tmp
        self.spec: dict[str, Any] = {"peer": lab.peer4, "net": net, "rate": rate, "seconds": seconds, "domains": domains,
                     "syn_rate": syn_rate, "exfil_dns": EXFIL_DNS, "https_name": HTTPS_NAME,
                     "report": str(tmp / "report.json")}  # fmt: skip
        self.db = tmp / "events.db"
        self.receiver = Receiver()
        self.rss_samples: list[float] = []
        self._sampling = True

    def _config(self) -> Path:
        cfg = self.tmp / "config.toml"
        cfg.write_text(f"""
[daemon]
database = "{self.db}"
interfaces = ["{self.lab.veth_host}"]  # this lab's traffic only, not other sessions' floods
[discovery]
extra_homes = ["{self.tmp}/home"]
[alerts]
urls = ["{self.receiver.url}"]
budget_per_minute = 5
budget_burst = {BURST}
digest_seconds = 10
[policy]
learning = false
[servers.storm]
allow = ["allowed.test"]
""")
        os.chmod(cfg, 0o600)
        home = self.tmp / "home" / ".cursor"
        home.mkdir(parents=True)
        (self.tmp / "spec.json").write_text(json.dumps(self.spec))
        args = [str(DATA / "storm_mcp_server.py"), str(self.tmp / "spec.json")]
        (home / "mcp.json").write_text(
            json.dumps({"mcpServers": {"storm": {"command": sys.executable, "args": args}}})
        )
        return cfg

    def _sample_rss(self, pid: int) -> None:
        while self._sampling:
            self.rss_samples.append(proc_status(pid, "VmRSS"))
            time.sleep(0.25)  # a sampler, not a wait for a condition

    def alert_of(self, match: str) -> float | None:
        """Arrival time of the first single alert whose title contains ``match``."""
        return next((t for t, m in self.receiver.arrivals()
                     if match in m["title"] and " more from MCP server " not in m["title"]), None)  # fmt: skip

    def run(self, exfil_deadline: float) -> dict[str, Any]:
        cfg = self._config()
        notify = Notify(self.tmp / "notify.sock")
        env = {**os.environ, "NOTIFY_SOCKET": str(self.tmp / "notify.sock"), "PYTHONPATH": str(REPO)}
        log = open(self.tmp / "daemon.log", "w")  # noqa: SIM115 - the daemon's stderr
        daemon = subprocess.Popen(
            [sys.executable, "-m", "egresswatch", "run", "--config", str(cfg),
             "--status-file", str(self.tmp / "status.json")], env=env, cwd=REPO, stderr=log,
        )  # fmt: skip
        host = None
        out: dict[str, Any] = {"load_before": [round(x, 1) for x in os.getloadavg()]}
        try:
            notify.wait("READY=1")
            threading.Thread(target=self._sample_rss, args=(daemon.pid,), daemon=True).start()
            cpu0 = cpu_seconds(daemon.pid)
            host = subprocess.Popen([sys.executable, str(DATA / "fake_mcp_host.py"),
                                     str(self.tmp / "home" / ".cursor" / "mcp.json")],
                                    cwd=REPO, start_new_session=True)  # fmt: skip
            report = Path(self.spec["report"])
            sent = wait_for(lambda: report.exists() and json.loads(report.read_text()),
                            self.spec["seconds"] + 60, "flood and exfiltrations sent")  # fmt: skip
            out.update(sent=sent, exfil=self._exfil(exfil_deadline))
            out.update(self._settle(sent))
            out["daemon_cpu_s"] = round(cpu_seconds(daemon.pid) - cpu0, 1)
            out["rss_peak_mb"] = round(proc_status(daemon.pid, "VmHWM"), 1)
            out["rss_sampled_max_mb"] = round(max(self.rss_samples, default=0.0), 1)
            out["rss_end_mb"] = round(proc_status(daemon.pid, "VmRSS"), 1)
            out["status"] = json.loads((self.tmp / "status.json").read_text())
        finally:
            self._sampling = False
            if host is not None:
                try:
                    os.killpg(host.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
                host.wait(timeout=10)
            daemon.send_signal(signal.SIGTERM)
            try:
                out["exit"] = daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.kill()
                out["exit"] = daemon.wait()
            log.close()
            notify.close()
            self.receiver.close()
            out["load_after"] = [round(x, 1) for x in os.getloadavg()]
        return out

    def _exfil(self, deadline: float) -> dict[str, Any]:
        """Each exfiltration's event (frame time) and its alert's arrival, waited
        for until ``deadline`` seconds (None when it did not come on its own)."""
        dns_title = f"{len(EXFIL_DNS)}-byte name under exfil.test"
        checks = {
            "dns": ("SELECT ts, verdict, reason FROM events WHERE qname = ?", EXFIL_DNS, dns_title),
            "https": ("SELECT ts, verdict, reason FROM events WHERE sni = ? AND server = 'storm'", HTTPS_NAME,
                      f"contacted {HTTPS_NAME} "),
        }  # fmt: skip
        out: dict[str, Any] = {}
        end = time.monotonic() + deadline
        for what, (sql, arg, title) in checks.items():

            def stored(s: str = sql, a: str = arg) -> list[tuple[Any, ...]]:
                return query(self.db, s, (a,))

            def alerted(t: str = title) -> float | None:
                return self.alert_of(t)

            try:
                row = wait_for(stored, max(0.1, end - time.monotonic()), f"the {what} exfiltration stored")[0]
            except AssertionError:
                out[what] = {"stored": False}
                continue
            try:
                at = wait_for(alerted, max(0.1, end - time.monotonic()), f"the {what} exfiltration's alert")
                latency = round(at - row[0], 3)
            except AssertionError:
                latency = None
            out[what] = {"stored": True, "verdict": row[1], "reason": row[2], "alert_s": latency}
        return out

    def _settle(self, sent: dict[str, Any]) -> dict[str, Any]:
        """Wait for the backlog to drain (events of the server stop growing for 3 s,
        at most 240 s) and for the digest; then count alerts and digests."""
        seen: list[float] = [-1, time.monotonic()]

        def drained() -> bool:
            got = query(self.db, "SELECT count(*) FROM events WHERE server = 'storm'")
            n = int(got[0][0]) if got else 0
            if n != seen[0]:
                seen[:] = [n, time.monotonic()]
            return time.monotonic() - seen[1] > 3

        wait_for(drained, 240, "the backlog drained")
        try:
            wait_for(lambda: any(" more from MCP server storm" in m["title"] for _, m in self.receiver.arrivals()),
                     30, "a digest")  # fmt: skip
        except AssertionError:
            pass
        arrivals = self.receiver.arrivals()
        digests = [m["title"] for _, m in arrivals if " more from MCP server " in m["title"]]
        alerts = [m["title"] for _, m in arrivals if " more from MCP server " not in m["title"]]
        kinds = query(self.db, "SELECT kind, count(*) FROM events WHERE server = 'storm' GROUP BY kind")
        return {
            "events_stored": dict(kinds),
            "alerts": len(alerts),
            "alert_titles": alerts,
            "alerts_before_exfil": len(
                [
                    t
                    for t, m in arrivals
                    if t < sent["exfil_dns_sent"] and " more from MCP server " not in m["title"]
                ]
            ),  # fmt: skip
            "digests": len(digests),
            "digest_titles": [d[:300] for d in digests],
        }
