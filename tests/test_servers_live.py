"""`egresswatch servers` shows the process trees running from each discovered
server, with real processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from egresswatch.attribute.listings import host_project_dirs
from egresswatch.cli.main import cli
from tests.helpers.netlab import wait_for


def test_servers_shows_live_process_tree(tmp_path: Path) -> None:
    server = tmp_path / "fake_mcp_server.py"
    server.write_text(
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(30)'])\n"
        "print('ready', flush=True)\n"
        "time.sleep(30)\n"
    )
    home = tmp_path / "home"
    (home / ".cursor").mkdir(parents=True)
    (home / ".cursor" / "mcp.json").write_text(
        json.dumps({"mcpServers": {"fake-live": {"command": sys.executable, "args": [str(server)]}}})
    )
    proc = subprocess.Popen([sys.executable, str(server)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        result = CliRunner().invoke(cli, ["servers", "--home", str(home), "--format", "json"])
        assert result.exit_code == 0, result.output
        rows = json.loads(result.stdout)
        assert [r["name"] for r in rows] == ["fake-live"]
        tree = rows[0]["processes"]
        assert f"{proc.pid} " in tree  # the server itself
        lines = tree.splitlines()
        assert len(lines) == 2 and "time.sleep(30)" in lines[1]  # and its child, indented
        table = CliRunner().invoke(cli, ["servers", "--home", str(home)])
        assert str(proc.pid) in table.stdout
        quiet = CliRunner().invoke(cli, ["servers", "--home", str(home), "--no-live", "--format", "json"])
        assert "processes" not in json.loads(quiet.stdout)[0]
    finally:
        proc.kill()
        proc.wait()


def test_host_project_dirs_finds_a_running_host(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    project.mkdir()
    # a process named like an MCP host (argv[0] "cursor") working in the project
    host = subprocess.Popen(["bash", "-c", "exec -a cursor sleep 30"], cwd=project)
    try:
        wait_for(lambda: project in host_project_dirs(), 5, "host working directory")
    finally:
        host.kill()
        host.wait()
