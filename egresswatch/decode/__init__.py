"""Decode: frames -> observations. Pure functions of bytes: no I/O, no clock.

Contract: takes :class:`~egresswatch.model.Frame` from :mod:`egresswatch.capture`
and returns :class:`~egresswatch.model.Observation` objects (DNS query/answer,
TLS or QUIC ClientHello SNI, TCP connection attempt). Malformed input is counted,
never raised. Next stage: :mod:`egresswatch.attribute`.
"""
