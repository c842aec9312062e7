"""Process and socket listings through psutil: the portable part of attribution.

On Linux egresswatch reads /proc and netlink itself (procevents, sockets);
psutil gives what those do not: every pid (seeding and polling the lineage
tracker), one process off Linux, the working directories of running MCP host
processes (where project configs are), and off Linux the inet sockets with
their owners and the machine's own addresses. The one module that imports
psutil: its errors become OSError or None here.
"""

from __future__ import annotations

import socket
from pathlib import Path

import psutil

from egresswatch.attribute.sockets import SockKey, norm_ip
from egresswatch.mcp.hosts import host_app
from egresswatch.model import ProcessInfo


def all_pids() -> list[int]:
    """Every running pid."""
    return psutil.pids()


def process_info(pid: int) -> ProcessInfo | None:
    """One process as psutil sees it (off Linux); None when it is gone or hidden."""
    try:
        p = psutil.Process(pid)
        with p.oneshot():
            d = p.as_dict(["ppid", "name", "exe", "cmdline", "username"], ad_value=None)
            return ProcessInfo(
                pid, p.create_time(), d["ppid"], d["name"], d["exe"], tuple(d["cmdline"] or ()), d["username"]
            )
    except (psutil.Error, OSError):
        return None


def host_project_dirs() -> list[Path]:
    """Working directories of running MCP host processes (Claude Code, Cursor,
    VS Code, Zed ...): where project-scope configs (.mcp.json, .cursor/mcp.json,
    .vscode/mcp.json ...) are found. The filesystem root and home folders are
    left out (a home is scanned as a home already)."""
    found: set[Path] = set()
    for proc in psutil.process_iter(["name", "cmdline", "cwd"]):
        try:
            info = ProcessInfo(pid=proc.pid, create_time=0.0, name=proc.info["name"],
                               cmdline=tuple(proc.info["cmdline"] or ()))  # fmt: skip
            cwd = proc.info["cwd"]
        except (psutil.Error, TypeError):
            continue
        if not cwd or host_app(info) is None:
            continue
        path = Path(cwd)
        if path == Path("/") or path.parent in (Path("/home"), Path("/Users")) or path == Path("/root"):
            continue
        found.add(path)
    return sorted(found)


def inet_socket_owners() -> dict[SockKey, int]:
    """Every inet socket's local end -> its owning pid (0: unknown owner);
    OSError when the sockets cannot be listed."""
    try:
        conns = psutil.net_connections("inet")
    except psutil.Error as exc:
        raise OSError(str(exc)) from exc
    return {
        (("tcp" if c.type == socket.SOCK_STREAM else "udp"), norm_ip(c.laddr.ip), c.laddr.port): c.pid or 0
        for c in conns
        if c.laddr
    }


def local_addresses() -> frozenset[str]:
    """The addresses of this machine's interfaces (normalised, no IPv6 zone)."""
    return frozenset(norm_ip(a.address.split("%")[0]) for v in psutil.net_if_addrs().values() for a in v)
