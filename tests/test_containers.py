"""Container processes tied back to the MCP server's `docker run` (egresswatch.attribute.containers):
the pure parts. The live path (a real dockerd) is in test_containers_live.py."""

from __future__ import annotations

import pytest

from egresswatch.attribute.containers import (
    ContainerInfo,
    container_id,
    match_cli,
    normalize_image,
    parse_inspect,
    parse_time,
    run_name,
)
from egresswatch.model import ProcessInfo

CID = "a524b7fb5ac9fc5906091784654189009f1b0d8c3a019b76342735d6fd91647a"


@pytest.mark.parametrize(
    "text",
    [
        f"9:name=systemd:/docker/{CID}\n0::/docker/{CID}\n",  # cgroup v1, cgroupfs driver
        f"0::/system.slice/docker-{CID}.scope\n",  # cgroup v2, systemd driver
        f"0::/machine.slice/libpod-{CID}.scope/container\n",  # podman
        f"0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{CID}.scope\n",
    ],
)
def test_container_id_from_cgroup(text: str) -> None:
    assert container_id(text) == CID


def test_host_processes_have_no_container_id() -> None:
    assert container_id("0::/user.slice/user-1000.slice/session-2.scope\n") is None
    assert container_id("0::/system.slice/docker.service\n") is None  # dockerd itself
    assert container_id("") is None


def test_normalize_image() -> None:
    assert normalize_image("docker.io/library/busybox:latest") == "busybox"
    assert normalize_image("mcp/github:latest") == normalize_image("MCP/github") == "mcp/github"
    assert normalize_image("ghcr.io/org/srv:1.2") == "ghcr.io/org/srv:1.2"


def test_run_name() -> None:
    assert run_name(["docker", "run", "-i", "--rm", "--name", "gh", "mcp/github"]) == "gh"
    assert run_name(["docker", "run", "--name=gh", "mcp/github"]) == "gh"
    assert run_name(["docker", "-H", "unix:///x", "run", "-e", "A=--name", "mcp/github"]) is None
    assert run_name(["docker", "run", "mcp/github", "--name", "x"]) is None  # an argument of the image
    assert run_name(["docker", "ps"]) is None


def test_parse_inspect_and_time() -> None:
    data = {
        "Id": CID,
        "Name": "/angry_khayyam",
        "Created": "2026-11-24T15:53:14.123456789Z",
        "Config": {"Image": "mcp/github", "Cmd": ["node", "dist/index.js"]},
    }
    info = parse_inspect(data)
    assert info == ContainerInfo(
        CID, "angry_khayyam", "mcp/github", parse_time("2026-11-24T15:53:14.123456Z")
    )
    assert info is not None and abs(info.created - 1795535594.123456) < 1e-6
    assert parse_time("2026-11-24T16:53:14.5+01:00") == parse_time("2026-11-24T15:53:14.5Z")
    for bad in (None, [], {"Id": CID}, {**data, "Created": "yesterday"}, {**data, "Config": None}):
        assert parse_inspect(bad) is None


def cli(pid: int, ct: float, *argv: str) -> ProcessInfo:
    return ProcessInfo(pid=pid, create_time=ct, name="docker", cmdline=("docker", *argv))


def test_match_cli_by_name_then_by_image_and_time() -> None:
    info = ContainerInfo(CID, "gh", "mcp/github", 1000.5)
    named = cli(10, 900.0, "run", "-i", "--rm", "--name", "gh", "mcp/github")
    other_name = cli(11, 1000.0, "run", "-i", "--name", "other", "mcp/github")
    assert match_cli(info, [other_name, named], set()) == named

    anon = ContainerInfo(CID, "angry_khayyam", "docker.io/mcp/github:latest", 1000.5)
    early = cli(20, 990.0, "run", "-i", "--rm", "mcp/github")
    late = cli(21, 1000.0, "run", "-i", "--rm", "mcp/github")
    after = cli(22, 1010.0, "run", "-i", "--rm", "mcp/github")  # started after the container was created
    wrong_image = cli(23, 1000.2, "run", "-i", "--rm", "mcp/slack")
    not_run = ProcessInfo(pid=24, create_time=1000.3, name="npx", cmdline=("npx", "-y", "x"))
    clis = [early, late, after, wrong_image, not_run]
    assert match_cli(anon, clis, set()) == late  # the most recent launch before the container
    assert match_cli(anon, clis, {late.key}) == early  # late already has its container
    assert match_cli(anon, [cli(30, 100.0, "run", "mcp/github")], set()) is None  # far too old


def test_docker_global_options_before_run() -> None:
    """One parser for `docker [global options] [container] run`: lineage, audit and linker agree."""
    from egresswatch.audit.rules import parse_launch
    from egresswatch.mcp.signature import docker_run_at, signature

    argv = ["docker", "-H", "unix:///run/x.sock", "--context", "ci", "container", "run", "--rm", "mcp/github"]
    assert docker_run_at(argv) == 7
    assert docker_run_at(["docker", "ps"]) is None
    assert docker_run_at(["docker", "-H", "run"]) is None  # "run" is the value of -H
    sig = signature(argv)
    assert sig is not None and (sig.kind, sig.name) == ("docker", "mcp/github")
    launch = parse_launch(argv[0], tuple(argv[1:]))
    assert (launch.runner, launch.name, launch.pinned) == ("docker run", "mcp/github", False)
