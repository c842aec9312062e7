"""`egresswatch ui`: a local, read-only web view of the event database.

- :mod:`egresswatch.ui.queries`: the page questions over a read-only Store
  (no web code; reuses :mod:`egresswatch.store.query`, :mod:`egresswatch.store.stats`
  and :mod:`egresswatch.judge.allowlist`);
- :mod:`egresswatch.ui.params`: URL parameters -> the `egresswatch events` filters;
- :mod:`egresswatch.ui.charts`: SVG charts (pygal, the only module that imports it);
- :mod:`egresswatch.ui.procs`: the MCP servers' live process trees (read of /proc);
- :mod:`egresswatch.ui.app`: the Starlette application and its Jinja2 templates;
- :mod:`egresswatch.ui.serve`: uvicorn on 127.0.0.1.

Needs the optional extra: ``pip install 'egresswatch[ui]'``. See docs/ui.md.
"""
