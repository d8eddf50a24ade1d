"""Shared fixtures. Real data are read in place from ../shared/data (never copied)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

# keep BLAS/torch from oversubscribing the 2 cores of CI machines
os.environ.setdefault("OMP_NUM_THREADS", "2")

# GUI tests load Mesa's libLLVM (llvmpipe OpenGL under Xvfb); importing triton (pulled in by
# torch/open_clip) after that segfaults the whole run. Nothing here uses triton, so hide it
# (napari_nightwatch._napari._compat.avoid_llvm_clash does the same inside napari).
import sys  # noqa: E402

sys.modules.setdefault("triton", None)

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


# ---------------------------------------------------------------- synthetic painting (issue 2, item 7)
@pytest.fixture(scope="session")
def synthetic_store_factory(tmp_path_factory):
    """``make(size=512, seed=0, **kwargs)`` -> a synthetic painting store, opened read-only.

    Each (size, seed, kwargs) is built once per test session (512 px takes a few seconds)
    and shared; tests that write into a store use ``synthetic_store_rw`` or copy it.
    """
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.synth import synthesize_painting

    built: dict = {}

    def make(size: int = 512, seed: int = 0, **kwargs):
        key = (int(size), int(seed), tuple(sorted(kwargs.items())))
        if key not in built:
            path = tmp_path_factory.mktemp("synth") / f"synthetic-{size}-{seed}.nightwatch.zarr"
            synthesize_painting(path, size=size, seed=seed, **kwargs)
            built[key] = path
        return PaintingStore.open(built[key], mode="r")

    return make


@pytest.fixture(scope="session")
def synthetic_store(synthetic_store_factory):
    """The shared synthetic painting (512 x 512 px mosaic, 64 x 64 x 1024 XRF cube, seed 0), read-only."""
    return synthetic_store_factory(512, 0)


@pytest.fixture
def synthetic_store_rw(synthetic_store, tmp_path):
    """A private, writable copy of ``synthetic_store`` (for tests that add parts to it)."""

    from napari_nightwatch.store import PaintingStore

    dst = tmp_path / synthetic_store.path.name
    shutil.copytree(synthetic_store.path, dst)
    return PaintingStore.open(dst, mode="r+")


@pytest.fixture
def store_copy(prepared, tmp_path):
    """A private copy of the requesting module's ``prepared`` painting (path, ground truth), for tests that write to it."""
    path = tmp_path / "p.nightwatch.zarr"
    shutil.copytree(prepared[0], path)
    return path, prepared[1]
