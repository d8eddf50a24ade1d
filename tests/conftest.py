"""Shared fixtures. Real data are read in place from ../shared/data (never copied)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# keep BLAS/torch from oversubscribing the 2 cores of CI machines
os.environ.setdefault("OMP_NUM_THREADS", "2")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared real-data folder; tests that need it skip where it is absent."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it lives beside the project as ../shared/data)")
    return SHARED_DATA


def shared_file(rel: str) -> Path:
    """Path of one shared data file, skipping the test where it is absent."""
    p = SHARED_DATA / rel
    if not p.exists():
        pytest.skip(f"real data file {p} is absent")
    return p
