"""Audit: risky MCP server definitions found before they run (``egresswatch audit``).

Contract: takes what :mod:`egresswatch.mcp` discovered (server definitions,
config files, discovery warnings) and returns findings, most severe first
(:func:`egresswatch.audit.scan.audit`): secrets in env, headers, arguments or
URLs, unpinned package runners and images, lookalike names, privileged
containers, config files others can change or that could not be read. Every
text is redacted. No network, no capture, nothing launched.
"""
