"""Audit: risky MCP server definitions found before they run (``egresswatch audit``).

Contract: takes the definitions :mod:`egresswatch.mcp` discovered and returns
findings (unpinned package runners, secrets in env, lookalike names ...). No
network, no capture.
"""
