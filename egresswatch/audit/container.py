"""The checks of an MCP server run in a container (``docker run``, ``podman run``):
unpinned or lookalike images, privileged containers, the host network, and
mounts of the host root, a whole home or the Docker socket.
"""

from __future__ import annotations

import re

from egresswatch.audit.findings import Finding
from egresswatch.audit.lookalike import lookalike
from egresswatch.audit.rules import Launch, image_ref
from egresswatch.audit.secrets import redact
from egresswatch.mcp.discovery import ServerDef

_HOME_MOUNT = re.compile(
    r"^(?:~|\$HOME|\$\{HOME\}|\$\{env:HOME\}|\$\{userHome\}|/root|/home/[^/]+|/Users/[^/]+|%USERPROFILE%|C:\\Users\\[^\\]+)/?$"
)


def container_findings(s: ServerDef, ln: Launch) -> list[Finding]:
    out: list[Finding] = []

    def add(sev: str, code: str, finding: str, fix: str) -> None:
        out.append(Finding(sev, s.host, str(s.file), s.name, code, finding, fix))

    assert ln.spec is not None and ln.name is not None
    name, tag, digest = image_ref(ln.spec)
    if digest is None and (tag is None or tag == "latest"):
        add(
            "medium",
            "unpinned_image",
            f"image {redact(ln.spec)} has {'no tag' if tag is None else 'the :latest tag'} and no digest",
            f"pin by digest: {name}@sha256:<digest> (docker pull {name}:<tag>, then docker inspect --format '{{{{index .RepoDigests 0}}}}')",
        )
    if name.startswith(("mcp/", "ghcr.io/", "docker.io/mcp/")) and (hit := lookalike("docker", name)):
        sev, known, why = hit
        add(
            sev,
            "lookalike_package",
            f"image {name} looks like well-known {known} ({why})",
            f"if you meant {known}, use exactly that image",
        )
    opts = list(ln.opts)
    joined = " ".join(opts)
    if (
        "--privileged" in opts
        or re.search(r"--cap-add[= ](?:ALL|SYS_ADMIN)\b", joined, re.I)
        or re.search(r"--pid[= ]host\b", joined)
    ):
        add(
            "high",
            "docker_privileged",
            "container runs privileged (or with SYS_ADMIN / host pid namespace): it can take over the host",
            "drop --privileged / --cap-add ALL|SYS_ADMIN / --pid host",
        )
    if re.search(r"--(?:network|net)[= ]host\b", joined):
        add(
            "medium",
            "docker_host_network",
            "container shares the host network: it reaches every local service and bypasses container egress rules",
            "remove --network host; publish only needed ports",
        )
    for src in _mount_sources(opts):
        if (
            src.rstrip("/") == ""
            or src in ("/", "C:\\", "C:/")
            or _HOME_MOUNT.match(src)
            or src.endswith("docker.sock")
        ):
            what = (
                "the host root"
                if src.rstrip("/\\") in ("", "C:")
                else "the Docker socket"
                if src.endswith("docker.sock")
                else "a whole home directory"
            )
            add(
                "high",
                "docker_host_mount",
                f"container mounts {what} ({src})",
                "mount only the directory the server needs, read-only where possible (:ro)",
            )
    return out


def _mount_sources(opts: list[str]) -> list[str]:
    """Host paths bind-mounted by -v/--volume/--mount options."""
    srcs: list[str] = []
    for i, o in enumerate(opts):
        kind, val = o, None
        if o in ("-v", "--volume", "--mount") and i + 1 < len(opts):
            val = opts[i + 1]
        elif o.startswith(("--volume=", "--mount=")):
            kind, val = o.split("=", 1)
        elif o.startswith("-v") and len(o) > 2 and not o.startswith("--"):
            kind, val = "-v", o[2:]
        if val is None:
            continue
        if kind == "--mount":
            m = re.search(r"(?:^|,)(?:source|src)=([^,]+)", val)
            if m and "type=volume" not in val:
                srcs.append(m.group(1))
        elif re.match(r"^[A-Za-z]:[\\/]", val):
            srcs.append(val[:2] + val[2:].split(":", 1)[0])
        elif ":" in val:
            srcs.append(val.split(":", 1)[0])
    return srcs
