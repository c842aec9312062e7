"""The eBPF capture filter (egresswatch/ebpf/capture.bpf.c) with flow state.

The filter rules themselves run through tests/test_bpf.py's frame table with
whichever filter the kernel allows (the eBPF one here); this file checks what
the state adds: a bulk upload's continuation segments stay in the kernel
while a post-quantum ClientHello split across two segments still decodes,
and the classic filter takes over when the program cannot load.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from egresswatch.capture.filters import CLASSIC, EBPF
from egresswatch.capture.live import LiveSource
from egresswatch.decode.engine import Engine
from egresswatch.decode.link import decode
from egresswatch.ebpf import sockfilter
from egresswatch.model import Frame, IPPacket
from pcaps.make_tls_dns import client_hello, tls_record
from tests.helpers.flood import flood_daemon
from tests.helpers.netlab import Lab, missing, require_live, run, wait_for

REPO = Path(__file__).resolve().parents[1]
SNI = "pq-split.example"
SEG = 1448

DISCARD_SERVER = (
    "import socket,sys,threading\n"
    "s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n"
    "s.bind(('0.0.0.0',int(sys.argv[1])));s.listen(8);print('ready',flush=True)\n"
    "def drain(c):\n"
    "    while c.recv(1<<16): pass\n"
    "    c.close()\n"
    "while True:\n"
    "    c,_=s.accept();threading.Thread(target=drain,args=(c,),daemon=True).start()\n"
)


def test_committed_object_is_rebuilt_byte_for_byte(tmp_path: Path) -> None:
    for tool in ("clang", "llvm-strip"):
        if shutil.which(tool) is None:
            missing(f"{tool} not installed (scripts/setup.sh --test installs clang and llvm)")
    if not Path("/usr/include/bpf/bpf_helpers.h").exists():
        missing("libbpf-dev not installed")
    out = tmp_path / "capture.bpf.o"
    subprocess.run([str(REPO / "scripts" / "build-bpf.sh"), str(out), "capture.bpf.c"], check=True)
    assert out.read_bytes() == sockfilter.OBJECT.read_bytes(), (
        "capture.bpf.o is stale: run scripts/build-bpf.sh and commit"
    )


@pytest.fixture
def lab() -> Iterator[Lab]:
    with Lab() as lab:
        p = lab.spawn(sys.executable, "-c", DISCARD_SERVER, "9000", stdout=subprocess.PIPE)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield lab


def offloads(lab: Lab, on: bool) -> None:
    state = "on" if on else "off"
    run("ethtool", "-K", lab.veth_host, "tso", state, "gso", state, "gro", state)


def upload_with_split_hello(lab: Lab, src: LiveSource, seconds: float) -> tuple[list[Frame], int, int]:
    """A bulk upload for ``seconds`` and, in its middle, a 2 KB ClientHello sent
    in two writes (SNI in the second segment, as OpenSSL 4 sends it); returns the
    frames that reached Python, and the upload's and the hello's source ports."""
    record = tls_record(client_hello(SNI, pq=True, sni_last=True))
    assert 1500 < len(record) < 2100 and SNI.encode() not in record[:SEG]
    bulk = socket.create_connection((lab.peer4, 9000), timeout=10)
    bulk_port = bulk.getsockname()[1]
    stop = time.monotonic() + seconds

    def upload() -> None:
        chunk = os.urandom(1 << 16)
        while time.monotonic() < stop:
            bulk.sendall(chunk)
        bulk.close()

    sender = threading.Thread(target=upload)
    sender.start()
    frames: list[Frame] = []
    try:
        t = time.monotonic() + seconds / 2
        while time.monotonic() < t:
            frames += src.frames(0.05)
        hello = socket.create_connection((lab.peer4, 9000), timeout=5)
        hello.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        hello_port = hello.getsockname()[1]
        hello.send(record[:SEG])
        time.sleep(0.01)  # two writes, two segments
        hello.send(record[SEG:])
        while sender.is_alive():
            frames += src.frames(0.05)
        hello.close()
    finally:
        sender.join()
    frames += src.frames(0.3)
    return frames, bulk_port, hello_port


def payload_frames(frames: list[Frame], port: int) -> list[IPPacket]:
    out = []
    for f in frames:
        pkt = decode(f.linktype, f.data)
        if isinstance(pkt, IPPacket) and pkt.proto == "tcp" and pkt.sport == port and pkt.payload:
            out.append(pkt)
    return out


def continuations(frames: list[Frame], port: int) -> list[IPPacket]:
    """Payload segments of ``port`` other than those that start like a TLS
    handshake record: rule 3 passes every ``16 03`` segment by design, and the
    upload's random bytes start that way once in 65,536 segments."""
    return [p for p in payload_frames(frames, port) if not p.payload.startswith(b"\x16\x03")]


