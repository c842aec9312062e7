"""A fake MCP host: launches every server of a Cursor-style mcp.json and waits."""

from __future__ import annotations

import json
import subprocess
import sys

cfg = json.load(open(sys.argv[1]))
procs = [subprocess.Popen([s["command"], *s.get("args", [])]) for s in cfg["mcpServers"].values()]
for p in procs:
    p.wait()
