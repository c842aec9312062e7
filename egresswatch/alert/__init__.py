"""Alert: which flagged events reach a person, and how (apprise, desktop notifier).

Contract: a sink of judged :class:`~egresswatch.model.Event` objects from
:mod:`egresswatch.judge`. Keys, a per-server budget and digests decide what is
sent; delivery never blocks capture and failures are counted, not raised.
Every alert, digest and delivery result is recorded in the store's alerts
table (:mod:`egresswatch.store`), which the desktop notifier follows.
"""
