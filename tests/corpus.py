"""Locating ../shared/corpus (beside the repository root)."""

from __future__ import annotations

import os
from pathlib import Path

from tests.helpers.netlab import missing

REPO = Path(__file__).resolve().parents[1]
CORPUS = Path(os.environ.get("EGRESSWATCH_CORPUS", REPO.parent / "shared" / "corpus"))


def corpus_dir() -> Path:
    """The corpus folder; skips cleanly where it is absent (fails in CI)."""
    if not CORPUS.is_dir():
        missing(f"corpus not found at {CORPUS}")
    return CORPUS
