"""Sample data: the synthetic painting with its MA-XRF cube, built once into the user cache."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..core.progress import ProgressCallback

SAMPLE_SIZE = 1024
SAMPLE_SEED = 0


def cache_dir() -> Path:
    """Where built sample data live (``NAPARI_NIGHTWATCH_CACHE_DIR`` overrides the user cache)."""
    env = os.environ.get("NAPARI_NIGHTWATCH_CACHE_DIR")
    if env:
        return Path(env)
    try:
        from platformdirs import user_cache_dir

        return Path(user_cache_dir("napari-nightwatch"))
    except ImportError:  # platformdirs comes with napari; fall back for bare installs
        return Path.home() / ".cache" / "napari-nightwatch"


def synthetic_store_path(size: int = SAMPLE_SIZE, seed: int = SAMPLE_SEED, progress: ProgressCallback | None = None) -> Path:
    """Path of the cached synthetic painting store, building it on first use.

    The store is built in a temporary sibling folder and renamed into place only when
    complete, so an interrupted build is never mistaken for a finished one.
    """
    from ..project import PaintingStore
    from ..synth import synthesize_painting

    root = cache_dir()
    path = root / f"synthetic-{size}-seed{seed}.nightwatch.zarr"
    if path.exists():
        try:
            store = PaintingStore.open(path)
            if store.has_mosaic and store.has_xrf:
                return path
        except Exception:  # unreadable leftovers are rebuilt below
            pass
        shutil.rmtree(path, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".building-{os.getpid()}-{path.name}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        synthesize_painting(tmp, size=size, seed=seed, overwrite=True, progress=progress)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def synthetic_painting() -> list:
    """napari sample data "Synthetic painting with MA-XRF": mosaic, XRF total counts, element maps."""
    from .reader import store_layers

    return store_layers(synthetic_store_path())
