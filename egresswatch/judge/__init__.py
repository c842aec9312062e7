"""Judge: an attributed observation -> a verdict. Pure: frame time only, no I/O.

Contract: takes an observation with its attribution from
:mod:`egresswatch.attribute`, remembers which names each owner resolved
(name memory), checks the per-server allowlist and the detectors (not
allowlisted, direct IP, DNS-exfiltration shape, first seen) and settles one
verdict per flow. Produces the :class:`~egresswatch.model.Event` that
:mod:`egresswatch.store` keeps and :mod:`egresswatch.alert` may send. Also the
allowlist tooling (suggestions from events, catalog imports).
"""
