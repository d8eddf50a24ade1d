"""Streaming a lazy dask array into a zarr array in one pass, with progress and cancel.

Slicing a dask array region by region recomputes every source chunk a region
touches, once per region: a Bruker ``.bcf`` read lazily is a single dask chunk, so a
per-region loop would decode the whole file once per region. :func:`store_dask` instead
rechunks to the target's chunks and runs one ``dask.array.store`` graph, in which each
source chunk is computed once and released after its pieces are written.
"""

from __future__ import annotations

from typing import Any

from ..core.progress import ProgressCallback, report


def is_dask(array: Any) -> bool:
    """Whether ``array`` is a dask array (without importing dask for numpy inputs)."""
    import sys

    da = sys.modules.get("dask.array")
    return da is not None and isinstance(array, da.Array)


def store_dask(array, target, *, progress: ProgressCallback | None = None, stage: str = "writing") -> None:
    """Write dask ``array`` into zarr ``target`` (same shape) in one graph.

    Parameters
    ----------
    array
        A dask array; rechunked to ``target.chunks`` so every write is a whole chunk.
    target
        A zarr array of the same shape.
    progress
        ``progress(done, total, stage)`` per finished task; an exception it raises
        (e.g. :class:`~napari_nightwatch.core.errors.Cancelled`) stops the computation.
    stage
        Stage name passed to ``progress``.
    """
    import dask.array as da
    from dask.callbacks import Callback

    src = array.rechunk(target.chunks)
    state_box: dict[str, int] = {"done": 0, "total": 0}

    def start_state(dsk, state) -> None:
        state_box["total"] = sum(len(state[k]) for k in ("ready", "waiting", "running")) + len(state["finished"])
        report(progress, 0, state_box["total"], stage)

    def posttask(key, result, dsk, state, worker_id) -> None:
        state_box["done"] += 1
        report(progress, state_box["done"], state_box["total"], stage)

    with Callback(start_state=start_state, posttask=posttask):
        da.store(src, target, lock=False, compute=True)
