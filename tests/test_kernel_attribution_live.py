"""Send-time attribution from the kernel (egresswatch.ebpf), live: the real
daemon, a fake MCP host, the attacker's case (issues #9, #17).

- a long-lived server process (older than 10 s) whose sockets live about a
  millisecond: getaddrinfo lookups, TLS hellos closed at once to the address it
  resolved and to a bare IP, fire-and-forget exfiltration queries, a child
  that lives 5 ms, a fork + setsid grandchild that calls out after 1 s; an
  unrelated process does the same beside it; both cores kept busy; 50 reps;
- a server that rewrites its argv and comm to ``/usr/sbin/sshd -D`` at once;
- the daemon with BPF loading refused: it runs, attributes long-lived
  sockets, and ``status`` / ``doctor`` say it fell back.

The DNS query to UDP port 5353 and the datagram to an arbitrary port are seen
through ``udp_flow`` events (the kernel's record of each first datagram).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.alertsink import Receiver
from tests.helpers.daemonrun import Notify
from tests.helpers.netlab import Lab, missing, wait_for

pytestmark = pytest.mark.live
REPO = Path(__file__).resolve().parents[1]
DATA = Path(__file__).resolve().parent / "e2e_data"
SERVER = (
    DATA / "callout_server.py"
)  # no "mcp" in its name: the unrelated copy must not match a launcher pattern
REPS = 50
UNRESOLVED6 = "fd00:e9e5:ffff::1"  # the AAAA answer: the server never resolves the bare IP (peer6)


def all_rows(db: Path) -> list[dict[str, Any]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in conn.execute("SELECT * FROM events")]
    except sqlite3.Error:
        return []
    finally:
        conn.close()


class Daemon:
    """`python -m egresswatch run` on a temporary config, database and status file."""

    def __init__(self, tmp: Path, lab: Lab, servers: dict[str, list[str]], allow: dict[str, list[str]],
                 env: dict[str, str] | None = None, daemon: str = "", policy: str = "") -> None:  # fmt: skip
        self.tmp = tmp
        self.alerts = Receiver()
        self.cfg = tmp / "config.toml"
        text = f"""
