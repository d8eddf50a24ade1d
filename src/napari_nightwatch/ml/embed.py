"""The tile-embedding pipeline: tile grids, read -> preprocess -> embed -> write, resumable.

Store layout (shared with :mod:`napari_nightwatch.search`)::

    grids/<grid_id>/                 attrs["nightwatch"] = {grid: TileGrid.to_attrs(), n_tiles, n_kept,
                                     mask: {rule, params}, pixel_size_um}
       keep                          (n_tiles,) bool  False = background/empty tile, never embedded
       embeddings/<model_id>/        attrs["nightwatch"] = {signature, dim, chunk_tiles, timings, ...}
          vectors                    (n_tiles, dim) float16, L2-normalised rows, chunks (chunk_tiles, dim);
                                     rows of skipped tiles stay 0
          done                       (n_chunks,) bool: chunk i covers tiles [i*chunk_tiles, (i+1)*chunk_tiles)

How a run goes (:func:`embed_store`): the chunks not yet done are read by
``num_workers`` background threads, one region read per row-segment of tiles,
preprocessed there as batched tensor ops, and handed through a bounded queue to the
model on the calling thread; a writer thread writes each finished chunk of vectors
and then its done flag. A killed or cancelled run therefore resumes exactly where it
stopped. With a dask.distributed ``client`` the pending chunks are spread over the
workers in blocks; each worker process builds the model once (from the engine's
spec) and writes its own chunks, and the driver marks them done.
"""

from __future__ import annotations

import math
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ..core.cluster import connect, task_batches
from ..core.errors import Cancelled, NightwatchError
from ..core.jsonutil import jsonable
from ..core.progress import ProgressCallback, StageTimer, report
from ..core.signature import mismatch as signature_mismatch
from ..core.tiling import TileGrid
from ..store import PaintingStore, layout
from ..store.embeddings import embedding_signature
from ..store.painting import open_worker_store
from ..store.tiles import load_grid, make_grid
from .clip import cached_engine

#: default tiles per stored chunk of vectors (and per unit of resumable work)
DEFAULT_CHUNK_TILES = 256


