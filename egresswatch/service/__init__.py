"""Service: the live daemon's lifecycle (``egresswatch run``).

Contract: builds the pipeline from the stages (capture -> decode -> attribute ->
judge -> store/alert), runs it in the foreground under systemd (``Type=notify``,
sd_notify, watchdog), reloads on SIGHUP, stores everything on SIGTERM, and
writes the status file that ``status`` and ``doctor`` read.
"""
