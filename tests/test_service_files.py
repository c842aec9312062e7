"""systemd units pass `systemd-analyze verify` (after install-service puts them
in place), keep their hardening, and the launchd plists carry the keys launchd needs."""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from egresswatch.cli.main import cli
from tests.helpers.netlab import missing

REPO = Path(__file__).resolve().parents[1]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    if path is None:
        missing(f"{tool} is missing (install the systemd package)")
    return path


def _install(tmp_path: Path, *extra: str) -> Path:
    result = CliRunner().invoke(cli, ["install-service", "--prefix", str(tmp_path), *extra])
    assert result.exit_code == 0, result.output
    return tmp_path


def _unit(path: Path) -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            keys.setdefault(k.strip(), []).append(v.strip())
    return keys


def test_daemon_unit_verifies(tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    unit = _install(tmp_path) / "etc/systemd/system/egresswatch.service"
    out = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr.strip() == "", out.stderr
    sec = subprocess.run(
        [analyze, "security", "--offline=yes", str(unit)], capture_output=True, text=True, timeout=60
    )
    score = float(sec.stdout.strip().splitlines()[-1].split("level for egresswatch.service:")[1].split()[0])
    assert score <= 3.1, sec.stdout[-500:]


def test_notifier_user_unit_verifies(tmp_path: Path) -> None:
    analyze = _need("systemd-analyze")
    unit = _install(tmp_path) / "etc/systemd/user/egresswatch-notifier.service"
    runtime = tmp_path / "xdg"
    runtime.mkdir(mode=0o700)
    env = {**os.environ, "XDG_RUNTIME_DIR": str(runtime)}
    out = subprocess.run(
        [analyze, "--user", "verify", str(unit)], capture_output=True, text=True, env=env, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "notifier" in _unit(unit)["ExecStart"][0]


def test_daemon_unit_hardening() -> None:
    keys = _unit(REPO / "systemd/egresswatch.service")
    expect = {
        "Type": "notify", "NotifyAccess": "main", "WatchdogSec": "30", "Restart": "on-failure",
        "ExecReload": "/bin/kill -HUP $MAINPID", "StateDirectory": "egresswatch",
        "ConfigurationDirectory": "egresswatch", "RuntimeDirectory": "egresswatch",
        "ProtectSystem": "strict", "ProtectHome": "read-only", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
    }  # fmt: skip
    for k, v in expect.items():
        assert keys[k] == [v], k
    caps = set(keys["CapabilityBoundingSet"][0].split())
    assert caps == set(keys["AmbientCapabilities"][0].split())
    assert {"CAP_NET_RAW", "CAP_NET_ADMIN"} <= caps and "CAP_SYS_ADMIN" not in caps
    assert set(keys["RestrictAddressFamilies"][0].split()) == {"AF_UNIX", "AF_NETLINK", "AF_PACKET", "AF_INET",
                                                               "AF_INET6"}  # fmt: skip
    assert "@system-service" in keys["SystemCallFilter"]
    assert "run" in keys["ExecStart"][0].split()


@pytest.mark.parametrize(
    "name,command", [("org.egresswatch.daemon.plist", "run"), ("org.egresswatch.notifier.plist", "notifier")]
)
def test_launchd_plists(name: str, command: str, tmp_path: Path) -> None:
    plist = plistlib.loads((REPO / "launchd" / name).read_bytes())
    assert plist["Label"] == name.removesuffix(".plist")
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"]
    assert plist["ProgramArguments"][1] == command
    assert plist["StandardErrorPath"].startswith("/")
    where = "LaunchDaemons" if command == "run" else "LaunchAgents"
    installed = _install(tmp_path, "--launchd") / "Library" / where / name
    args = plistlib.loads(installed.read_bytes())["ProgramArguments"]
    assert command in args and Path(args[0]).exists()


def test_install_service_warns_about_a_checkout_under_tmp(tmp_path: Path) -> None:
    from egresswatch.cli.install import hidden_by_private_tmp

    link = tmp_path / "link"
    link.symlink_to("/var/tmp/x")
    assert hidden_by_private_tmp(
        ["/tmp/co/.venv/bin/egresswatch", "/usr/local/bin/egresswatch", "/tmpfoo/x", str(link), "/var/tmp"]
    ) == [  # fmt: skip
        "/tmp/co/.venv/bin/egresswatch",
        "/var/tmp/x",
        "/var/tmp",
    ]
