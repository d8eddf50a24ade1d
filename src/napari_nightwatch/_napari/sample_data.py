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


def synthetic_store_path(size: int | None = None, seed: int = SAMPLE_SEED,
                         progress: ProgressCallback | None = None) -> Path:
    """Path of the cached synthetic painting store, building it on first use.

    The store is built in a temporary sibling folder and renamed into place only when
    complete, so an interrupted build is never mistaken for a finished one.
    """
    from ..store import PaintingStore
    from ..synth import synthesize_painting

    size = SAMPLE_SIZE if size is None else int(size)
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
    # same file name inside a private folder, so the store keeps its proper name
    tmp_dir = root / f".building-{os.getpid()}"
    shutil.rmtree(tmp_dir, ignore_errors=True)
    tmp_dir.mkdir()
    try:
        synthesize_painting(tmp_dir / path.name, size=size, seed=seed, overwrite=True, progress=progress)
        os.replace(tmp_dir / path.name, path)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return path


def synthetic_painting() -> list:
    """napari sample data "Synthetic painting with MA-XRF": mosaic, XRF total counts, element maps."""
    from .reader import store_layers

    return store_layers(synthetic_store_path())