def snis(frames: list[Frame]) -> list[str | None]:
    engine = Engine()
    return [o.sni for f in frames for o in engine.feed(f) if o.kind == "tls_sni"]


@pytest.mark.live
@pytest.mark.parametrize("tso", [False, True], ids=["offloads-off", "offloads-on"])
def test_bulk_continuations_stay_in_the_kernel_and_a_split_hello_decodes(lab: Lab, tso: bool) -> None:
    offloads(lab, tso)
    with LiveSource(interfaces=[lab.veth_host]) as src:
        if src.kernel_filter is None or src.kernel_filter.mode != EBPF:
            missing(f"the eBPF capture filter did not load: {src.filter_info()}")
        frames, bulk_port, hello_port = upload_with_split_hello(lab, src, 3.0)
        stats = src.filter_info()["counters"]
        assert src.gate is None  # no userspace gate: the kernel keeps the state
    # not one segment of the upload reached Python, only its SYN
    assert continuations(frames, bulk_port) == []
    assert any((p := decode(f.linktype, f.data)) and getattr(p, "sport", 0) == bulk_port for f in frames)
    # the kernel dropped the upload's short PSH tails, and passed the hello's second segment
    assert stats["continuations_dropped"] > 0, stats
    assert stats["hello_starts"] >= 1 and stats["continuations_passed"] >= 1, stats
    hello = payload_frames(frames, hello_port)
    sizes = [len(p.payload) for p in hello]
    assert sum(sizes) >= 1500 and (tso or len(sizes) == 2), sizes
    assert SNI in snis(frames)


@pytest.mark.live
def test_classic_filter_when_the_program_cannot_load(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A kernel that refuses the object (simulated: the verifier gets garbage):
    the classic filter and the userspace gate do the same job, and say why."""
    bad = tmp_path / "capture.bpf.o"
    bad.write_bytes(b"\x7fELF" + os.urandom(200))
    monkeypatch.setattr(sockfilter, "OBJECT", bad)
    offloads(lab, False)
    with LiveSource(interfaces=[lab.veth_host]) as src:
        assert src.kernel_filter is not None and src.kernel_filter.mode == CLASSIC
        assert "BPF load refused" in src.kernel_filter.reason, src.kernel_filter.reason
        frames, bulk_port, hello_port = upload_with_split_hello(lab, src, 2.0)
        gated = src.counters["not_continuations"]
    assert continuations(frames, bulk_port) == []
    assert gated > 0  # the upload's tails reached Python and were dropped there
    assert len(payload_frames(frames, hello_port)) == 2
    assert SNI in snis(frames)


def status_text(path: Path, env: dict[str, str]) -> str | None:
    out = subprocess.run([sys.executable, "-m", "egresswatch", "status", "--status-file", str(path)],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=60)  # fmt: skip
    return out.stdout if "capture filter:" in out.stdout else None


@pytest.mark.live
@pytest.mark.parametrize("refused", [False, True], ids=["ebpf", "refused"])
def test_doctor_and_status_say_which_filter_runs(
    lab: Lab, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: bool
) -> None:
    require_live()
    if refused:
        monkeypatch.setenv("EGRESSWATCH_NO_BPF", "1")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    doctor = subprocess.run([sys.executable, "-m", "egresswatch", "doctor"], capture_output=True, text=True,
                            cwd=REPO, env=env, timeout=60)  # fmt: skip
    capture = next(line for line in doctor.stdout.splitlines() if "capture" in line)
    os.chmod(tmp_path, 0o700)
    d = flood_daemon(tmp_path, tmp_path / "events.db", lab.veth_host)
    try:
        d.start()
        status = wait_for(lambda: status_text(d.status_path, env), 30, "status naming the capture filter")
    finally:
        d.stop()
    line = next(x for x in status.splitlines() if x.startswith("capture filter:"))
    if refused:
        assert "filter: classic" in capture and "EGRESSWATCH_NO_BPF=1" in capture, capture
        assert line.startswith("capture filter: classic (") and "EGRESSWATCH_NO_BPF=1" in line, line
    else:
        assert "filter: ebpf" in capture, capture
        assert line.startswith("capture filter: ebpf (eBPF socket filter, continuations gated"), line