[daemon]
database = "{tmp}/events.db"
{daemon}
[discovery]
extra_homes = ["{tmp}/home"]
[alerts]
urls = ["{self.alerts.url}"]
min_severity = "low"
window_seconds = 1
[policy]
learning = false
{policy}
"""
        for name, names in allow.items():
            text += f"[servers.{name}]\nallow = {json.dumps(names)}\n"
        self.cfg.write_text(text)
        os.chmod(self.cfg, 0o600)
        home = tmp / "home" / ".cursor"
        home.mkdir(parents=True)
        self.mcp = home / "mcp.json"
        self.mcp.write_text(json.dumps({"mcpServers": {
            n: {"command": c[0], "args": c[1:]} for n, c in servers.items()}}))  # fmt: skip
        self.db = tmp / "events.db"
        self.status_file = tmp / "status.json"
        self.notify = Notify(tmp / "notify.sock")
        self.env = {**os.environ, "NOTIFY_SOCKET": str(tmp / "notify.sock"), "PYTHONPATH": str(REPO),
                    **(env or {})}  # fmt: skip
        self.log = open(tmp / "daemon.log", "w")
        self.lab = lab
        self.host: subprocess.Popen[str] | None = None
        self.start()

    def start(self) -> None:
        after = len(self.notify.messages)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "egresswatch", "-v", "run", "--config", str(self.cfg),
             "--status-file", str(self.status_file),
             # the lab's veth only: other test suites on this machine flood their own labs
             "--iface", self.lab.veth_host],
            env=self.env, cwd=REPO, stderr=self.log, text=True,
            # the priority the unit gives it (systemd/egresswatch.service Nice=-10): a
            # daemon starved for longer than the capture ring holds loses packets in
            # the kernel, the capture's limit, not attribution's (kernel_drops in status)
            preexec_fn=lambda: os.nice(-10),
        )  # fmt: skip
        try:
            self.notify.wait("READY=1", after=after)
        except AssertionError:
            self.close()
            raise AssertionError("no READY=1: " + (self.tmp / "daemon.log").read_text()[-3000:]) from None

    def restart(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(timeout=30) == 0
        self.start()

    def launch_host(self) -> None:
        self.host = subprocess.Popen([sys.executable, str(DATA / "fake_mcp_host.py"), str(self.mcp)],
                                     cwd=REPO, start_new_session=True)  # fmt: skip

    def status(self) -> str:
        wait_for(self.status_file.exists, 10, "the status file")
        out = subprocess.run([sys.executable, "-m", "egresswatch", "status", "--status-file",
                              str(self.status_file)], capture_output=True, text=True, cwd=REPO, env=self.env)  # fmt: skip
        return out.stdout

    def close(self) -> None:
        if self.host is not None:
            try:
                os.killpg(self.host.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.host.wait(timeout=10)
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.log.close()
        self.alerts.close()
        self.notify.close()


def log_lines(path: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in path.read_text().splitlines() if x.strip()]


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns(answer6=UNRESOLVED6)
        lab.start_tls(443)
        yield lab


@pytest.fixture
def tmpdir700(tmp_path: Path) -> Path:
    tmp = tmp_path / "ew"
    tmp.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    return tmp


@pytest.fixture
def burner() -> Iterator[None]:
    """Keep every core busy while the scenario runs."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def test_every_packet_of_a_long_lived_server_is_attributed(lab: Lab, tmpdir700: Path, burner: None) -> None:
    tmp = tmpdir700
    resolv = tmp / "resolv.conf"
    resolv.write_text(f"nameserver {lab.peer4}\noptions timeout:2 attempts:2\n")
    srv_log, other_log, go = tmp / "server.jsonl", tmp / "other.jsonl", tmp / "go"
    srv_log.touch()
    other_log.touch()
    args = [lab.peer4, lab.peer6]
    cmd = [sys.executable, str(SERVER), "server", *args, str(srv_log), str(go), str(resolv), str(REPS)]
    d = Daemon(tmp, lab, {"fake": cmd}, {"fake": ["allowed.test", "allowed.test:443"]})
    other = None
    wire = Wire(lab, tmp / "wire.pcap")
    try:
        status = d.status()
        assert "attribution: ebpf" in status and "watched lane: on" in status, status
        d.launch_host()
        other = subprocess.Popen([sys.executable, str(SERVER), "other", *args, str(other_log), str(go),
                                  str(resolv), str(REPS)])  # fmt: skip
        # both act once they are older than 10 s (they poll their own age) and go exists
        go.touch()
        wait_for(lambda: sum(x["what"] == "start" for x in log_lines(srv_log) + log_lines(other_log)) == 2,
                 40, "both processes started")  # fmt: skip
        for path in (srv_log, other_log):
            start = next(x for x in log_lines(path) if x["what"] == "start")
            assert start["age"] >= 10.0
        wait_for(lambda: sum(x["what"] == "gc_done" for x in log_lines(srv_log) + log_lines(other_log))
                 == 2 * REPS, 120, "every grandchild done")  # fmt: skip
        srv = log_lines(srv_log)
        oth = log_lines(other_log)
        server_pid = next(x["pid"] for x in srv if x["what"] == "start")

        def settled() -> list[dict[str, Any]] | None:
            rs = all_rows(d.db)
            names = {r["qname"] for r in rs} | {r["sni"] for r in rs}
            want = {x["name"] for x in srv + oth if x["what"] in ("kid", "exfil", "resolved_tls")}
            return rs if want <= names else None

        try:
            rows = wait_for(settled, 60, "events of every logged action")
        except AssertionError:
            rs = all_rows(d.db)
            names = {r["qname"] for r in rs} | {r["sni"] for r in rs}
            lost = {x["name"] for x in srv + oth if x["what"] in ("kid", "exfil", "resolved_tls")} - names
            counters = json.loads(d.status_file.read_text()).get("counters", {})
            raise AssertionError(
                f"{len(lost)} actions without an event, e.g. {sorted(lost)[:5]}; the capture dropped "
                f"{counters.get('kernel_drops')} frames (a daemon starved of CPU loses packets, not attribution)"
            ) from None
    finally:
        if other is not None:
            other.kill()
            other.wait()
        d.close()
        wire.close()
    # the daemon stored everything it captured before it stopped: a SYN whose hello
    # was handled later, or a flow still held for its hello, is in the table now
    rows = all_rows(d.db)
    try:
        check_scenario(rows, srv, oth, server_pid, lab, d.alerts.messages)
    except AssertionError as exc:
        st = json.loads(d.status_file.read_text())
        attr, counters = st.get("attribution", {}), st.get("counters", {})
        capture = {k: counters.get(k) for k in ("kernel_drops", "lane_drops", "captured", "lane_copies")}
        raise AssertionError(
            f"{exc}\nattribution counters: {attr.get('counters')} {attr.get('map_counters')}\ncapture: {capture}"
            f"{wire.report(str(exc))}"
        ) from None


