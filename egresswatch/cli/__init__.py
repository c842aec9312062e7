"""Command line: one click group (:mod:`egresswatch.cli.main`), one module per command group, and output rendering.

Contract: the top of the tree. Turns arguments into calls of
:mod:`egresswatch.service` and the stages, and their results into tables,
JSON, JSON lines or CSV with control characters neutralised. User errors are
one line and a non-zero exit, never a traceback.
"""
