"""Capture: where frames come from.

Contract: a source yields :class:`egresswatch.model.Frame` objects (link type,
bytes, and the frame's own timestamp, the only clock downstream). Live capture
(an AF_PACKET ring behind a kernel BPF filter, so bulk traffic never reaches
Python) and pcap/pcapng files give the same frames, so replay runs the very
pipeline the daemon runs. Next stage: :mod:`egresswatch.decode`.
"""