class Wire:
    """TCP port 443 on the lab's veth, recorded by dumpcap beside the daemon: when
    a connection has no event, whether its packets were on the wire at all."""

    def __init__(self, lab: Lab, path: Path) -> None:
        self.path = path
        if shutil.which("dumpcap") is None:
            missing("dumpcap not installed (scripts/setup.sh --test installs tshark)")
        self.proc = subprocess.Popen(["dumpcap", "-q", "-i", lab.veth_host, "-f", "tcp port 443", "-P",
                                      "-w", str(path)], stderr=subprocess.PIPE, text=True)  # fmt: skip
        wait_for(
            lambda: self.proc.poll() is not None or (path.exists() and path.stat().st_size > 0), 10, "dumpcap"
        )
        if self.proc.poll() is not None:
            raise AssertionError(f"dumpcap: {self.proc.communicate()[1].strip()}")

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)

    def report(self, text: str) -> str:
        ports = {int(p) for p in re.findall(r"from port (\d+)", text)}
        if not ports:
            return ""
        from scapy.layers.inet import TCP
        from scapy.utils import rdpcap

        out = []
        for pkt in rdpcap(str(self.path)):
            if TCP in pkt and ports & {pkt[TCP].sport, pkt[TCP].dport}:
                out.append(f"{float(pkt.time):.3f} {pkt[TCP].sport}>{pkt[TCP].dport} {pkt[TCP].flags} "
                           f"{len(pkt[TCP].payload)}B")  # fmt: skip
        return "\non the wire (dumpcap): " + ("; ".join(out) or "nothing")


