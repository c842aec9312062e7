"""Monitor DoS (#17), the whole daemon on the fallback path (every SYN looked
up in userspace, EGRESSWATCH_NO_BPF=1): a watched server run by a real
unprivileged account opens 3,000 TCP connections at once and keeps each, with
half a ClientHello sent. Every flow is attributed to it, the kernel drops no
packet, and the daemon's CPU stays far below one listing of the holder's fds
per SYN (what cost 18 s at 97% CPU for 10,000 sockets before #17). The
10,000-socket figures, both paths: bench/monitor_dos_bench.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.dosrun import run_dos
from tests.helpers.hostiled import tmp700

pytestmark = pytest.mark.live
SOCKETS = 3000


def test_a_holder_of_thousands_of_sockets_neither_blinds_nor_burns_the_daemon(tmp_path: Path) -> None:
    r = run_dos(tmp700(tmp_path), SOCKETS, fallback=True)
    assert r["flows_stored"] == SOCKETS, r
    assert r["flows_attributed"] == SOCKETS, r
    assert r["kernel_drops"] == 0, r
    assert r["holder_sockets_listed"] >= SOCKETS, r
    # a listing per SYN would cost about SOCKETS x (half a full listing); the
    # daemon stays under a quarter of that (measured: ~0.3 ms per flow, all in)
    assert r["daemon_cpu_s"] < SOCKETS * r["one_listing_cpu_s"] / 4, r
