"""Service: the live daemon's lifecycle (``egresswatch run``).

Contract: the layer over the pipeline. Refuses config, database and output
files that users other than root could change (:mod:`~egresswatch.service.trust`),
builds the stages (capture -> decode -> attribute -> judge -> store/alert) and the
one pipeline (:mod:`~egresswatch.service.assemble`), feeds it on the main
thread in the foreground under systemd (``Type=notify``, sd_notify, watchdog),
reloads on SIGHUP, drains the capture ring and stores everything on SIGTERM,
and writes the status file (:mod:`~egresswatch.service.status`) that
``status``, ``doctor`` and ``ui`` read. Everything it logs goes to the
``egresswatch.service`` logger. Above it: :mod:`egresswatch.cli`.
"""
