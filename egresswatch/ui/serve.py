"""Serve the view with uvicorn (the only module that imports it), on 127.0.0.1."""

from __future__ import annotations

import socket

import uvicorn
from starlette.applications import Starlette

HOST = "127.0.0.1"  # loopback only: never another interface


def bind(port: int) -> socket.socket:
    """The listening socket (port 0: any free port); OSError when it is taken."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((HOST, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def serve(app: Starlette, sock: socket.socket, log_level: str = "warning") -> None:
    """Run until interrupted. Only GET/HEAD routes exist; no proxy headers are trusted."""
    config = uvicorn.Config(
        app, log_level=log_level, proxy_headers=False, server_header=False, access_log=False, lifespan="off"
    )
    uvicorn.Server(config).run(sockets=[sock])
