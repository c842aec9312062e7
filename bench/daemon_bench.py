#!/usr/bin/env python3
"""Benchmark the live daemon (`egresswatch run`) over a lab veth. Needs root.

    python3 bench/daemon_bench.py [--seconds 10] [--idle 20] [--qps 20000] [--lab-only]
        [--parts idle,bulk,latency,flood] [--upload-only] [--json OUT]

EGRESSWATCH_NO_BPF=1 in the environment measures the fallback (no eBPF
programs: userspace attribution and the classic capture filter). Each figure
comes with the machine's 1-minute load average when it was taken (a shared
machine's other work shows there), and daemon CPU is the process's CPU time
(all threads, user + system) over the measured interval.

Measures, with the real daemon as a subprocess:
- daemon CPU (% of one core) and kernel drops during a bulk TCP transfer each
  direction, with veth offloads on and off (ethtool), and whether the bulk
  connection's SYN still reached the database;
- a DNS query flood at --qps for 5 s: queries sent vs dns_query rows stored;
- idle CPU over --idle seconds; peak RSS (VmHWM);
- latency from packet (kernel timestamp) to database row, and from packet to an
  apprise alert at a local json:// endpoint (p50/p95), for connections of a fake
  MCP server to non-allowlisted names.
Traffic goes only to the lab namespace and loopback.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.helpers.netlab import Lab, wait_for  # noqa: E402

TICK = os.sysconf("SC_CLK_TCK")

DISCARD_SERVER = """
import socket, sys
fam = socket.AF_INET6
s = socket.socket(fam, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", int(sys.argv[1]))); s.listen(8); print("ready", flush=True)
while True:
    c, _ = s.accept()
    while c.recv(1 << 18):
        pass
    c.close()
"""

BULK_CLIENT = """
import os, socket, sys, time
host, port, secs = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
c = socket.create_connection((host, port)); buf = os.urandom(1 << 16); n = 0
end = time.monotonic() + secs
while time.monotonic() < end:
    c.sendall(buf); n += len(buf)
c.close(); print(n * 8 / secs / 1e9, flush=True)
"""

LATENCY_SERVER = """
import socket, ssl, sys, time
peer, n = sys.argv[1], int(sys.argv[2])
ctx = ssl.create_default_context(); ctx.check_hostname = False; ctx.verify_mode = ssl.CERT_NONE
time.sleep(0.5)
for i in range(n):
    try:
        with socket.create_connection((peer, 443), timeout=5) as raw:
            with ctx.wrap_socket(raw, server_hostname=f"lat{i}.bench.test") as s:
                time.sleep(0.2)
    except OSError:
        pass
    time.sleep(0.1)
print("done", flush=True)
time.sleep(600)
"""

HOST = """
import json, subprocess, sys
cfg = json.load(open(sys.argv[1]))
for s in cfg["mcpServers"].values():
    subprocess.Popen([s["command"], *s["args"]]).wait()
"""


class Alerts(BaseHTTPRequestHandler):
    got: list[tuple[float, dict[str, Any]]] = []

    def do_POST(self) -> None:  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        Alerts.got.append((time.time(), json.loads(body or b"{}")))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def cpu_seconds(pid: int, tid: int | None = None) -> float:
    """CPU time (user + system) of process ``pid``, or of its thread ``tid``."""
    path = f"/proc/{pid}/task/{tid}/stat" if tid is not None else f"/proc/{pid}/stat"
    fields = Path(path).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def rss_peak_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def status(tmp: Path, part: str = "counters") -> dict[str, Any]:
    try:
        return dict(json.loads((tmp / "status.json").read_text())[part])
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def filter_counters(tmp: Path) -> dict[str, int]:
    return dict(status(tmp, "capture_filter").get("counters") or {})


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def query(db: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
    try:
        return conn.execute(sql, params).fetchall()
    except sqlite3.Error:
        return []
    finally:
        conn.close()


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(round(q * (len(values) - 1))))]


def settle(tmp: Path) -> dict[str, Any]:
    """Wait until the daemon has written a status after the traffic stopped."""
    time.sleep(1.5)
    return status(tmp)


def bulk(lab: Lab, daemon: subprocess.Popen[str], tmp: Path, db: Path, seconds: float, offloads: bool,
         reverse: bool) -> dict[str, Any]:  # fmt: skip
    state = "on" if offloads else "off"
    for cmd in (
        ["ethtool", "-K", lab.veth_host],
        ["ip", "netns", "exec", lab.ns, "ethtool", "-K", lab.veth_peer],
    ):
        subprocess.run([*cmd, "tso", state, "gso", state, "gro", state], check=False, capture_output=True)
    port = 9100 + int(reverse) + 2 * int(not offloads)
    # the same length of time without the transfer first: on a shared machine the
    # daemon's baseline (other users' process events, housekeeping) is not idle
    i0 = cpu_seconds(daemon.pid)
    time.sleep(seconds)
    idle_pct = round(100 * (cpu_seconds(daemon.pid) - i0) / seconds, 2)
    before, fbefore = status(tmp), filter_counters(tmp)
    c0, m0 = cpu_seconds(daemon.pid), cpu_seconds(daemon.pid, daemon.pid)
    if reverse:  # namespace -> host
        srv = subprocess.Popen(
            [sys.executable, "-c", DISCARD_SERVER, str(port)], stdout=subprocess.PIPE, text=True
        )
        assert srv.stdout is not None and srv.stdout.readline().strip() == "ready"
        out = lab.nsrun(sys.executable, "-c", BULK_CLIENT, lab.host4, str(port), str(seconds)).stdout
        srv.terminate()
        srv.wait()
    else:
        p = lab.spawn(sys.executable, "-c", DISCARD_SERVER, str(port), stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        out = subprocess.run([sys.executable, "-c", BULK_CLIENT, lab.peer4, str(port), str(seconds)],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    c1, m1 = cpu_seconds(daemon.pid), cpu_seconds(daemon.pid, daemon.pid)
    load = load1()
    after = settle(tmp)
    fafter = filter_counters(tmp)
    syn = query(db, "SELECT COUNT(*) FROM events WHERE kind='connect' AND dport=?", (port,))
    return {
        "direction": "ns->host" if reverse else "host->ns",
        "offloads": state,
        "gbit_s": round(float(out.strip().splitlines()[-1]), 2),
        "daemon_cpu_pct": round(100 * (c1 - c0) / seconds, 2),
        "daemon_cpu_pct_just_before_without_transfer": idle_pct,
        "main_thread_cpu_pct": round(100 * (m1 - m0) / seconds, 2),
        "loadavg_1m": load,
        "frames_captured": after.get("captured", 0) - before.get("captured", 0),
        "frames_to_userspace": after.get("kernel_packets", 0) - before.get("kernel_packets", 0),
        "dropped_in_kernel": fafter.get("continuations_dropped", 0) - fbefore.get("continuations_dropped", 0),
        "kernel_drops": after.get("kernel_drops", 0) - before.get("kernel_drops", 0),
        "syn_stored": bool(syn and syn[0][0]),
    }


def dns_flood(
    lab: Lab, daemon: subprocess.Popen[str], tmp: Path, db: Path, qps: int, seconds: float = 5.0
) -> dict[str, Any]:
    before = status(tmp)
    c0 = cpu_seconds(daemon.pid)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.connect((lab.peer4, 53))
    total = int(qps * seconds)
    start = time.monotonic()
    tag = f"fl{os.getpid() % 1000}"
    for i in range(total):
        name = f"q{i}.{tag}.test".encode()
        labels = b"".join(bytes([len(p)]) + p for p in name.split(b"."))
        s.send(
            (i & 0xFFFF).to_bytes(2, "big")
            + b"\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00"
            + labels
            + b"\x00\x00\x01\x00\x01"
        )
        if i % 200 == 0:
            ahead = i / qps - (time.monotonic() - start)
            if ahead > 0:
                time.sleep(ahead)
    sent_secs = time.monotonic() - start
    s.close()
    c1 = cpu_seconds(daemon.pid)
    load = load1()

    def stored() -> int:
        rows = query(
            db, "SELECT COUNT(*) FROM events WHERE kind='dns_query' AND qname LIKE ?", (f"%.{tag}.test",)
        )
        return int(rows[0][0]) if rows else 0

    last = -1
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # until the daemon has caught up
        n = stored()
        if n == last and n > 0:
            break
        last = n
        time.sleep(2)
    after = status(tmp)
    return {
        "qps_target": qps,
        "qps_sent": round(total / sent_secs),
        "queries": total,
        "stored": stored(),
        "loss_pct": round(100 * (1 - stored() / total), 2),
        "kernel_drops": after.get("kernel_drops", 0) - before.get("kernel_drops", 0),
        "daemon_cpu_pct_while_sending": round(100 * (c1 - c0) / sent_secs, 1),
        "daemon_cpu_s_until_stored": round(cpu_seconds(daemon.pid) - c0, 2),
        "loadavg_1m": load,
    }


def latency(lab: Lab, tmp: Path, db: Path, n: int = 20) -> dict[str, Any]:
    home = tmp / "home" / ".cursor"
    # the server definition was written before the daemon started (discovery runs at start)
    host = subprocess.Popen([sys.executable, "-c", HOST, str(home / "mcp.json")], start_new_session=True)
    try:
        first_seen: dict[str, float] = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and len(first_seen) < n:
            for sni, _ts in query(
                db, "SELECT sni, ts FROM events WHERE kind='tls_sni' AND sni LIKE 'lat%.bench.test'"
            ):
                first_seen.setdefault(sni, time.time())
            time.sleep(0.01)
        rows = dict(
            query(db, "SELECT sni, ts FROM events WHERE kind='tls_sni' AND sni LIKE 'lat%.bench.test'")
        )
        wait_for(lambda: sum("bench.test" in json.dumps(a) for _, a in Alerts.got) >= len(rows), 30, "alerts")
    finally:
        os.killpg(host.pid, signal.SIGTERM)
        host.wait()
    to_db = [first_seen[s] - ts for s, ts in rows.items() if s in first_seen]
    to_alert = []
    for sni, ts in rows.items():
        hits = [t for t, a in Alerts.got if f"contacted {sni} " in json.dumps(a)]
        if hits:
            to_alert.append(min(hits) - ts)
    attributed = query(
        db,
        "SELECT COUNT(*) FROM events WHERE kind='tls_sni' AND sni LIKE 'lat%.bench.test' AND server='bench'",
    )
    return {
        "events": len(rows),
        "attributed_to_server": attributed[0][0] if attributed else 0,
        "to_db_p50_s": round(pct(to_db, 0.5), 3),
        "to_db_p95_s": round(pct(to_db, 0.95), 3),
        "alerts": len(to_alert),
        "to_alert_p50_s": round(pct(to_alert, 0.5), 3),
        "to_alert_p95_s": round(pct(to_alert, 0.95), 3),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--idle", type=float, default=20.0)
    ap.add_argument("--qps", type=int, default=20000)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--lab-only", action="store_true",
                    help="capture on the lab veth only (other traffic on a shared machine stays out)")  # fmt: skip
    ap.add_argument("--parts", default="idle,bulk,latency,flood",
                    help="comma-separated measurements to run (default: all)")  # fmt: skip
    ap.add_argument("--upload-only", action="store_true", help="bulk transfers host->ns only")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    if os.geteuid() != 0 or shutil.which("ethtool") is None:
        sys.exit("daemon_bench: needs root and ethtool")
    results: dict[str, Any] = {}
    httpd = HTTPServer(("127.0.0.1", 0), Alerts)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    with Lab() as lab, tempfile.TemporaryDirectory() as tmpd:
        tmp = Path(tmpd)
        os.chmod(tmp, 0o700)
        lab.start_tls(443)
        lab.start_udp_sink(53)
        db = tmp / "events.db"
        (tmp / "home" / ".cursor").mkdir(parents=True)
        (tmp / "latency_server.py").write_text(LATENCY_SERVER)
        (tmp / "home" / ".cursor" / "mcp.json").write_text(json.dumps({"mcpServers": {"bench": {
            "command": sys.executable, "args": [str(tmp / "latency_server.py"), lab.peer4, "20"]}}}))  # fmt: skip
        cfg = tmp / "config.toml"
        cfg.write_text(f'[daemon]\ndatabase = "{db}"\n[discovery]\nextra_homes = ["{tmp}/home"]\n'
                       f'[alerts]\nurls = ["json://127.0.0.1:{httpd.server_address[1]}/"]\nmin_severity = "low"\n'
                       '[policy]\nlearning = false\n[servers.bench]\nallow = ["allowed.test"]\n')  # fmt: skip
        os.chmod(cfg, 0o600)
        nsock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        nsock.bind(str(tmp / "notify.sock"))
        nsock.settimeout(60)
        env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock"), "PYTHONPATH": str(REPO)}
        t0 = time.monotonic()
        only = ["--iface", lab.veth_host] if args.lab_only else []
        daemon = subprocess.Popen([sys.executable, "-m", "egresswatch", "run", "--config", str(cfg),
                                   "--status-file", str(tmp / "status.json"), *only], env=env, cwd=REPO)  # fmt: skip
        try:
            while b"READY=1" not in nsock.recv(4096):
                pass
            results["startup_to_ready_s"] = round(time.monotonic() - t0, 2)
            time.sleep(1.5)  # the first status file
            results["capture_filter"] = {
                k: v for k, v in status(tmp, "capture_filter").items() if k != "counters"
            }
            results["attribution"] = status(tmp, "attribution").get("mode")
            if "idle" in parts:
                c0 = cpu_seconds(daemon.pid)
                time.sleep(args.idle)
                results["idle"] = {
                    "seconds": args.idle,
                    "daemon_cpu_pct": round(100 * (cpu_seconds(daemon.pid) - c0) / args.idle, 2),
                    "loadavg_1m": load1(),
                }
            if "bulk" in parts:
                results["bulk"] = [
                    bulk(lab, daemon, tmp, db, args.seconds, offloads, reverse)
                    for offloads in (True, False)
                    for reverse in ((False,) if args.upload_only else (False, True))
                ]
            if "latency" in parts:
                try:
                    results["latency"] = latency(lab, tmp, db)
                except AssertionError as exc:  # e.g. the fallback path missed the short connections
                    results["latency"] = {"error": str(exc)}
            if "flood" in parts:
                results["dns_flood"] = dns_flood(lab, daemon, tmp, db, args.qps)
            results["peak_rss_mb"] = round(rss_peak_mb(daemon.pid), 1)
            results["final_counters"] = status(tmp)
        finally:
            daemon.send_signal(signal.SIGTERM)
            t_stop = time.monotonic()
            try:
                results["exit_code"] = daemon.wait(timeout=60)
            except subprocess.TimeoutExpired:
                daemon.send_signal(signal.SIGUSR1)  # thread stacks to stderr
                time.sleep(1)
                daemon.kill()
                results["exit_code"] = "killed after 60 s"
            results["sigterm_to_exit_s"] = round(time.monotonic() - t_stop, 2)
            nsock.close()
            httpd.shutdown()
    text = json.dumps(results, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")


if __name__ == "__main__":
    main()