def _to_8bit(block: np.ndarray) -> np.ndarray:
    """(..., c) pixels as uint8 RGB (grey repeated, alpha dropped, 16-bit scaled)."""
    if block.dtype == np.uint16:
        block = (block // 257).astype(np.uint8)
    elif block.dtype != np.uint8:
        block = np.clip(block, 0, 255).astype(np.uint8)
    c = block.shape[-1]
    if c == 1:
        return np.repeat(block, 3, axis=-1)
    if c == 2:  # grey + alpha
        return np.repeat(block[..., :1], 3, axis=-1)
    return block[..., :3]


# ---------------------------------------------------------------------------- pipeline
def tile_reader(store: PaintingStore, grid: TileGrid) -> Callable[[np.ndarray], np.ndarray]:
    """A function: tile indices -> uint8 (n, tile, tile, 3), one region read per row-segment."""
    return _window_reader(store, grid, 1, pad_mode="constant")


def context_reader(store: PaintingStore, grid: TileGrid, scale: int) -> Callable[[np.ndarray], np.ndarray]:
    """A function: tile indices -> uint8 (n, tile, tile, 3), each the ``scale`` x ``scale``
    tiles' window centred on the tile, averaged down to one tile's size (a tile's
    surroundings at ``scale`` times its pixel size; edges replicated beyond the mosaic).

    Parameters
    ----------
    store, grid
        As for :func:`tile_reader`.
    scale
        Odd window size in tiles (3: the tile and its 8 neighbours).
    """
    if scale < 1 or scale % 2 == 0:
        raise NightwatchError(f"The context scale must be an odd number of tiles; got {scale}.")
    return _window_reader(store, grid, scale, pad_mode="edge")


def context_vectors(emb, tiles: np.ndarray, radii: Sequence[int]) -> np.ndarray:
    """Mean image embedding of each tile's neighbourhoods on the grid, one per radius.

    Parameters
    ----------
    emb
        :class:`~napari_nightwatch.store.embeddings.Embeddings` of a grid.
    tiles
        Tile indices (each embedded).
    radii
        A window is the ``(2 radius + 1)``-tile square of grid positions centred on the
        tile; positions beyond the grid, masked or not embedded are left out of the mean.
        The neighbours' vectors are read once, for the largest radius.

    Returns
    -------
    numpy.ndarray
        ``(len(tiles), dim * len(radii))`` float64, the radii side by side (summed in
        float64: the same numbers whatever the order tiles come in, so a chunked
        prediction equals a whole one).
    """
    grid = emb.grid
    tiles = np.asarray(tiles, np.int64)
    radii = [int(r) for r in radii]
    if tiles.size == 0 or not radii:
        return np.zeros((tiles.size, emb.dim * len(radii)), np.float64)
    r, c = grid.row_col(tiles)
    big = max(radii)
    off = np.arange(-big, big + 1)
    dy, dx = (a.ravel() for a in np.meshgrid(off, off, indexing="ij"))
    rr, cc = r[:, None] + dy[None], c[:, None] + dx[None]
    inside = (rr >= 0) & (rr < grid.n_rows) & (cc >= 0) & (cc < grid.n_cols)
    nb = np.where(inside, rr * grid.n_cols + cc, 0)
    avail = np.zeros(grid.n_tiles, bool)
    avail[emb.available] = True
    ok = inside & avail[nb]
    need = np.unique(nb[ok])
    vec = emb.read(need).astype(np.float64)
    pos = np.searchsorted(need, nb)
    out = []
    for radius in radii:
        within = (np.abs(dy) <= radius) & (np.abs(dx) <= radius)
        acc = np.zeros((tiles.size, emb.dim), np.float64)
        for j in np.flatnonzero(within):  # one window position at a time: fixed summation order
            sel = ok[:, j]
            acc[sel] += vec[pos[sel, j]]
        out.append(acc / np.maximum(ok[:, within].sum(1), 1)[:, None])
    return np.concatenate(out, axis=1)


def _window_reader(store: PaintingStore, grid: TileGrid, scale: int, pad_mode: str):
    """Windows of ``scale`` x ``scale`` tiles centred on tiles, averaged down to one tile,
    one region read per row-segment; beyond the level: zeros (``"constant"``) or the edge
    replicated (``"edge"``)."""
    arr = store.mosaic_levels()[grid.level]
    lh, lw = int(arr.shape[0]), int(arr.shape[1])
    t, s = grid.tile, grid.stride
    m = (scale - 1) // 2 * t

    def read(index: np.ndarray) -> np.ndarray:
        out = np.zeros((len(index), t, t, 3), np.uint8)
        if len(index) == 0:
            return out
        rows, cols = grid.row_col(index)
        for r in np.unique(rows):
            sel = np.flatnonzero(rows == r)
            c = cols[sel]
            y0, x0 = int(r) * s - m, int(c.min()) * s - m
            y1, x1 = int(r) * s + t + m, int(c.max()) * s + t + m
            cy0, cx0, cy1, cx1 = max(y0, 0), max(x0, 0), min(y1, lh), min(x1, lw)
            block = _to_8bit(np.asarray(arr[cy0:cy1, cx0:cx1].compute(scheduler="synchronous")))
            if block.shape[:2] != (y1 - y0, x1 - x0):  # beyond the level (or a level smaller than the grid expects)
                block = np.pad(block, ((cy0 - y0, y1 - cy1), (cx0 - x0, x1 - cx1), (0, 0)), mode=pad_mode)
            for j, cc in zip(sel, c, strict=True):
                ox = int(cc) * s - m - x0
                win = block[:, ox : ox + scale * t]
                if scale == 1:
                    out[j] = win
                else:
                    win = win.astype(np.float32).reshape(t, scale, t, scale, 3).mean(axis=(1, 3))
                    out[j] = np.round(win).astype(np.uint8)
        return out

    return read


def _plan(grid: TileGrid, chunk_ids: Sequence[int], chunk_tiles: int) -> list[tuple[int, int, np.ndarray]]:
    """(chunk id, number of rows in the chunk, kept offsets within the chunk) per chunk."""
    keep = np.ones(grid.n_tiles, bool) if grid.keep is None else np.asarray(grid.keep, bool)
    plan = []
    for cid in chunk_ids:
        a, b = int(cid) * chunk_tiles, min((int(cid) + 1) * chunk_tiles, grid.n_tiles)
        plan.append((int(cid), b - a, np.flatnonzero(keep[a:b])))
    return plan


class _Timer(StageTimer):
    """A StageTimer that background threads may add to."""

    def __init__(self) -> None:
        super().__init__()
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            super().add(name, seconds)


def _embed_chunks(
    read_tiles: Callable[[np.ndarray], np.ndarray],
    engine,
    plan: list[tuple[int, int, np.ndarray]],
    chunk_tiles: int,
    *,
    batch_size: int,
    num_workers: int,
    write_chunk: Callable[[int, np.ndarray], None],
    on_written: Callable[[int], None],
    timer: _Timer,
) -> int:
    """Run the overlapped pipeline over ``plan``; returns the number of tiles embedded.

    Reader threads read and preprocess; the calling thread runs the model (so a GPU or
    torch's own thread pool sees one caller); a writer thread writes finished chunks.
    ``on_written(chunk_id)`` runs on the calling thread and may raise (Cancelled).
    """
    dim = int(engine.dim)
    num_workers = max(1, int(num_workers))
    # bounded: at most ~2 batches per reader wait, so memory does not grow with the mosaic
    work: queue.Queue = queue.Queue(maxsize=2 * num_workers)
    writes: queue.Queue = queue.Queue(maxsize=4)
    written: queue.Queue = queue.Queue()
    stop = threading.Event()
    errors: list[BaseException] = []
    plan_iter = iter(plan)
    plan_lock = threading.Lock()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                work.put(item, timeout=0.05)
                return True
            except queue.Full:
                continue
        return False

    def reader() -> None:
        try:
            while not stop.is_set():
                with plan_lock:
                    step = next(plan_iter, None)
                if step is None:
                    break
                cid, n_rows, offsets = step
                if len(offsets) == 0:
                    if not put(("batch", cid, n_rows, offsets, 1, None)):
                        return
                    continue
                t0 = time.perf_counter()
                tiles = read_tiles(cid * chunk_tiles + offsets)
                timer.add("read", time.perf_counter() - t0)
                nb = math.ceil(len(offsets) / batch_size)
                for b in range(nb):
                    t0 = time.perf_counter()
                    x = engine.preprocess(tiles[b * batch_size : (b + 1) * batch_size])
                    timer.add("preprocess", time.perf_counter() - t0)
                    if not put(("batch", cid, n_rows, offsets[b * batch_size : (b + 1) * batch_size], nb, x)):
                        return
        except BaseException as exc:  # handed to the calling thread
            errors.append(exc)
            stop.set()
        finally:
            put(("reader_done",))

    def writer() -> None:
        while True:
            item = writes.get()
            if item is None:
                return
            if errors:
                continue  # drain without writing once something failed
            cid, rows = item
            try:
                t0 = time.perf_counter()
                write_chunk(cid, rows)
                timer.add("write", time.perf_counter() - t0)
                written.put(cid)
            except BaseException as exc:
                errors.append(exc)
                stop.set()

    def drain_written(call: bool) -> None:
        while True:
            try:
                cid = written.get_nowait()
            except queue.Empty:
                return
            if call:
                on_written(cid)

    readers = [threading.Thread(target=reader, name=f"nightwatch-read-{i}", daemon=True) for i in range(num_workers)]
    wthread = threading.Thread(target=writer, name="nightwatch-write", daemon=True)
    for th in readers:
        th.start()
    wthread.start()
    pending: dict[int, list] = {}
    n_tiles = 0
    finished_readers = 0
    ok = False
    try:
        while finished_readers < num_workers:
            if errors:
                raise errors[0]
            t0 = time.perf_counter()
            try:
                item = work.get(timeout=0.05)
            except queue.Empty:
                timer.add("model_idle", time.perf_counter() - t0)
                drain_written(True)
                continue
            timer.add("model_idle", time.perf_counter() - t0)
            if item[0] == "reader_done":
                finished_readers += 1
                continue
            _, cid, n_rows, offs, nb, x = item
            slot = pending.setdefault(cid, [np.zeros((n_rows, dim), np.float16), 0])
            if x is not None:
                t0 = time.perf_counter()
                emb = engine.encode_preprocessed(x)
                timer.add("model", time.perf_counter() - t0)
                slot[0][offs] = emb.astype(np.float16)
                n_tiles += len(offs)
            slot[1] += 1
            if slot[1] == nb:
                del pending[cid]
                while True:  # bounded hand-off that notices a dead writer
                    if errors:
                        raise errors[0]
                    try:
                        writes.put((cid, slot[0]), timeout=0.05)
                        break
                    except queue.Full:
                        drain_written(True)
            drain_written(True)
        ok = True
    finally:
        stop.set()
        writes.put(None)  # chunks already handed over are still written: finished work is kept
        wthread.join()
        for th in readers:
            th.join(timeout=5)
        if ok and not errors:
            drain_written(True)
        else:
            drain_written(False)
    if errors:
        raise errors[0]
    return n_tiles


# ------------------------------------------------------------------ distributed workers
def _embed_block_task(
    store_path: str,
    grid_id: str,
    model_id: str,
    spec: dict[str, Any],
    chunk_ids: list[int],
    chunk_tiles: int,
    batch_size: int,
    num_workers: int,
) -> dict[str, Any]:
    """Run on a dask worker: embed ``chunk_ids`` and write their vectors (never the done-mask)."""
    engine = cached_engine(spec)
    store = open_worker_store(store_path)
    grid = load_grid(store, grid_id)
    vectors = store.root[f"{layout.embeddings(grid_id, model_id)}/vectors"]
    timer = _Timer()

    def write_chunk(cid: int, rows: np.ndarray) -> None:
        vectors[cid * chunk_tiles : cid * chunk_tiles + rows.shape[0]] = rows

    n = _embed_chunks(
        tile_reader(store, grid), engine, _plan(grid, chunk_ids, chunk_tiles), chunk_tiles,
        batch_size=batch_size, num_workers=num_workers, write_chunk=write_chunk,
        on_written=lambda cid: None, timer=timer,
    )
    return {"chunks": [int(c) for c in chunk_ids], "tiles": n, "timings": timer.seconds, "model_hash": engine.model_hash}


def _run_distributed(client, store, engine, grid, model_id, todo, chunk_tiles, batch_size, num_workers,
                     done_arr, on_chunk, timer) -> int:
    from distributed import as_completed

    blocks = task_batches(todo, client)
    futures = [
        client.submit(
            _embed_block_task, str(store.path), grid.grid_id, model_id, engine.spec, block, chunk_tiles,
            batch_size, num_workers, pure=False, key=f"nightwatch-embed-{model_id}-{grid.grid_id}-{block[0]}-{time.time_ns()}",
        )
        for block in blocks
    ]
    n_tiles = 0
    try:
        for fut in as_completed(futures):
            res = fut.result()
            if res["model_hash"] != engine.model_hash:
                raise NightwatchError(
                    f"A dask worker built a different {engine.model_id} (weights hash {res['model_hash']} vs "
                    f"{engine.model_hash}); every worker must see the same checkpoint file at the same path."
                )
            for k, v in res["timings"].items():
                timer.add(k, v)
            n_tiles += int(res["tiles"])
            for cid in res["chunks"]:
                done_arr[cid] = True  # only the driver writes the done-mask: no two writers share its chunk
                on_chunk(cid)
    except BaseException:
        client.cancel(futures)
        raise
    return n_tiles


def embed_store(
    store: PaintingStore,
    engine,
    grid: TileGrid | str,
    *,
    batch_size: int = 64,
    progress: ProgressCallback | None = None,
    client=None,
    num_workers: int = 2,
    chunk_tiles: int | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    """Embed every kept tile of a grid with ``engine``, resumably, into the store.

    Parameters
    ----------
    store
        A writable painting store with a mosaic.
    engine
        A :class:`~napari_nightwatch.ml.clip.ClipEngine` (with a distributed ``client``
        only its ``spec`` travels; each worker builds its own copy once).
    grid
        A grid from :func:`make_grid` (written to the store if it is not there yet) or a grid id.
    batch_size
        Tiles per forward pass.
    progress
        ``progress(tiles_done, n_tiles, "embed")`` after each written chunk; may raise
        :class:`~napari_nightwatch.core.errors.Cancelled` (finished chunks are kept).
    client
        A ``dask.distributed.Client`` or a scheduler address ``"tcp://HOST:PORT"``; None runs in-process.
    num_workers
        Reader/preprocessing threads (per process).
    chunk_tiles
        Tiles per stored chunk and per unit of resumable work; default 256 rounded up to a
        multiple of ``batch_size``. A resumed run keeps the stored value.
    overwrite
        Replace existing embeddings whose signature differs (otherwise that is an error).

    Returns
    -------
    dict
        grid_id, model_id, n_tiles, n_kept, n_chunks, chunks_processed, chunks_skipped,
        tiles_processed, wall_s, tiles_per_s, timings (seconds per stage: read,
        preprocess, model, write, model_idle; stages overlap so they do not sum to wall_s),
        complete, workers.

    Raises
    ------
    NightwatchError
        Existing embeddings with a different signature (unless ``overwrite``), bad parameters.
    """
    store.require_writable()
    if batch_size < 1:
        raise NightwatchError(f"batch_size={batch_size} must be a positive number of tiles.")
    gid = grid if isinstance(grid, str) else grid.grid_id
    with store.job(layout.embeddings(gid, engine.model_id), "nightwatch embed"):
        return _embed_store(store, engine, grid, batch_size=batch_size, progress=progress, client=client,
                            num_workers=num_workers, chunk_tiles=chunk_tiles, overwrite=overwrite)


def _embed_store(store: PaintingStore, engine, grid: TileGrid | str, *, batch_size: int,
                 progress: ProgressCallback | None, client, num_workers: int, chunk_tiles: int | None,
                 overwrite: bool) -> dict:
    """:func:`embed_store` under the embeddings' job lock."""
    if isinstance(grid, str):
        grid = load_grid(store, grid)
    elif not (store.has(layout.grid(grid.grid_id)) and store.is_complete(layout.grid(grid.grid_id))):
        grid = make_grid(
            store, level=grid.level, tile=grid.tile, stride=grid.stride,
            mask="auto" if grid.keep is None else grid.keep,
        )
    else:
        stored = load_grid(store, grid.grid_id)
        if grid.keep is not None and not np.array_equal(np.asarray(grid.keep, bool), stored.keep):
            raise NightwatchError(
                f"The keep-mask given for grid {grid.grid_id} differs from the one stored in {store.path}; "
                f"call make_grid(..., overwrite=True) first."
            )
        grid = stored
    model_id = engine.model_id
    path = layout.embeddings(grid.grid_id, model_id)
    signature = embedding_signature(store, engine, grid)
    if store.has(path) and "vectors" in store.root[path] and "done" in store.root[path]:
        meta = store.node_attrs(path)
        bad = signature_mismatch(meta.get("signature", {}), signature)
        if bad and not overwrite:
            raise NightwatchError(
                f"Embeddings {path} of {store.path} were made differently: {bad}; pass overwrite=True "
                f"(--overwrite) to replace them."
            )
        new_chunks = chunk_tiles is not None and int(chunk_tiles) != int(meta.get("chunk_tiles", -1))
        if bad or (new_chunks and overwrite):  # without overwrite a resume keeps the stored chunk_tiles
            store.mark_incomplete(path)
            del store.root[path]
    if not (store.has(path) and "done" in store.root[path]):
        if chunk_tiles is None:
            chunk_tiles = batch_size * max(1, math.ceil(DEFAULT_CHUNK_TILES / batch_size))
        chunk_tiles = int(chunk_tiles)
        if chunk_tiles < 1:
            raise NightwatchError(f"chunk_tiles={chunk_tiles} must be a positive number of tiles.")
        store.mark_incomplete(path)
        if store.has(path):
            del store.root[path]
        g = store.group(path, create=True)
        n_chunks = math.ceil(grid.n_tiles / chunk_tiles)
        g.create_array("vectors", shape=(grid.n_tiles, engine.dim), dtype=np.float16,
                       chunks=(chunk_tiles, engine.dim), fill_value=0)
        g.create_array("done", shape=(n_chunks,), dtype=bool, chunks=(min(n_chunks, 1 << 16),), fill_value=False)
        g.attrs["nightwatch"] = jsonable(
            {"signature": signature, "dim": engine.dim, "chunk_tiles": chunk_tiles, "model_id": model_id,
             "grid_id": grid.grid_id, "n_tiles": grid.n_tiles, "timings": {}}
        )
    g = store.root[path]
    meta = store.node_attrs(path)
    chunk_tiles = int(meta["chunk_tiles"])
    done_arr = g["done"]
    vectors = g["vectors"]
    done = np.asarray(done_arr[...], bool)
    n_chunks = done.size
    todo = np.flatnonzero(~done)
    chunk_len = np.minimum(chunk_tiles, grid.n_tiles - np.arange(n_chunks) * chunk_tiles)
    tiles_done = int(chunk_len[done].sum())
    report(progress, tiles_done, grid.n_tiles, "embed")
    timer = _Timer()
    state = {"tiles_done": tiles_done}

    def on_chunk(cid: int) -> None:
        state["tiles_done"] += int(chunk_len[cid])
        report(progress, state["tiles_done"], grid.n_tiles, "embed")

    client, own_client = connect(client)
    t_start = time.perf_counter()
    n_workers = 1
    try:
        if len(todo) and client is not None:
            n_workers = max(1, len(client.scheduler_info().get("workers", {})))
            n_embedded = _run_distributed(client, store, engine, grid, model_id, todo, chunk_tiles, batch_size,
                                          num_workers, done_arr, on_chunk, timer)
        elif len(todo):
            def write_chunk(cid: int, rows: np.ndarray) -> None:
                vectors[cid * chunk_tiles : cid * chunk_tiles + rows.shape[0]] = rows
                done_arr[cid] = True  # after the vectors: a chunk is never marked done before it is written

            n_embedded = _embed_chunks(
                tile_reader(store, grid), engine, _plan(grid, todo, chunk_tiles), chunk_tiles,
                batch_size=batch_size, num_workers=num_workers, write_chunk=write_chunk,
                on_written=on_chunk, timer=timer,
            )
        else:
            n_embedded = 0
    except Cancelled:
        _record_run(store, path, timer, time.perf_counter() - t_start, engine, batch_size, n_workers)
        raise
    finally:
        if own_client:
            client.close()
    wall = time.perf_counter() - t_start
    done = np.asarray(done_arr[...], bool)
    complete = bool(done.all())
    _record_run(store, path, timer, wall, engine, batch_size, n_workers)
    if complete and not store.is_complete(path):
        store.mark_complete(path, signature=signature, chunk_tiles=chunk_tiles, n_tiles=grid.n_tiles)
    return {
        "grid_id": grid.grid_id,
        "model_id": model_id,
        "n_tiles": grid.n_tiles,
        "n_kept": int(grid.keep.sum()) if grid.keep is not None else grid.n_tiles,
        "n_chunks": int(n_chunks),
        "chunks_processed": int(len(todo)),
        "chunks_skipped": int(n_chunks - len(todo)),
        "tiles_processed": int(n_embedded),
        "wall_s": round(wall, 4),
        "tiles_per_s": round(n_embedded / wall, 3) if wall > 0 and n_embedded else 0.0,
        "timings": timer.as_dict(),
        "complete": complete,
        "workers": n_workers,
        "random_weights": bool(getattr(engine, "random_weights", False)),
    }


def _record_run(store, path, timer, wall, engine, batch_size, n_workers) -> None:
    g = store.root[path]
    meta = dict(g.attrs.get("nightwatch", {}))
    meta["timings"] = dict(timer.as_dict(), wall_s=round(wall, 4))
    meta["run"] = {"device": getattr(engine, "device", None), "precision": getattr(engine, "precision", None),
                   "batch_size": int(batch_size), "workers": int(n_workers)}
    g.attrs["nightwatch"] = jsonable(meta)


