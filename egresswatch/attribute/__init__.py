"""Attribute: observation -> the process that sent it, and the MCP server it descends from.

Contract: an attributor (:class:`egresswatch.stages.Attributor`) takes an
observation and its frame and returns an :class:`~egresswatch.model.Attribution`
(process identity (pid, create_time), its server, its phase). Live: the kernel's
send-time record (eBPF) first, then sock_diag, /proc and process-event lineage.
Replay: recorded lookups and ptcpdump comments. What an MCP launch looks like
comes from :mod:`egresswatch.mcp`. Next stage: :mod:`egresswatch.judge`.
"""
