"""Is an alert target safe? A plain-http target on a local, unprivileged port can
be taken by any local user (bind the port while the receiver is down, read
every alert): :func:`exposed_target` says so, for ``doctor`` and start-up.

Reads /proc/net/tcp{,6} and probes local addresses; no third-party library.
"""

from __future__ import annotations

import ipaddress
import socket
from pathlib import Path
from urllib.parse import urlsplit

PLAIN_HTTP = frozenset({"json", "xml", "form", "http"})  # apprise schemes sent over plain http


def _unprivileged_port_start() -> int:
    try:
        return int(Path("/proc/sys/net/ipv4/ip_unprivileged_port_start").read_text())
    except (OSError, ValueError):
        return 1024


def _is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return False
    if ip.is_loopback or ip.is_unspecified:
        return True
    try:  # an address of one of this host's interfaces: binding port 0 succeeds
        with socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind((str(ip), 0))
    except OSError:
        return False
    return True


def _listener_uids(port: int) -> set[int]:
    """Owners (uid) of TCP sockets listening on ``port`` in this network namespace."""
    uids: set[int] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            if len(f) > 7 and f[3] == "0A" and int(f[1].rsplit(":", 1)[1], 16) == port:
                uids.add(int(f[7]))
    return uids


def exposed_target(url: str) -> str | None:
    """Why a plain-http alert target on this host could be taken by a local
    user (who then reads every alert), or None. For `doctor` and start-up."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    scheme, host = parts.scheme.lower(), parts.hostname
    if scheme not in PLAIN_HTTP or not host or not _is_local(host):
        return None
    port = port or 80
    if port < _unprivileged_port_start():
        return None
    uids = _listener_uids(port)
    now = (
        "nothing listens there now"
        if not uids
        else f"now held by uid {', '.join(str(u) for u in sorted(uids))}"
        if uids - {0}
        else "root listens there now, any user can take it when that receiver stops"
    )
    return (
        f"plain-http target on local port {port} ({now}): any local user can bind an unprivileged"
        " port and read the alerts; use a port below"
        f" {_unprivileged_port_start()}, a unix-socket relay or an https target"
    )