def check_scenario(rows: list[dict[str, Any]], srv: list[dict[str, Any]], oth: list[dict[str, Any]],
                   server_pid: int, lab: Lab, alerts: list[dict[str, Any]]) -> None:  # fmt: skip
    bad: list[str] = []

    def expect(rs: list[dict[str, Any]], pid: int | None, what: str) -> None:
        if not rs:
            bad.append(f"{what}: no event")
        for r in rs:
            got = (r["server"], r["pid"]) if pid is not None else (r["server"],)
            want = ("fake", pid) if pid is not None else (None,)
            if got != want:
                bad.append(
                    f"{what}: {r['kind']} {r['qname'] or r['sni'] or r['dst']} -> {got} ({r['attribution']})"
                )

    def near(rs: list[dict[str, Any]], x: dict[str, Any]) -> list[dict[str, Any]]:
        # ports are reused (the server's and the unrelated process's connections to the
        # same address): a port names this action's packets only around its time
        return [r for r in rs if abs(r["ts"] - x["t"]) < 0.5]

    by_name: dict[str, list[dict[str, Any]]] = {}
    by_sport: dict[tuple[str, int, str], list[dict[str, Any]]] = {}
    for r in rows:
        for n in (r["qname"], r["sni"]):
            if n:
                by_name.setdefault(n, []).append(r)
        if r["kind"] != "dns_answer":
            by_sport.setdefault((r["proto"], r["sport"], r["dst"]), []).append(r)
    first_5353 = next(x for x in srv if x["what"] == "dns_5353")
    for x in srv:
        if x["what"] in ("kid", "exfil", "resolved_tls"):
            expect([r for r in by_name.get(x["name"], []) if r["kind"] != "dns_answer"], x["pid"], x["what"])
        if x["what"] == "resolved":  # getaddrinfo queries and their answers
            expect(
                by_name.get(x["name"], []), x["pid"] if x["pid"] != server_pid else server_pid, "getaddrinfo"
            )
        if x["what"] in ("resolved_tls", "bare_tls"):
            on_port = by_sport.get(("tcp", x["sport"], x["dst"]), [])
            if not near(on_port, x):  # say what the port has, at any time
                seen = [(r["kind"], round(r["ts"] - x["t"], 3), r["server"], r["pid"]) for r in on_port]
                bad.append(
                    f"{x['what']} from port {x['sport']} at {x['t']:.3f}: no event near it; on the port: {seen}"
                )
            expect(near(on_port, x), x["pid"], x["what"] + " by port")
            kinds = {r["kind"] for r in near(on_port, x)}
            if on_port and not ("connect" in kinds and kinds & {"tls_sni", "tls_incomplete"}):
                bad.append(f"{x['what']} from port {x['sport']}: not both its SYN and its hello ({kinds})")
        if x["what"] == "bare_tls":
            reasons = {r["reason"] for r in near(by_sport.get(("tcp", x["sport"], x["dst"]), []), x)}
            if "direct_ip" not in reasons:
                bad.append(f"bare IP hello from port {x['sport']}: no direct_ip ({reasons})")
        if x["what"] == "datagram" or (x["what"] == "dns_5353" and x is first_5353):
            # one udp_flow per (process, destination): the first query to :5353, every datagram (new port)
            flows = [r for r in near(by_sport.get(("udp", x["sport"], lab.peer4), []), x)
                     if r["kind"] == "udp_flow" and r["dport"] == x["dport"]]  # fmt: skip
            expect(flows, x["pid"], x["what"] + " (udp_flow)")
        if x["what"] == "exfil":
            if {r["reason"] for r in by_name.get(x["name"], []) if r["kind"] == "dns_query"} != {"dns_exfil"}:
                bad.append(f"exfil {x['name']}: not flagged dns_exfil")
    for x in oth:
        if x["what"] in ("dns_5353", "datagram"):  # no udp_flow event outside MCP trees
            flows = [r for r in near(by_sport.get(("udp", x["sport"], lab.peer4), []), x)
                     if r["kind"] == "udp_flow" and r["dport"] == x["dport"]]  # fmt: skip
            if flows:
                bad.append(f"unrelated {x['what']}: udp_flow event {flows[0]['server']}")
        if x.get("name"):
            expect(by_name.get(x["name"], []), None, "unrelated " + x["what"])
        if x.get("sport") and x["what"] in ("resolved_tls", "bare_tls"):
            expect(
                near(by_sport.get(("tcp", x["sport"], x["dst"]), []), x),
                None,
                "unrelated " + x["what"] + " by port",
            )
    # the server resolved peer4 (allowed.test): no connection to it is a direct_ip
    direct = [r for r in rows if r["reason"] == "direct_ip" and r["dst"] == lab.peer4]
    if direct:
        bad.append(f"{len(direct)} direct_ip events to the resolved address {lab.peer4}")
    # one event per packet: a frame seen through both capture lanes is handed over once
    seen: dict[tuple[Any, ...], int] = {}
    for r in rows:
        key = (r["kind"], r["ts"], r["sport"], r["dport"], r["qname"], r["sni"])
        seen[key] = seen.get(key, 0) + 1
    twice = [k for k, n in seen.items() if n > 1 and k[0] in ("dns_query", "dns_answer", "connect")]
    if twice:
        bad.append(f"{len(twice)} packets stored twice, e.g. {twice[0]}")
    kinds = sorted({r["attribution"] for r in rows if r["server"] == "fake"})
    assert not bad, f"{len(bad)} problems, e.g.:\n" + "\n".join(bad[:20]) + f"\nattribution reasons: {kinds}"
    assert any("exfil.test" in json.dumps(a) for a in alerts), "no exfil alert delivered"


