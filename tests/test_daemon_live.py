"""The real daemon (`python -m egresswatch run`, as root) under the faults of
issue #18: a second instance, SIGTERM right after a burst, kernel drops, a
full disk, a deleted or replaced database. Readiness comes from READY=1 on a
test-owned NOTIFY_SOCKET; every wait polls with a deadline.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.daemonrun import Daemon, base_config, query
from tests.helpers.netlab import Lab, require_live, run, wait_for

pytestmark = pytest.mark.live


SENDER = """
import socket, struct, sys
prefix, count, suffix, dst = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(count):
    name = f"{prefix}{i}.{suffix}"
    labels = b"".join(bytes([len(p)]) + p.encode() for p in name.split("."))
    s.sendto(struct.pack("!HHHHHH", i & 0xFFFF, 0x0100, 1, 0, 0, 0) + labels + bytes([0, 0, 1, 0, 1]), (dst, 53))
"""


def send_queries(lab: Lab, prefix: str, count: int, suffix: str) -> None:
    """``count`` UDP DNS queries ``<prefix><i>.<suffix>`` from a process in the
    lab namespace to the host side of its veth, fire and forget (nothing needs
    to answer: the daemon sees the query)."""
    lab.nsrun(sys.executable, "-c", SENDER, prefix, str(count), suffix, lab.host4)


def qnames(db: Path, like: str) -> set[str]:
    sql = "SELECT DISTINCT qname FROM events WHERE kind = 'dns_query' AND qname LIKE ?"
    return {r["qname"] for r in query(db, sql, (like,))}


class LabDaemon(Daemon):
    """`egresswatch run` with a config of its own in ``tmp`` (root-only), in
    the lab's network namespace: it sees the test's traffic and nothing of
    the other tests running on the machine. Launched at once; :meth:`ready`
    waits for READY=1 and the first status file."""

    def __init__(
        self,
        lab: Lab,
        tmp: Path,
        name: str = "d",
        extra: str = "",
        args: tuple[str, ...] = (),
        status: Path | None = None,
    ) -> None:
        config = base_config(tmp, tmp / "events.db", daemon=extra)
        super().__init__(tmp, config, name=name, args=args, netns=lab.ns, status=status)
        self.launch()

    def ready(self, timeout: float = 60) -> LabDaemon:
        super().ready(timeout)
        wait_for(self.status_path.exists, 10, "the first status file")
        return self

    def stop(self, timeout: float = 40) -> int:
        try:
            return super().stop(timeout)
        finally:
            self.close()

    def show(self) -> tuple[int, dict[str, Any], str]:
        text, js = self.show_status(), self.show_status("--json")
        return text.returncode, json.loads(js.stdout) if js.stdout.strip() else {}, text.stdout

    def unhealthy_with(self, words: str, timeout: float = 20) -> str:
        def check() -> str | None:
            code, _, out = self.show()
            return out if code == 1 and words in out else None

        try:
            return str(wait_for(check, timeout, f"status NOT HEALTHY with {words!r}"))
        except AssertionError:
            raise AssertionError(f"status: {self.show()[2]}") from None


@pytest.fixture
def private(tmp_path: Path) -> Path:
    require_live()
    d = tmp_path / "ew"
    d.mkdir(mode=0o700)
    os.chmod(tmp_path, 0o700)
    return d


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        yield lab


def test_second_daemon_on_the_same_database_or_status_file_is_refused(private: Path, lab: Lab) -> None:
    first = LabDaemon(lab, private, "a").ready()
    others: list[LabDaemon] = []
    try:
        # the same database, another status file; then the same status file, another database
        others.append(LabDaemon(lab, private, "b"))
        others.append(
            LabDaemon(
                lab, private, "c", args=("--db", str(private / "new" / "other.db")), status=first.status_path
            )
        )
        for other in others:
            try:
                code = other.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"a second daemon kept running next to pid {first.pid}") from None
            err = other.log_path.read_text().strip().splitlines()
            assert code == 1 and len(err) == 1, err
            assert err[0].startswith("egresswatch: error: ") and f"egresswatch pid {first.pid}" in err[0], err
        lock = Path(f"{first.db}.lock")
        st = lock.stat()
        assert (st.st_uid, st.st_mode & 0o777) == (0, 0o600)  # no watched user can open it to hold it
        assert lock.read_text().strip() == str(first.pid)
        assert first.proc.poll() is None
    finally:
        for other in others:
            other.close()
        assert first.stop() == 0


def test_sigterm_right_after_a_burst_stores_all_of_it(private: Path, lab: Lab) -> None:
    daemon = LabDaemon(lab, private).ready()
    steady = "import socket,time\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\nwhile True:\n"
    steady += f" s.sendto(b'steady', ('{lab.host4}', 53)); time.sleep(0.1)"
    lab.spawn(sys.executable, "-c", steady)  # traffic that goes on after the signal
    try:
        send_queries(lab, "q", 5000, "burst.test")
        daemon.proc.send_signal(signal.SIGTERM)  # at once: the ring still holds the burst
        assert daemon.proc.wait(timeout=40) == 0
    finally:
        daemon.close()
    stored = qnames(daemon.db, "%.burst.test")
    final = json.loads(daemon.status_path.read_text())["counters"]
    lost = 5000 - len(stored)
    assert lost == 0, f"{lost} of 5000 queries lost at SIGTERM (kernel drops {final['kernel_drops']})"
    # drained up to the signal, not for as long as traffic goes on (then it would be a WARNING)
    assert "INFO egresswatch.service: stopping: " in daemon.log_path.read_text()


def test_status_fails_while_the_kernel_drops_packets(private: Path, lab: Lab) -> None:
    daemon = LabDaemon(lab, private, extra="capture_buffer_mb = 4").ready()
    try:
        code, data, out = daemon.show()
        assert code == 0 and not data.get("problems"), out
        for key in ("events_dropped", "alerts_dropped", "alerts_suppressed", "kernel_drops", "store_errors"):
            assert f"  {key}: " in out  # every loss counter is shown
        os.kill(daemon.pid, signal.SIGSTOP)  # the daemon cannot read: the 4 MiB ring overflows
        try:
            send_queries(lab, "d", 60_000, "drop.test")
        finally:
            os.kill(daemon.pid, signal.SIGCONT)
        out = daemon.unhealthy_with("the kernel dropped")
        assert "problem: the kernel dropped" in out
        assert daemon.show()[1]["counters"]["kernel_drops"] > 0
        assert daemon.log_path.read_text().count("unhealthy: the kernel dropped") == 1  # once, not per drop
    finally:
        assert daemon.stop() == 0


def test_status_fails_when_the_disk_is_full(private: Path, lab: Lab) -> None:
    mnt = private / "small"
    mnt.mkdir(mode=0o700)
    run("mount", "-t", "tmpfs", "-o", "size=32m,mode=0700", "tmpfs", str(mnt))
    try:
        daemon = LabDaemon(lab, private, "full", args=("--db", str(mnt / "events.db"))).ready()
        try:
            send_queries(lab, "a", 10, "before.test")
            wait_for(lambda: len(qnames(mnt / "events.db", "%.before.test")) == 10, 20, "events stored")
            assert daemon.show()[0] == 0
            with open(mnt / "filler", "wb") as fh:  # fill the file system
                try:
                    while True:
                        fh.write(b"\0" * 65536)
                        fh.flush()
                except OSError:
                    pass
            send_queries(lab, "b", 3000, f"{'x' * 50}.full.test")
            out = daemon.unhealthy_with("cannot write events")
            assert "full" in out, out
            (mnt / "filler").unlink()  # space again: the held rows are written
            wait_for(lambda: len(qnames(mnt / "events.db", "%.full.test")) == 3000, 30, "held rows written")
            wait_for(lambda: "cannot write events" not in daemon.show()[2], 10, "store problem cleared")
        finally:
            daemon.stop()
    finally:
        run("umount", "-l", str(mnt), check=False)


def test_status_fails_when_the_database_is_deleted_or_replaced(private: Path, lab: Lab) -> None:
    daemon = LabDaemon(lab, private).ready()
    victim = private / "victim"
    victim.write_text("precious\n")
    os.chmod(victim, 0o600)
    try:
        send_queries(lab, "one", 1, "before.test")
        wait_for(lambda: qnames(daemon.db, "%.before.test"), 20, "first event stored")
        assert daemon.show()[0] == 0
        daemon.db.unlink()  # every later event went into the deleted file
        send_queries(lab, "two", 1, "after.test")
        wait_for(lambda: qnames(daemon.db, "%.after.test"), 20, "events in a new database file")
        out = daemon.unhealthy_with("was deleted")
        assert daemon.show()[1]["counters"]["db_file_lost"] == 1, out
        # a symlink where the database was: never followed
        daemon.db.unlink()
        daemon.db.symlink_to(victim)
        send_queries(lab, "three", 1, "link.test")
        daemon.unhealthy_with("symbolic link")
        assert victim.read_text() == "precious\n" and victim.stat().st_mode & 0o777 == 0o600
        log = daemon.log_path.read_text()
        assert log.count("ERROR egresswatch.store.db: database") == 2, log  # once per incident, not per batch
        daemon.db.unlink()  # the admin removes it: a new database, the held event lands there
        wait_for(lambda: qnames(daemon.db, "%.link.test"), 20, "held event in the new database")
    finally:
        assert daemon.stop() == 0
