"""A watched user against the whole root daemon (issues #17, #10), each server
run by a real unprivileged account (tests/helpers/accounts.py), the daemon's
verdicts read from its database and its alerts from a json:// receiver:

- rename evasion: the server rewrites its argv and comm to ``/usr/sbin/sshd -D``
  as its first act; every query is still its own and flagged, also after a
  daemon restart;
- identity hijack: the user's ``~/.cursor/mcp.json`` defines a server with the
  same command as root's watched server, named like a server with
  ``allow = ["*"]``; root's server keeps its identity and is flagged
  ``not_allowlisted``;
- a server that deletes its executable, and a child it runs from a memfd
  (``fexecve``), are attributed and alerted, also after a daemon restart;
- a server whose sockets carry an IPv6 routing header (``IPV6_RTHDR``, open to
  any account) has its queries, connection and ClientHello seen and flagged.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.accounts import account
from tests.helpers.hostiled import (
    DATA,
    PY,
    Daemon,
    compile_c,
    find_pid,
    shared_dir,
    tmp700,
    wait_rows,
    write_mcp,
)
from tests.helpers.netlab import Lab, wait_for

pytestmark = pytest.mark.live


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        lab.start_dns()
        yield lab


@pytest.fixture
def shared() -> Iterator[Path]:
    with shared_dir() as d:
        yield d


def alerted(d: Daemon, server: str, prefix: str) -> list[dict[str, Any]]:
    """Alert bodies about ``server`` naming a destination ``prefix<i>.test``."""
    return [a for a in d.alerts.received
            if f"MCP server {server} contacted {prefix}" in json.dumps(a)]  # fmt: skip


def test_a_renamed_server_of_an_unprivileged_account_stays_identified(
    lab: Lab, tmp_path: Path, shared: Path
) -> None:
    binary = compile_c(DATA / "renamer.c", shared / "mcp-renamer")
    go = shared / "go"
    with account("ewren") as user:
        mcp = write_mcp(user.home, {"renamer": [str(binary), lab.peer4, "20", str(go)]}, user)
        d = Daemon(tmp700(tmp_path), lab, [user.home], {"renamer": ["nothing.test"]})
        try:
            d.launch_host(mcp, user)
            pid = wait_for(lambda: find_pid(str(binary), b"/usr/sbin/sshd\0-D", user.uid), 20,
                           "the server (as the account) rewrote its argv")  # fmt: skip
            assert Path(f"/proc/{pid}/comm").read_text().strip() == "sshd"
            assert os.stat(f"/proc/{pid}").st_uid == user.uid
            go.touch()
            rows = wait_rows(d, "renamed", 20)
            wait_for(lambda: alerted(d, "renamer", "renamed"), 20, "an alert for the renamed server")
            # a restarted daemon reads sshd -D from /proc: the kernel's exec record decides
            d.restart()
            Path(f"{go}2").touch()
            rows += wait_rows(d, "again", 20)
            wait_for(lambda: alerted(d, "renamer", "again"), 20, "an alert after the restart")
        finally:
            d.close()
    assert {(r["server"], r["pid"], r["user"]) for r in rows} == {("renamer", pid, user.name)}, rows[:3]
    assert {(r["verdict"], r["reason"]) for r in rows} == {("flagged", "not_allowlisted")}
    assert not any("sshd" in (r["cmdline"] or "") for r in rows)


def test_users_same_command_definition_cannot_take_roots_server(
    lab: Lab, tmp_path: Path, shared: Path
) -> None:
    script = shared / "query_server.py"
    shutil.copy(DATA / "query_server.py", script)
    script.chmod(0o644)
    go = shared / "go"
    cmd = [PY, str(script), lab.peer4, "hj", "10", str(go)]
    tmp = tmp700(tmp_path)
    root_home = tmp / "roothome"
    with account("ewatk") as attacker:
        root_mcp = write_mcp(root_home, {"rootsrv": cmd}, None)
        evil_mcp = write_mcp(attacker.home, {"allow-all": cmd}, attacker)  # the same command
        d = Daemon(tmp, lab, [attacker.home, root_home], {"allow-all": ["*"], "rootsrv": ["nothing.test"]})
        try:
            d.launch_host(root_mcp, None)
            d.launch_host(evil_mcp, attacker)
            raw = b"\0".join(c.encode() for c in cmd)
            root_pid = wait_for(lambda: find_pid(None, raw, 0), 20, "root's server")
            evil_pid = wait_for(lambda: find_pid(None, raw, attacker.uid), 20, "the attacker's server")
            go.touch()
            rows = wait_rows(d, "hj", 20)
            wait_for(lambda: alerted(d, "rootsrv", "hj"), 20, "an alert for root's server")
        finally:
            d.close()
    by_pid: dict[int, set[tuple[str, str, str]]] = {}
    for r in rows:
        by_pid.setdefault(r["pid"], set()).add((r["server"], r["verdict"], r["reason"] or ""))
    assert by_pid.get(root_pid) == {("rootsrv", "flagged", "not_allowlisted")}, by_pid
    assert by_pid.get(evil_pid) == {("allow-all", "allowed", "allowlist")}, by_pid  # its own: allowed
    assert set(by_pid) == {root_pid, evil_pid}, by_pid
    assert not alerted(d, "allow-all", "hj")


def test_running_from_a_deleted_executable_does_not_escape(lab: Lab, tmp_path: Path, shared: Path) -> None:
    go = shared / "go"
    with account("ewgone") as user:
        bindir = user.home / "bin"
        bindir.mkdir()
        binary = compile_c(DATA / "gone.c", bindir / "mcp-gone")
        for p in (bindir, binary):
            os.chown(p, user.uid, user.gid)
        mcp = write_mcp(user.home, {"gone": [str(binary), lab.peer4, "10", str(go)]}, user)
        d = Daemon(tmp700(tmp_path), lab, [user.home], {"gone": ["nothing.test"]})
        try:
            d.launch_host(mcp, user)
            wait_for(lambda: not binary.exists(), 20, "the server deleted its executable")
            pid = find_pid(str(binary), uid=user.uid)
            assert pid is not None and os.readlink(f"/proc/{pid}/exe").endswith(" (deleted)")
            go.touch()
            rows = wait_rows(d, "gone", 10) + wait_rows(d, "memfd", 10)
            for prefix in ("gone", "memfd"):
                wait_for(lambda p=prefix: alerted(d, "gone", p), 20, f"an alert for {prefix}*")  # type: ignore[misc]
            d.restart()  # the restarted daemon finds the server's file deleted
            Path(f"{go}2").touch()
            rows += wait_rows(d, "again", 10) + wait_rows(d, "memfdagain", 10)
            for prefix in ("again", "memfdagain"):
                wait_for(lambda p=prefix: alerted(d, "gone", p), 20, f"an alert for {prefix}*")  # type: ignore[misc]
        finally:
            d.close()
    assert {(r["server"], r["verdict"], r["reason"]) for r in rows} == {
        ("gone", "flagged", "not_allowlisted")
    }
    server_rows = [r for r in rows if not r["qname"].startswith("memfd")]
    assert {r["pid"] for r in server_rows} == {pid}, server_rows[:3]
    kids = [r for r in rows if r["qname"].startswith("memfd")]
    assert pid not in {r["pid"] for r in kids} and len({r["pid"] for r in kids}) == 2, kids[:3]
    assert all(r["user"] == user.name for r in rows)


def test_an_ipv6_routing_header_does_not_hide_traffic(lab: Lab, tmp_path: Path, shared: Path) -> None:
    """Both capture filters used to drop IPv6 packets with extension headers:
    an unprivileged server that set a routing header on its sockets sent DNS
    and TLS that egresswatch never saw."""
    # the lab's peer accepts segment routing headers (Linux drops them by default)
    for conf in ("all", lab.veth_peer):
        lab.nsrun("sysctl", "-qw", f"net.ipv6.conf.{conf}.seg6_enabled=1")
    lab.start_tls(443)
    script = shared / "rthdr_server.py"
    shutil.copy(DATA / "rthdr_server.py", script)
    script.chmod(0o644)
    go = shared / "go"
    with account("ewrth") as user:
        cmd = [PY, str(script), lab.peer6, "rth", "5", str(go)]
        mcp = write_mcp(user.home, {"routed": cmd}, user)
        d = Daemon(tmp700(tmp_path), lab, [user.home], {"routed": ["nothing.test"]})
        try:
            d.launch_host(mcp, user)
            raw = b"\0".join(c.encode() for c in cmd)
            pid = wait_for(lambda: find_pid(None, raw, user.uid), 20, "the server, as the account")
            go.touch()
            queries = wait_rows(d, "rth", 5)

            def hello() -> list[dict[str, Any]] | None:
                rs = [r for r in d.rows() if r["kind"] == "tls_sni" and r["sni"] == "rthtls.test"]
                return rs or None

            tls = wait_for(hello, 20, "the ClientHello behind the routing header")
            wait_for(lambda: alerted(d, "routed", "rth"), 20, "an alert for the routed server")
        finally:
            d.close()
        connects = [r for r in d.rows() if r["kind"] == "connect" and r["dport"] == 443]
    rows = queries + tls + connects
    assert connects, "the SYN behind the routing header"
    assert {(r["server"], r["pid"], r["verdict"]) for r in rows} == {("routed", pid, "flagged")}, rows[:3]
    assert all(r["dst"] == lab.peer6 for r in rows)