def test_a_server_that_renames_itself_stays_identified(lab: Lab, tmpdir700: Path) -> None:
    tmp = tmpdir700
    if shutil.which("cc") is None:
        missing("cc (build-essential) to build tests/e2e_data/renamer.c")
    binary = tmp / "mcp-renamer"
    subprocess.run(["cc", "-O2", "-o", str(binary), str(DATA / "renamer.c")], check=True)
    go = tmp / "go"
    d = Daemon(tmp, lab, {"renamer": [str(binary), lab.peer4, "20", str(go)]}, {"renamer": ["nothing.test"]})
    try:
        d.launch_host()

        def renamed() -> int | None:
            for pid in os.listdir("/proc"):
                try:
                    if Path(f"/proc/{pid}/cmdline").read_bytes().rstrip(b"\0") == b"/usr/sbin/sshd\0-D" and \
                            os.readlink(f"/proc/{pid}/exe") == str(binary):  # fmt: skip
                        return int(pid)
                except OSError:
                    continue
            return None

        pid = wait_for(renamed, 20, "the server rewrote its argv")
        assert Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"
        go.touch()

        def seen() -> list[dict[str, Any]] | None:
            rs = [
                r
                for r in all_rows(d.db)
                if (r["qname"] or "").startswith("renamed") and r["kind"] == "dns_query"
            ]
            return rs if len(rs) >= 20 else None

        rows = wait_for(seen, 30, "the renamed server's 20 queries")
        # a restarted daemon reads the process from /proc (sshd -D) and the exec
        # record the kernel kept (pinned map) across the restart
        d.restart()
        Path(f"{go}2").touch()

        def again() -> list[dict[str, Any]] | None:
            rs = [
                r
                for r in all_rows(d.db)
                if (r["qname"] or "").startswith("again") and r["kind"] == "dns_query"
            ]
            return rs if len(rs) >= 20 else None

        rows += wait_for(again, 30, "the 20 queries after the restart")
    finally:
        d.close()
    assert {(r["server"], r["pid"]) for r in rows} == {("renamer", pid)}, rows[:3]
    assert all(r["verdict"] == "flagged" for r in rows)
    assert not any("sshd" in (r["cmdline"] or "") for r in rows)


def test_fallback_when_bpf_loading_is_refused(lab: Lab, tmpdir700: Path) -> None:
    tmp = tmpdir700
    refuse = {"EGRESSWATCH_NO_BPF": "1"}
    doctor = subprocess.run([sys.executable, "-m", "egresswatch", "doctor"], capture_output=True, text=True,
                            cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO), **refuse})  # fmt: skip
    assert "attribution: fallback" in doctor.stdout and "EGRESSWATCH_NO_BPF" in doctor.stdout, doctor.stdout
    # the fake server of tests/test_e2e.py: sockets held 300 ms, which the userspace path catches
    cmd = [sys.executable, str(DATA / "fake_mcp_server.py"), lab.peer4, lab.peer6]
    d = Daemon(tmp, lab, {"fake": cmd}, {"fake": ["allowed.test", "allowed.test:443"]}, env=refuse)
    try:
        status = d.status()
        assert "attribution: fallback (disabled by EGRESSWATCH_NO_BPF=1)" in status, status
        assert "watched lane: off (needs the eBPF attribution programs" in status, status
        d.launch_host()
        rows = wait_for(lambda: [r for r in all_rows(d.db) if r["sni"] == "evil.test" and r["server"] == "fake"],
                        45, "evil.test attributed by the fallback")  # fmt: skip
        assert rows[0]["attribution"] in ("live", "remembered socket", "remembered socket (process exited)")
        assert d.proc.poll() is None
    finally:
        d.close()
    assert "attribution: fallback to userspace socket lookups" in (tmp / "daemon.log").read_text()
