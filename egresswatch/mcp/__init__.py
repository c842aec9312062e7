"""MCP: what an MCP server is. Host config discovery, config formats, launchers, launch matching.

Contract: reads the hosts' configuration files (Claude, Cursor, VS Code,
Windsurf, Gemini CLI, Codex ...) into :class:`~egresswatch.mcp.formats.ServerDef`
definitions, and matches a process command line to a server launch. No
network, no process state: :mod:`egresswatch.attribute` and
:mod:`egresswatch.audit` build on it.
"""
