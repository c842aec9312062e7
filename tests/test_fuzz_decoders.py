"""A short, seeded run of every coverage-guided fuzz target of bench/fuzz_decoders.py
without atheris: the seed inputs (frames, DNS/TLS/QUIC payloads and capture files
of pcaps/ and the corpus) and bit-flipped copies of them. The targets raise on any
exception other than the entry point's documented one, so this also keeps the
harness itself from rotting."""

from __future__ import annotations

import importlib.util
import random
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[1] / "bench" / "fuzz_decoders.py"


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path]:
    spec = importlib.util.spec_from_file_location("fuzz_decoders", BENCH)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["fuzz_decoders"] = mod
    spec.loader.exec_module(mod)
    out = tmp_path_factory.mktemp("seeds")
    made = mod.seeds(out)
    assert set(made) == set(mod.TARGETS), made  # every target has seeds
    return mod, out


@pytest.mark.parametrize(
    "target", ["link", "dns", "tls", "quic", "tcpstream", "ipfrag", "pcap", "pcapng", "procfile", "engine"]
)
def test_fuzz_target_on_seeds_and_flipped_seeds(harness: tuple[ModuleType, Path], target: str) -> None:
    mod, seeds = harness
    rng = random.Random(target)
    files = sorted((seeds / target).iterdir())
    blobs = [f.read_bytes() for f in files]
    for blob in blobs[:60]:
        mod.TARGETS[target](blob)
        b = bytearray(blob)
        for _ in range(3):
            if b:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            mod.TARGETS[target](bytes(b))
    mod.TARGETS[target](b"")
