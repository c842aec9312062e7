"""Store: events at rest. SQLite (sqlite-utils), the queries over it, and the JSON-lines export.

Contract: a sink of :class:`~egresswatch.model.Event` (batched writes,
migrations, retention, permissions that the watched users cannot change), and
the read side (``egresswatch events``, ``stats``, the web view).
"""
