"""Processes inside containers that an MCP server's ``docker run`` started.

A host launches ``docker run -i --rm mcp/github``: the docker CLI is the MCP
root, but the processes in the container are children of containerd-shim
(podman: conmon), never of the CLI, so process ancestry alone loses them.
:class:`ContainerLinker` ties them back:

1. the container ID of a process comes from its cgroup (``/docker/<id>``,
   ``docker-<id>.scope``, ``libpod-<id>.scope``, ...);
2. the engine's API (``GET /containers/<id>/json`` on the docker or podman
   socket, root only) gives the container's name, image and creation time;
3. :func:`match_cli` picks the ``docker run`` process of an MCP tree that
   started it: the one whose ``--name`` is the container's name, else the one
   for the same image that started most recently before the container was
   created (within ``window`` seconds) and is not tied to another container.

The lineage tracker then files the container's first process under that CLI,
so everything the container runs is tied to the server (its sockets, in the
container's network namespace, are found by the attributor's per-namespace
lookup and the socket harvester).
"""

from __future__ import annotations

import http.client
import json
import logging
import re
import socket
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime

from egresswatch.mcp.launchers import VALUE_OPTS
from egresswatch.mcp.signature import docker_run_at, signature
from egresswatch.model import ProcessInfo

log = logging.getLogger(__name__)

DEFAULT_SOCKETS = ("/var/run/docker.sock", "/run/podman/podman.sock")
#: parent process names (15-character comm) of a container's first process
SHIMS = ("containerd-shim", "conmon", "runc", "crun")
_CGROUP_ID = re.compile(r"(?:docker|libpod|crio|cri-containerd|containerd)[-/:]([0-9a-f]{64})(?:\.scope)?\b")
_ISO = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)?$")


@dataclass(frozen=True, slots=True)
class ContainerInfo:
    id: str
    name: str  # without the leading "/"
    image: str
    created: float  # epoch seconds


def container_id(cgroup_text: str) -> str | None:
    """Pure: the 64-hex container ID in a /proc/PID/cgroup text, else None."""
    m = _CGROUP_ID.search(cgroup_text)
    return m.group(1) if m else None


def normalize_image(ref: str) -> str:
    """``docker.io/library/nginx:latest`` and ``nginx`` are one image."""
    ref = ref.strip().lower()
    for prefix in ("docker.io/", "index.docker.io/", "registry-1.docker.io/"):
        ref = ref.removeprefix(prefix)
    ref = ref.removeprefix("library/")
    return ref.removesuffix(":latest")


def run_name(argv: Sequence[str]) -> str | None:
    """Pure: the ``--name`` of a ``docker|podman [container] run`` command line."""
    opts = VALUE_OPTS["docker"]
    args = list(argv)
    i = docker_run_at(args)
    if i is None:
        return None
    while i < len(args) and args[i].startswith("-"):
        a = args[i]
        if a.startswith("--name="):
            return a.split("=", 1)[1] or None
        if a == "--name" and i + 1 < len(args):
            return args[i + 1]
        i += 2 if a in opts else 1
    return None


def parse_inspect(data: object) -> ContainerInfo | None:
    """Pure: a ContainerInfo from ``GET /containers/<id>/json``; None if unusable."""
    if not isinstance(data, dict):
        return None
    cid, name, created = data.get("Id"), data.get("Name"), data.get("Created")
    config = data.get("Config") if isinstance(data.get("Config"), dict) else {}
    image = config.get("Image") if isinstance(config, dict) else None
    if not isinstance(cid, str) or not isinstance(image, str) or not isinstance(created, str):
        return None
    ts = parse_time(created)
    if ts is None:
        return None
    return ContainerInfo(cid, (name if isinstance(name, str) else "").lstrip("/"), image, ts)


def parse_time(text: str) -> float | None:
    """RFC 3339 with nanoseconds (as the engines write it) -> epoch seconds."""
    m = _ISO.match(text.strip())
    if not m:
        return None
    frac = (m.group(2) or ".0")[:7]  # microseconds are all datetime keeps
    zone = m.group(3) or "Z"
    try:
        dt = datetime.fromisoformat(m.group(1) + frac + ("+00:00" if zone == "Z" else zone))
    except ValueError:
        return None
    return dt.timestamp()


def match_cli(
    info: ContainerInfo, clis: Sequence[ProcessInfo], taken: set[tuple[int, float]], window: float = 300.0
) -> ProcessInfo | None:
    """Pure: which ``docker run`` process (of ``clis``) started container ``info``."""
    best: ProcessInfo | None = None
    for p in clis:
        sig = signature(p.cmdline)
        if sig is None or sig.kind != "docker":
            continue
        name = run_name(p.cmdline)
        if name is not None:
            if name == info.name:
                return p
            continue
        if p.key in taken or normalize_image(sig.name) != normalize_image(info.image):
            continue
        if not p.create_time - 2.0 <= info.created <= p.create_time + window:
            continue
        if best is None or p.create_time > best.create_time:
            best = p
    return best


class _UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(self.timeout)
        s.connect(self._path)
        self.sock = s


class EngineApi:
    """``inspect(id)`` over the docker (or podman) API socket; None on any error."""

    def __init__(self, path: str, timeout: float = 2.0) -> None:
        self.path, self.timeout = path, timeout

    def inspect(self, cid: str) -> ContainerInfo | None:
        conn = _UnixHTTP(self.path, self.timeout)
        try:
            conn.request("GET", f"/containers/{cid}/json")
            resp = conn.getresponse()
            body = resp.read(1 << 20)
            if resp.status != 200:
                return None
            return parse_inspect(json.loads(body))
        except (OSError, http.client.HTTPException, ValueError) as exc:
            log.debug("container %s: %s: %s", cid[:12], self.path, exc)
            return None
        finally:
            conn.close()


def read_cgroup(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as fh:
            return fh.read(65536)
    except OSError:
        return None


class ContainerLinker:
    """``link(process)`` -> the (pid, create_time) of the ``docker run`` CLI
    that started the process's container, or None. ``clis()`` lists the live
    container-CLI processes of MCP trees (the lineage tracker provides it)."""

    def __init__(
        self,
        apis: Sequence[EngineApi],
        clis: Callable[[], list[ProcessInfo]],
        read_cgroup: Callable[[int], str | None] = read_cgroup,
        max_cached: int = 1024,
    ) -> None:
        self.apis, self.clis, self.read_cgroup = list(apis), clis, read_cgroup
        self.max_cached = max_cached
        self._links: OrderedDict[str, tuple[int, float]] = OrderedDict()  # container id -> its CLI

    def link(self, proc: ProcessInfo) -> tuple[int, float] | None:
        text = self.read_cgroup(proc.pid)
        cid = container_id(text) if text else None
        if cid is None:
            return None
        if cid in self._links:
            return self._links[cid]
        clis = self.clis()
        if not clis:
            return None
        info = next((i for i in (api.inspect(cid) for api in self.apis) if i is not None), None)
        if info is None:
            return None
        cli = match_cli(info, clis, set(self._links.values()))
        if cli is None:
            return None  # not started by an MCP server (asked again for its next process)
        self._links[cid] = cli.key
        while len(self._links) > self.max_cached:
            self._links.popitem(last=False)
        log.info(
            "container %s (%s) belongs to pid %d: %s", info.name, info.image, cli.pid, " ".join(cli.cmdline)
        )
        return cli.key
