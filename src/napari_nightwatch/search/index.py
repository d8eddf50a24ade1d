"""The FAISS vector index over a grid's tile embeddings, kept inside the painting store.

Layout (one index per grid and model)::

    grids/<grid_id>/index/<model_id>/   attrs["nightwatch"] = {index_type, on_disk, params, n_vectors,
                                        dim, recall_at_10, recall_queries, build_seconds, signature,
                                        bytes_per_vector, disk_bytes_per_vector, shards, workers}
                                        attrs["checksum"] = sha256 of the faiss bytes, then tile_ids
        faiss      (nbytes,) uint8        the serialised index (``faiss.write_index`` format)
        tile_ids   (n_vectors,) int64     faiss row -> tile index of the grid
        rerank     (n_vectors, dim) f16   only for "ivfpq": the exact vectors used to re-rank
                                          candidates, uncompressed so they are memory-mapped

An **on-disk** IVF-PQ index (``on_disk``) stores ``faiss`` and ``tile_ids`` each as one
uncompressed zarr chunk, so the chunk file *is* the index file: FAISS opens it with
``IO_FLAG_MMAP``, which reads the coarse centroids and PQ codebooks into RAM and
memory-maps the inverted lists (codes and ids) in place. A query then touches only the
``nprobe`` lists it scans and the pages of the re-ranking rows it reads; resident memory
does not grow with the painting. A store on object storage has the two files fetched once
into a local cache folder keyed by the index checksum (re-ranking chunks on first use),
then memory-mapped the same way.

How the index type is chosen (:func:`choose_index`), all on inner product of
L2-normalised vectors (= cosine similarity):

* fewer than ``FLAT_MAX_VECTORS`` (200,000) vectors: exact ``IndexFlatIP``. A query
  scans every vector (about 60 ms at 200k x 512-d on 2 cores), no training, recall 1.
* up to ``HNSW_MAX_VECTORS`` (1,000,000) vectors, when the float32 vectors plus the
  graph links fit the memory budget: ``IndexHNSWFlat`` (sub-millisecond queries, but
  ``4 * dim + 8 * M`` bytes per vector in RAM and a build that grows steeply with size).
* otherwise (whole paintings: millions of tiles): ``IndexIVFPQ`` holding only
  ``dim / 8`` bytes of product-quantised code per vector in RAM (coarser codes if the
  budget demands), whose candidates are re-ranked exactly against the float16 vectors
  memory-mapped from the store. This keeps 14.3 million tiles of the Night Watch around
  1 GB of RAM.
* when even the coarsest codes exceed the budget (or when ``on_disk=True``): the same
  IVF-PQ with ``dim / 8`` byte codes **on disk**, memory-mapped as above; only the
  centroids, codebooks and list offsets stay resident (about 17 MB at 14.3 M x 512-d).

The default memory budget is ``DEFAULT_MEMORY_BUDGET_BYTES`` (4 GB), a fixed number
rather than a fraction of this machine's RAM so the choice is reproducible.

IVF-PQ builds are split into shards of consecutive rows: the quantizer is trained once
(on a sample, in the calling process), each shard's vectors are encoded against it
(in-process, or one task per shard on a dask cluster), and the shards' inverted lists
are appended in row order, so the lists are the same bytes however the work was spread.
"""

from __future__ import annotations

import hashlib
import math
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cluster import connected, n_workers
from ..core.errors import NightwatchError
from ..core.jsonutil import jsonable
from ..core.progress import ProgressCallback, report
from ..io.remote import filesystem, is_url, join, with_retries
from ..store import PaintingStore
from ..store.embeddings import READ_ROWS, Embeddings, open_embeddings, resolve_grid_model, unit_rows
from ..store.painting import open_worker_store

FLAT_MAX_VECTORS = 200_000
HNSW_MAX_VECTORS = 1_000_000
DEFAULT_MEMORY_BUDGET_BYTES = 4_000_000_000
HNSW_M = 32
RECALL_QUERIES = 200
#: fewest vectors an IVF-PQ index is trained on (16 codebook centroids x ~16 points)
IVF_MIN_VECTORS = 256
RECALL_K = 10
#: rows per chunk of the re-ranking vectors (64 MB at 512-d float16)
RERANK_CHUNK_ROWS = 65_536
#: rows one IVF-PQ build shard encodes (a multiple of READ_ROWS and RERANK_CHUNK_ROWS, so
#: shards add the same blocks as one sequential pass and write whole re-ranking chunks):
#: 55 tasks for the Night Watch, 19 MB of 64-byte codes returned by each
DEFAULT_SHARD_ROWS = 4 * READ_ROWS
#: bytes of one inverted list's offset record kept in RAM by an on-disk index (size, capacity, offset)
ONDISK_LIST_BYTES = 24
#: sub-folder of the cache folder holding fetched index files
CACHE_SUBDIR = "index"


def default_cache_dir() -> Path:
    """Where index files of stores on object storage are cached: the user cache folder.

    ``platformdirs.user_cache_dir("napari-nightwatch")`` where platformdirs is installed,
    else ``~/.cache/napari-nightwatch``. Entries are named by the index checksum and may be
    deleted at any time (they are fetched again).
    """
    try:
        import platformdirs
    except ImportError:  # pragma: no cover - platformdirs ships with most environments
        return Path.home() / ".cache" / "napari-nightwatch"
    return Path(platformdirs.user_cache_dir("napari-nightwatch"))


# ------------------------------------------------------------------------------- choice
@dataclass(frozen=True)
class IndexSpec:
    """Which FAISS index to build and what it costs.

    Attributes
    ----------
    kind
        "flat" (exact), "hnsw" or "ivfpq" (IVF-PQ codes in RAM, exact float16 re-ranking).
    params
        Build and search parameters (``M``, ``ef_search``; ``nlist``, ``m``, ``nbits``,
        ``nprobe``, ``rerank_factor``).
    bytes_per_vector
        RAM per indexed vector (codes or vectors, graph links, ids); 0 for an on-disk index.
    disk_bytes_per_vector
        Bytes per vector kept on disk and memory-mapped (re-ranking vectors; for an
        on-disk index also the codes and ids), 0 if none.
    reason
        One sentence saying why this type was chosen.
    on_disk
        IVF-PQ whose inverted lists stay on disk, memory-mapped (see the module docstring).
    """

    kind: str
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    bytes_per_vector: float = 0.0
    disk_bytes_per_vector: float = 0.0
    reason: str = ""
    on_disk: bool = False

    def memory_bytes(self, n_vectors: int) -> int:
        """RAM the index takes for ``n_vectors`` (fixed parts such as IVF centroids included)."""
        fixed = 0
        if self.kind == "ivfpq":
            # coarse centroids (float32) + PQ codebooks (float32)
            fixed = 4 * self.dim * self.params["nlist"] + 4 * self.dim * (1 << self.params["nbits"])
            if self.on_disk:
                fixed += ONDISK_LIST_BYTES * self.params["nlist"]
        return int(fixed + self.bytes_per_vector * n_vectors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "params": dict(self.params),
            "bytes_per_vector": self.bytes_per_vector,
            "disk_bytes_per_vector": self.disk_bytes_per_vector,
            "reason": self.reason,
            "on_disk": self.on_disk,
        }


def _flat_bytes(dim: int) -> float:
    # float32 vector + our int64 tile id
    return 4.0 * dim + 8


def _hnsw_bytes(dim: int, m: int = HNSW_M) -> float:
    # float32 vector, 2*M int32 links on level 0, ~1/M extra levels, level array, our tile id
    return 4.0 * dim + 8.0 * m * (1 + 1 / m) + 4 + 8


def _ivfpq_bytes(m_bytes: int) -> float:
    # PQ code + faiss's int64 id in the inverted list + our int64 tile id
    return float(m_bytes + 8 + 8)


def _pq_m(dim: int, dims_per_code: int) -> int:
    """Largest divisor of ``dim`` giving at least ``dims_per_code`` dimensions per sub-quantiser."""
    target = max(1, dim // dims_per_code)
    for m in range(target, 0, -1):
        if dim % m == 0:
            return m
    return 1


def _trained_spec(spec: IndexSpec, n_vectors: int) -> IndexSpec:
    """``spec`` with IVF lists and codebooks sized for the ``n_vectors`` they are trained on."""
    if spec.kind != "ivfpq":
        return spec
    if n_vectors < IVF_MIN_VECTORS:
        raise NightwatchError(
            f"An IVF-PQ index needs at least {IVF_MIN_VECTORS} vectors to train its codebooks; "
            f"there are {n_vectors}: use the exact flat index (the default at this size)."
        )
    return IndexSpec(spec.kind, spec.dim, _ivf_params(n_vectors, spec.dim, spec.params["m"]),
                     spec.bytes_per_vector, spec.disk_bytes_per_vector, spec.reason, spec.on_disk)


def _ivf_params(n_vectors: int, dim: int, m_bytes: int) -> dict[str, Any]:
    # ~2 sqrt(n) lists (FAISS suggests 1-16 sqrt(n)); fewer lists keep k-means training
    # affordable on a few cores; a power of two, each list trained on >= 39 points
    nlist = 2 ** max(0, round(math.log2(max(1.0, 2 * math.sqrt(max(n_vectors, 1))))))
    nlist = int(max(1, min(nlist, 65_536, n_vectors // 39 if n_vectors >= 39 else 1)))
    nlist = 2 ** int(math.log2(nlist))
    # 8-bit codebooks need ~39*256 training points; small sets get coarser codebooks
    nbits = 8 if n_vectors >= 39 * 256 else (6 if n_vectors >= 39 * 64 else 4)
    nprobe = int(min(nlist, max(16, nlist // 64)))
    return {
        "nlist": nlist,
        "m": int(m_bytes),
        "nbits": nbits,
        "nprobe": nprobe,
        # candidates re-ranked exactly: 300 lifted recall@10 from 0.90 (100) to 0.999 on
        # clustered 512-d data (benchmarks/bench_index.py) for ~0.3 ms more per query
        "rerank_factor": 30,
        "min_candidates": 300,
        "train_size": int(min(n_vectors, max(40 * nlist, 40 * (1 << nbits)), 400_000)),
        "train_iterations": 10,
    }


def choose_index(
    n_vectors: int, dim: int, memory_budget_bytes: int | None = None, *, kind: str | None = None,
    on_disk: bool | None = None,
) -> IndexSpec:
    """Choose the FAISS index for ``n_vectors`` unit vectors of ``dim`` dimensions.

    Parameters
    ----------
    n_vectors
        Number of vectors to index (expected size, e.g. all tiles of the painting).
    dim
        Embedding dimension.
    memory_budget_bytes
        RAM the index may take; default :data:`DEFAULT_MEMORY_BUDGET_BYTES` (4 GB).
    kind
        Force "flat", "hnsw" or "ivfpq" (parameters, and for IVF-PQ the code size, still
        follow the size and budget).
    on_disk
        True: an IVF-PQ index whose inverted lists stay on disk, memory-mapped; False:
        never; None (default): on disk only when no in-RAM index fits the budget.

    Returns
    -------
    IndexSpec
        The type, its parameters and its memory cost; the rule is in the module docstring.
    """
    n_vectors = int(n_vectors)
    dim = int(dim)
    if n_vectors < 1 or dim < 1:
        raise NightwatchError(f"Cannot index {n_vectors} vectors of dimension {dim}; expected at least one vector.")
    budget = DEFAULT_MEMORY_BUDGET_BYTES if memory_budget_bytes is None else int(memory_budget_bytes)
    if kind not in (None, "flat", "hnsw", "ivfpq"):
        raise NightwatchError(f"Index type {kind!r} is not one of 'flat', 'hnsw', 'ivfpq'.")
    if on_disk and kind in ("flat", "hnsw"):
        raise NightwatchError(
            f"Only an IVF-PQ index can be kept on disk; the {kind} index holds its vectors in RAM "
            "(drop on_disk / --on-disk, or use the ivfpq index type)."
        )

    flat = IndexSpec("flat", dim, {}, _flat_bytes(dim), 0.0, "")
    hnsw = IndexSpec("hnsw", dim, {"M": HNSW_M, "ef_construction": 80, "ef_search": 128}, _hnsw_bytes(dim), 0.0, "")

    def ivfpq(dims_per_code: int, disk: bool = False) -> IndexSpec:
        m = _pq_m(dim, dims_per_code)
        if disk:  # codes, faiss ids and tile ids memory-mapped next to the re-ranking rows
            return IndexSpec("ivfpq", dim, _ivf_params(n_vectors, dim, m), 0.0, 2.0 * dim + _ivfpq_bytes(m), "", True)
        return IndexSpec("ivfpq", dim, _ivf_params(n_vectors, dim, m), _ivfpq_bytes(m), 2.0 * dim, "")

    def why(spec: IndexSpec, text: str) -> IndexSpec:
        return IndexSpec(spec.kind, spec.dim, spec.params, spec.bytes_per_vector, spec.disk_bytes_per_vector, text,
                         spec.on_disk)

    gb = budget / 1e9
    if kind == "flat":
        return why(flat, "exact flat index requested")
    if kind == "hnsw":
        return why(hnsw, "HNSW index requested")
    if on_disk:
        spec = ivfpq(8, disk=True)
        return why(spec, f"{n_vectors} vectors: on-disk IVF-PQ requested ({spec.params['m']} B codes memory-mapped; "
                         f"{spec.memory_bytes(n_vectors) / 1e6:.0f} MB of centroids and codebooks resident)")
    if kind is None and n_vectors < FLAT_MAX_VECTORS and flat.memory_bytes(n_vectors) <= budget:
        return why(flat, f"{n_vectors} vectors < {FLAT_MAX_VECTORS}: exact search is fast enough")
    if kind is None and n_vectors <= HNSW_MAX_VECTORS and hnsw.memory_bytes(n_vectors) <= budget:
        return why(hnsw, f"{n_vectors} vectors fit an HNSW graph within {gb:.1f} GB")
    # IVF-PQ: 8 dimensions per code byte by default, coarser codes if the budget demands it
    for dims_per_code in (8, 16, 32):
        spec = ivfpq(dims_per_code)
        if spec.memory_bytes(n_vectors) <= budget:
            return why(
                spec,
                f"{n_vectors} vectors: IVF-PQ ({spec.params['m']} B codes) fits {gb:.1f} GB; "
                "candidates are re-ranked exactly from float16 vectors on disk",
            )
    disk = ivfpq(8, disk=True)
    if on_disk is None and disk.memory_bytes(n_vectors) <= budget:
        return why(
            disk,
            f"{n_vectors} vectors: no in-RAM index fits {gb:.2f} GB, so IVF-PQ ({disk.params['m']} B codes) stays "
            f"on disk, memory-mapped, with {disk.memory_bytes(n_vectors) / 1e6:.0f} MB of centroids and codebooks "
            "resident",
        )
    if kind == "ivfpq":  # forced in RAM over the budget: the caller asked for it
        spec = ivfpq(8)
        return why(spec, f"IVF-PQ requested ({spec.params['m']} B codes), over the {gb:.1f} GB budget")
    smallest = min(ivfpq(32).memory_bytes(n_vectors), disk.memory_bytes(n_vectors) if on_disk is None else 1 << 62)
    raise NightwatchError(
        f"memory_budget_bytes={budget} is below the {smallest} bytes that the most compact index "
        f"needs for {n_vectors} vectors of dimension {dim}; raise the budget."
    )


# ------------------------------------------------------------------------------- store files
def _local_dir(store: PaintingStore, node_path: str) -> Path | None:
    """The local folder of a zarr node of ``store``; None when the store lives at a URL."""
    return None if is_url(store.path) else Path(store.path) / node_path


def _is_raw(arr) -> bool:
    """Whether ``arr``'s chunks are raw little-endian bytes (only the bytes codec, no compressor)."""
    codecs = arr.metadata.to_dict().get("codecs", [{}])
    return (len(codecs) == 1 and codecs[0].get("name") == "bytes"
            and (codecs[0].get("configuration") or {}).get("endian", "little") == "little")


def _single_raw_chunk(arr) -> bool:
    """Whether ``arr`` is one raw chunk: its chunk file (or object) holds exactly its bytes."""
    return _is_raw(arr) and tuple(arr.chunks) == tuple(arr.shape)


def _chunk_key(arr) -> str:
    """Key of ``arr``'s first chunk below the array's folder (``c/0`` in the default v3 encoding)."""
    return arr.metadata.encode_chunk_key((0,) * arr.ndim)


def _cache_root(cache_dir: str | Path | None) -> Path:
    return Path(cache_dir if cache_dir is not None else default_cache_dir()) / CACHE_SUBDIR


def _cache_entry(cache_dir: str | Path | None, digest: str) -> Path:
    # the checksum names the entry: a rebuilt or extended index gets a new one, never a stale copy
    return _cache_root(cache_dir) / digest[:32]


def _scratch(nbytes: int):
    """A reusable read buffer in its own anonymous mapping.

    Unmapped when closed, so it always goes back to the system; a malloc'd buffer of this
    size may stay in the heap and count as resident memory after the load.
    """
    import mmap

    return mmap.mmap(-1, nbytes)


def _hash_file(h, path: Path, block: int = 1 << 20) -> None:
    # read() into one reused buffer, not a memory map of the file: the bytes pass through
    # the page cache without becoming part of this process's resident memory
    with _scratch(block) as buf, open(path, "rb", buffering=0) as fh:
        view = memoryview(buf)
        try:
            while True:
                n = fh.readinto(view)
                if not n:
                    break
                h.update(view[:n])
        finally:
            view.release()


def _files_digest(index_file: Path, tile_file: Path) -> str:
    """:func:`_index_digest` of an index and tile-id table kept as files, read in blocks."""
    h = hashlib.sha256()
    _hash_file(h, index_file)
    _hash_file(h, tile_file)
    return h.hexdigest()


def _fetch_array(store: PaintingStore, arr, dest: Path) -> None:
    """Copy the raw little-endian bytes of the 1-d array ``arr`` into the file ``dest``.

    A single raw chunk on object storage is fetched as one object (never through RAM whole);
    otherwise (a copy that another tool re-chunked or compressed) it is decoded chunk by chunk.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f"{dest.name}.partial-{os.getpid()}")
    try:
        if is_url(store.path) and _single_raw_chunk(arr):
            url = join(str(store.path), arr.path, _chunk_key(arr))
            fs, key = filesystem(url)
            with_retries(lambda: fs.get_file(key, str(tmp)), url, "fetched")
        else:
            rows = int(arr.chunks[0])
            little = arr.dtype.newbyteorder("<")
            with open(tmp, "wb") as fh:
                for i in range(0, int(arr.shape[0]), rows):
                    fh.write(np.ascontiguousarray(arr[i : i + rows], dtype=little).tobytes())
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def _mapped_files(store: PaintingStore, g, digest: str, cache_dir: str | Path | None,
                  what: str) -> tuple[Path, Path, Path | None]:
    """``(index file, tile-id file, cache entry or None)`` of an on-disk index, ready to memory-map.

    In a local store they are the arrays' own chunk files; for a store on object storage
    (or arrays that are no longer one raw chunk) copies in the cache entry named by the
    checksum, fetched the first time only.
    """
    local = _local_dir(store, g.path)
    entry = None
    files = []
    for name, fname in (("faiss", "index.faiss"), ("tile_ids", "tile_ids.i8")):
        arr = g[name]
        if local is not None and _single_raw_chunk(arr):
            f = local / name / _chunk_key(arr)
            if not f.is_file():
                raise NightwatchError(
                    f"The index {what} is damaged (its file {f} is missing); rebuild it with `nightwatch index`."
                )
            files.append(f)
            continue
        entry = _cache_entry(cache_dir, digest)
        f = entry / fname
        if not (f.is_file() and f.stat().st_size == arr.nbytes):
            _fetch_array(store, arr, f)
        files.append(f)
    return files[0], files[1], entry


def _count_unindexed(available: np.ndarray, tile_file: Path, block: int = 1 << 16) -> int:
    """How many ``available`` tiles the tile-id file lacks, reading it in blocks.

    The file is read into one reused buffer, not memory-mapped, so its pages do not stay
    resident, and a mask over the tiles replaces sorting two arrays of every tile.
    """
    if available.size == 0:
        return 0
    seen = np.zeros(int(available.max()) + 1, bool)
    with _scratch(8 * block) as raw, open(tile_file, "rb", buffering=0) as fh:
        view = memoryview(raw)
        try:
            while True:
                n = fh.readinto(view) // 8
                if n == 0:
                    break
                ids = np.frombuffer(view, dtype="<i8", count=n)
                seen[ids[(ids >= 0) & (ids < seen.size)]] = True
                del ids
        finally:
            view.release()
    return int(np.count_nonzero(~seen[available]))


def _write_mapped(store: PaintingStore, g, index, tiles: np.ndarray,
                  cache_dir: str | Path | None) -> tuple[str, Path, Path]:
    """Write an on-disk index into group ``g``: ``faiss.write_index`` output as the one raw
    chunk of ``faiss``, the tile ids as the one raw chunk of ``tile_ids``, and their checksum.

    Returns ``(digest, index file, tile-id file)``, local files to memory-map: the chunk
    files themselves in a local store; for a store on object storage the uploaded files,
    kept as the cache entry of this checksum so the builder never fetches them back.
    """
    import faiss

    for name in ("faiss", "tile_ids"):
        if name in g:
            del g[name]
    tiles = np.ascontiguousarray(tiles, dtype="<i8")
    local = _local_dir(store, g.path)

    def arrays(size: int):
        arr = g.create_array("faiss", shape=(size,), chunks=(size,), dtype=np.uint8, compressors=None, fill_value=0)
        ids = g.create_array("tile_ids", data=tiles, chunks=(max(1, tiles.size),), compressors=None, fill_value=-1)
        return arr, ids

    if local is not None:
        # FAISS writes the file straight into the array's folder; the zarr metadata follows once
        # its size is known, and the file moves into the place of the array's only chunk
        folder = local / "faiss"
        folder.mkdir(parents=True, exist_ok=True)
        partial = folder / "index.faiss.partial"
        faiss.write_index(index, str(partial))
        arr, ids = arrays(partial.stat().st_size)
        index_file = folder / _chunk_key(arr)
        index_file.parent.mkdir(parents=True, exist_ok=True)
        os.replace(partial, index_file)
        tile_file = local / "tile_ids" / _chunk_key(ids)
        digest = _files_digest(index_file, tile_file)
    else:
        staging = _cache_root(cache_dir) / f".staging-{os.getpid()}-{time.time_ns()}"
        staging.mkdir(parents=True)
        try:
            index_file = staging / "index.faiss"
            faiss.write_index(index, str(index_file))
            arr, _ = arrays(index_file.stat().st_size)
            url = join(str(store.path), arr.path, _chunk_key(arr))
            fs, key = filesystem(url)
            with_retries(lambda: fs.put_file(str(index_file), key), url, "written")
            tile_file = staging / "tile_ids.i8"
            tiles.tofile(tile_file)
            digest = _files_digest(index_file, tile_file)
            entry = _cache_entry(cache_dir, digest)
            shutil.rmtree(entry, ignore_errors=True)
            os.replace(staging, entry)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        index_file, tile_file = entry / "index.faiss", entry / "tile_ids.i8"
    g.attrs["checksum"] = {"sha256": digest, "of": "faiss bytes, then tile_ids as little-endian int64"}
    return digest, index_file, tile_file


# ------------------------------------------------------------------------------- the index
class _RowStore:
    """float16 re-ranking vectors: memory-mapped zarr chunks, or in-RAM arrays.

    FAISS's ``IndexRefineFlat`` would need the exact vectors in RAM (29 GB at 14.3 M
    x 512 float32), so they stay on disk as uncompressed float16 zarr chunks, which
    the zarr v3 spec lays out as raw little-endian rows, and are memory-mapped. For a
    store on object storage each chunk is fetched on first use into the cache folder
    (``cache``) and memory-mapped from there.
    """

    def __init__(self, chunks: list[np.ndarray | None], chunk_rows: int, n_rows: int, loader=None,
                 dim: int | None = None) -> None:
        self.chunks = list(chunks)
        self.chunk_rows = chunk_rows
        self.n_rows = n_rows
        self.loader = loader
        self.dim = int(dim if dim is not None else (self.chunks[0].shape[1] if self.chunks else 0))

    @classmethod
    def open(cls, arr, path: Path | None, cache: Path | None = None) -> _RowStore:
        n, dim = (int(v) for v in arr.shape)
        rows = int(arr.chunks[0])
        n_chunks = -(-n // rows)
        raw = _is_raw(arr)
        if path is None:
            def load(i: int) -> np.ndarray:
                lo, hi = i * rows, min(n, (i + 1) * rows)
                if cache is None:
                    return np.asarray(arr[lo:hi], dtype=np.float16)
                f = cache / f"{i}.f16"
                if not (f.is_file() and f.stat().st_size == (hi - lo) * dim * 2):
                    f.parent.mkdir(parents=True, exist_ok=True)
                    tmp = f.with_name(f"{f.name}.partial-{os.getpid()}")
                    np.ascontiguousarray(arr[lo:hi], dtype="<f2").tofile(tmp)
                    os.replace(tmp, f)
                return np.memmap(f, dtype="<f2", mode="r", shape=(hi - lo, dim))

            return cls([None] * n_chunks, rows, n, load, dim)
        chunks: list[np.ndarray | None] = []
        for i in range(n_chunks):
            f = path / "c" / str(i) / "0"
            if raw and f.exists() and f.stat().st_size == rows * dim * 2:
                chunks.append(np.memmap(f, dtype="<f2", mode="r", shape=(rows, dim)))
            else:
                chunks.append(np.asarray(arr[i * rows : min(n, (i + 1) * rows)], dtype=np.float16))
        return cls(chunks, rows, n, None, dim)

    def _chunk(self, i: int) -> np.ndarray:
        c = self.chunks[i]
        if c is None:
            c = self.chunks[i] = self.loader(i)
        return c

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.dim), np.float32)
        c, r = np.divmod(rows, self.chunk_rows)
        for ci in np.unique(c):
            sel = c == ci
            out[sel] = self._chunk(int(ci))[r[sel]]
        return unit_rows(out)


class VectorIndex:
    """A loaded index: :meth:`search` maps query vectors to the best tiles.

    Attributes
    ----------
    kind, params, dim, n_vectors, tile_ids, signature, attrs
        As stored in ``grids/<grid_id>/index/<model_id>``.
    index_file
        For an on-disk index, the local file whose inverted lists are memory-mapped; else None.
    """

    def __init__(self, faiss_index, kind: str, params: dict, tile_ids: np.ndarray, rerank: _RowStore | None = None,
                 signature: dict | None = None, attrs: dict | None = None, index_file: Path | None = None) -> None:
        self.index = faiss_index
        self.kind = kind
        self.params = dict(params)
        # a memory-mapped tile-id table stays mapped (an on-disk index keeps nothing per vector in RAM)
        self.tile_ids = tile_ids if isinstance(tile_ids, np.memmap) else np.asarray(tile_ids, dtype=np.int64)
        self.rerank = rerank
        self.signature = dict(signature or {})
        self.attrs = dict(attrs or {})
        self.index_file = index_file
        self.grid = None  # TileGrid, set when loaded from a store
        self.pixel_size_um = float("nan")

    @property
    def on_disk(self) -> bool:
        """Whether the inverted lists are memory-mapped from :attr:`index_file`."""
        return self.index_file is not None

    @property
    def dim(self) -> int:
        return int(self.index.d)

    @property
    def n_vectors(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` tiles by inner product for each query.

        Parameters
        ----------
        queries
            ``(n, dim)`` (or ``(dim,)``) float query vectors, normally L2-normalised.
        k
            Results per query; at most the number of indexed vectors.

        Returns
        -------
        scores, tile_ids
            ``(n, k)`` float32 and int64 arrays, best first (tile id -1 where fewer exist).
        """
        q = np.ascontiguousarray(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise NightwatchError(f"Query vectors have shape {q.shape}; expected (n, {self.dim}) for this index.")
        k = int(max(1, min(k, self.n_vectors)))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = int(max(self.params.get("ef_search", 128), 2 * k))
        if self.kind == "ivfpq":
            rows_d, rows = self._search_rerank(q, k)
        else:
            rows_d, rows = self.index.search(q, k)
        ids = np.where(rows >= 0, self.tile_ids[np.clip(rows, 0, None)], -1)
        return rows_d.astype(np.float32), ids.astype(np.int64)

    def _search_rerank(self, q: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        self.index.nprobe = int(self.params.get("nprobe", 16))
        n_cand = int(min(self.n_vectors, max(k * self.params.get("rerank_factor", 10), self.params.get("min_candidates", 100))))
        _, cand = self.index.search(q, n_cand)
        out_d = np.full((q.shape[0], k), -np.inf, np.float32)
        out_i = np.full((q.shape[0], k), -1, np.int64)
        for i in range(q.shape[0]):
            c = cand[i][cand[i] >= 0]
            if c.size == 0:
                continue
            exact = self.rerank.take(c) @ q[i]
            top = np.argsort(-exact, kind="stable")[:k]
            out_d[i, : top.size] = exact[top]
            out_i[i, : top.size] = c[top]
        return out_d, out_i

    def memory_bytes(self) -> int:
        """RAM of the FAISS index plus the tile-id table when it is held in RAM.

        The FAISS part is its serialised size; for an on-disk index that is what was read
        into RAM (centroids, codebooks, list offsets), not the memory-mapped lists.
        """
        import faiss

        ids = 0 if isinstance(self.tile_ids, np.memmap) else self.tile_ids.nbytes
        return int(faiss.serialize_index(self.index).size + ids)




def _new_faiss_index(spec: IndexSpec):
    import faiss

    d = spec.dim
    if spec.kind == "flat":
        return faiss.IndexFlatIP(d)
    if spec.kind == "hnsw":
        idx = faiss.IndexHNSWFlat(d, int(spec.params["M"]), faiss.METRIC_INNER_PRODUCT)
        idx.hnsw.efConstruction = int(spec.params["ef_construction"])
        return idx
    quantizer = faiss.IndexFlatIP(d)
    p = spec.params
    idx = faiss.IndexIVFPQ(quantizer, d, int(p["nlist"]), int(p["m"]), int(p["nbits"]), faiss.METRIC_INNER_PRODUCT)
    # 10 k-means iterations instead of 25: coarse lists need not be optimal, re-ranking is exact
    idx.cp.niter = int(p.get("train_iterations", 10))
    idx.pq.cp.niter = int(p.get("train_iterations", 10))
    return idx


def _recall_queries(emb: Embeddings, tiles: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Sampled stored vectors, slightly perturbed (cos ~0.96): new exemplars near the data.

    Querying with stored vectors unchanged would put the vector itself at rank 1
    and flatter the recall of approximate indexes.
    """
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(tiles, size=min(n, tiles.size), replace=False))
    q = emb.read(pick)
    q = q + rng.normal(scale=0.3 / math.sqrt(emb.dim), size=q.shape).astype(np.float32)
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


def recall_at_k(exact_scores: np.ndarray, exact_ids: np.ndarray, scores: np.ndarray, ids: np.ndarray, k: int) -> float:
    """Mean fraction of the exact top-``k`` that a search found, counting exact ties as found.

    A returned id counts when it is in the exact top-``k`` or when its (exact) score
    reaches the ``k``-th exact score: tiles with equal embeddings are interchangeable.
    """
    hits = []
    for es, ei, s, i in zip(exact_scores, exact_ids, scores, ids, strict=True):
        kth = es[k - 1]
        found = np.isin(i[:k], ei[:k]) | (s[:k] >= kth - 1e-5)
        hits.append(min(k, int(np.count_nonzero(found & (i[:k] >= 0)))) / k)
    return float(np.mean(hits))


def _index_path(grid_id: str, model_id: str) -> str:
    return f"grids/{grid_id}/index/{model_id}"


def _index_digest(faiss_bytes: np.ndarray, tile_ids: np.ndarray) -> str:
    """SHA-256 of the serialised index and its tile ids: zeroed or truncated bytes are caught on load."""
    import hashlib

    h = hashlib.sha256(np.ascontiguousarray(faiss_bytes, dtype=np.uint8).tobytes())
    h.update(np.ascontiguousarray(tile_ids, dtype="<i8").tobytes())
    return h.hexdigest()


def _write_faiss_bytes(group, index) -> str:
    """Write the serialised index (after its ``tile_ids``) and the checksum of both; return it."""
    import faiss

    buf = np.asarray(faiss.serialize_index(index), dtype=np.uint8)
    if "faiss" in group:
        del group["faiss"]
    arr = group.create_array("faiss", shape=buf.shape, dtype=np.uint8, chunks=(min(max(buf.size, 1), 1 << 24),))
    arr[...] = buf
    digest = _index_digest(buf, np.asarray(group["tile_ids"][...]))
    group.attrs["checksum"] = {"sha256": digest, "of": "faiss bytes, then tile_ids as little-endian int64"}
    return digest


# ------------------------------------------------------------------------------- sharded IVF-PQ encoding
def _shard_layout(n: int, shard_rows: int | None) -> tuple[int, int]:
    """``(rows per shard, rows per re-ranking chunk)``: every shard writes whole chunks.

    Shards of at least :data:`RERANK_CHUNK_ROWS` rows are rounded up to a multiple of it
    (and so of :data:`READ_ROWS`: shards then add exactly the blocks one sequential pass
    would); smaller shards (tests, small paintings on many workers) get chunks of their size.
    """
    rows = DEFAULT_SHARD_ROWS if shard_rows is None else int(shard_rows)
    if rows < 1:
        raise NightwatchError(f"shard_rows={shard_rows} must be at least 1.")
    if rows >= RERANK_CHUNK_ROWS:
        rows = -(-rows // RERANK_CHUNK_ROWS) * RERANK_CHUNK_ROWS
        chunk = RERANK_CHUNK_ROWS
    else:
        chunk = rows
    n = max(1, int(n))
    return min(rows, n), min(chunk, n)


def _shard_lists(index) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(sizes, codes, ids)``: the inverted lists of ``index`` one after another, in list order."""
    import faiss

    il = index.invlists
    cs = int(il.code_size)
    sizes = np.array([il.list_size(i) for i in range(index.nlist)], dtype=np.int64)
    codes = np.empty((int(sizes.sum()), cs), np.uint8)
    ids = np.empty(int(sizes.sum()), np.int64)
    pos = 0
    for lst in np.flatnonzero(sizes):
        s = int(sizes[lst])
        codes[pos : pos + s] = faiss.rev_swig_ptr(il.get_codes(int(lst)), s * cs).reshape(s, cs)
        ids[pos : pos + s] = faiss.rev_swig_ptr(il.get_ids(int(lst)), s)
        pos += s
    return sizes, codes, ids


def _append_lists(index, sizes: np.ndarray, codes: np.ndarray, ids: np.ndarray) -> None:
    """Append one shard's lists (from :func:`_shard_lists`) to the lists of ``index``.

    Entries join the end of each list, so appending shards in row order gives the lists
    one sequential ``add`` of all rows would have built, byte for byte.
    """
    import faiss

    il = index.invlists
    codes = np.ascontiguousarray(codes, dtype=np.uint8)
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    pos = 0
    for lst in np.flatnonzero(sizes):
        s = int(sizes[lst])
        il.add_entries(int(lst), s, faiss.swig_ptr(ids[pos : pos + s]), faiss.swig_ptr(codes[pos : pos + s]))
        pos += s
    index.ntotal = int(index.ntotal) + pos


def _encode_shard(store: PaintingStore, emb: Embeddings, part: str, trained: np.ndarray, tiles: np.ndarray,
                  first_row: int, queries: np.ndarray, k: int) -> dict[str, Any]:
    """Encode rows ``first_row ...`` (the embeddings of ``tiles``) against the trained index.

    Writes their re-ranking rows into ``part/rerank`` (whole chunks, see :func:`_shard_layout`)
    and returns the shard's inverted lists and the exact top-``k`` of the recall ``queries``
    among its tiles (for the recall measurement).
    """
    import faiss

    shard = faiss.deserialize_index(trained)
    rerank = store.root[part]["rerank"]
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    for i in range(0, tiles.size, READ_ROWS):
        block = tiles[i : i + READ_ROWS]
        row0 = first_row + i
        vecs = emb.read(block)
        # explicit ids = global row numbers: the shard's lists slot in after the previous shard's
        shard.add_with_ids(vecs, np.arange(row0, row0 + block.size, dtype=np.int64))
        rerank[row0 : row0 + block.size] = vecs.astype(np.float16)
        # exact top-k computed alongside, block by block, for the recall measurement
        scores = queries @ vecs.T
        if block.size > k:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            heap.add_result(np.ascontiguousarray(np.take_along_axis(scores, top, axis=1)), block[top])
        else:
            heap.add_result(scores, np.broadcast_to(block, scores.shape).copy())
    heap.finalize()
    sizes, codes, ids = _shard_lists(shard)
    return {"first_row": int(first_row), "sizes": sizes, "codes": codes, "ids": ids, "D": heap.D, "I": heap.I,
            "signature": jsonable(emb.signature)}


def _encode_shard_task(location: str, grid_id: str, model_id: str, part: str, trained: np.ndarray,
                       tiles: np.ndarray, first_row: int, queries: np.ndarray, k: int) -> dict[str, Any]:
    """Run on a dask worker: open the store by its location (shared path or URL) and encode one shard."""
    store = open_worker_store(location)
    emb = open_embeddings(store, grid_id, model_id)
    return _encode_shard(store, emb, part, trained, tiles, first_row, queries, k)


def _run_shards(client, store: PaintingStore, emb: Embeddings, part: str, trained: np.ndarray, tiles: np.ndarray,
                shards: list[tuple[int, int]], queries: np.ndarray, k: int, merge) -> None:
    """Encode ``shards`` as dask tasks; ``merge`` them in row order as they come back."""
    from distributed import as_completed

    trained_f, queries_f = client.scatter([trained, queries], broadcast=True)
    stamp = time.time_ns()
    futures = [
        client.submit(_encode_shard_task, str(store.path), emb.grid_id, emb.model_id, part, trained_f, tiles[a:b], a,
                      queries_f, k, pure=False, key=f"nightwatch-index-{emb.model_id}-{emb.grid_id}-{a}-{stamp}")
        for a, b in shards
    ]
    order = [a for a, _ in shards]
    pending: dict[int, dict] = {}
    nxt = 0
    try:
        for fut in as_completed(futures):
            res = fut.result()
            fut.release()
            pending[res["first_row"]] = res
            # lists are appended in row order (results arrive in any order); what waits is
            # a few shards' codes, not the index
            while nxt < len(order) and order[nxt] in pending:
                merge(pending.pop(order[nxt]))
                nxt += 1
    except BaseException:
        client.cancel(futures)
        raise


def _build_ivfpq(store: PaintingStore, emb: Embeddings, g, spec: IndexSpec, tiles: np.ndarray, queries: np.ndarray,
                 k: int, *, client, shard_rows: int | None,
                 progress: ProgressCallback | None) -> tuple[Any, np.ndarray, np.ndarray, dict[str, int]]:
    """Train, encode shard by shard (here or on ``client``'s workers), append the lists in row order."""
    import faiss

    index = _new_faiss_index(spec)
    rows, chunk = _shard_layout(tiles.size, shard_rows)
    shards = [(a, min(tiles.size, a + rows)) for a in range(0, tiles.size, rows)]
    total = 1 + len(shards)
    report(progress, 0, total, "index: train")
    t0 = time.perf_counter()
    rng = np.random.default_rng(0)
    train = emb.read(np.sort(rng.choice(tiles, size=spec.params["train_size"], replace=False)))
    index.train(train)
    del train
    t_train = time.perf_counter() - t0
    # the empty trained index every shard encodes against: the same quantizer everywhere
    trained = np.asarray(faiss.serialize_index(index), dtype=np.uint8)
    g.create_array("rerank", shape=(tiles.size, emb.dim), dtype=np.float16, chunks=(chunk, emb.dim),
                   compressors=None, fill_value=0)
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    state = {"done": 1}
    signature = jsonable(emb.signature)

    def merge(res: dict) -> None:
        if res["signature"] != signature:
            raise NightwatchError(
                f"The embeddings {emb.grid_id}/{emb.model_id} in {store.path} changed while the index was built "
                "(a worker read a different signature); run `nightwatch index` again once they are final."
            )
        _append_lists(index, res["sizes"], res["codes"], res["ids"])
        heap.add_result(np.ascontiguousarray(res["D"]), np.ascontiguousarray(res["I"]))
        state["done"] += 1
        report(progress, state["done"], total, "index: add")

    workers = 0
    if client is None:
        for a, b in shards:
            merge(_encode_shard(store, emb, g.path, trained, tiles[a:b], a, queries, k))
    else:
        with connected(client) as c:
            workers = n_workers(c)
            _run_shards(c, store, emb, g.path, trained, tiles, shards, queries, k, merge)
    heap.finalize()
    return index, heap.D, heap.I, {"shards": len(shards), "shard_rows": rows, "workers": workers,
                                   "train_seconds": t_train, "encode_seconds": time.perf_counter() - t0 - t_train}


def _build_in_ram(emb: Embeddings, spec: IndexSpec, tiles: np.ndarray, queries: np.ndarray, k: int,
                  progress: ProgressCallback | None) -> tuple[Any, np.ndarray, np.ndarray]:
    """Flat or HNSW: add every block to one table or graph, in this process."""
    import faiss

    index = _new_faiss_index(spec)
    blocks = [tiles[i : i + READ_ROWS] for i in range(0, tiles.size, READ_ROWS)]
    heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
    for done, block in enumerate(blocks, start=1):
        vecs = emb.read(block)
        index.add(vecs)
        scores = queries @ vecs.T
        if block.size > k:
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            heap.add_result(np.take_along_axis(scores, top, axis=1), block[top])
        else:
            heap.add_result(scores, np.broadcast_to(block, scores.shape).copy())
        report(progress, done, len(blocks), "index: add")
    heap.finalize()
    return index, heap.D, heap.I


def build_index(
    store: PaintingStore | str | Path,
    grid_id: str | None = None,
    model_id: str | None = None,
    *,
    memory_budget_bytes: int | None = None,
    kind: str | None = None,
    on_disk: bool | None = None,
    expected_vectors: int | None = None,
    client: Any = None,
    shard_rows: int | None = None,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Build the index of a grid's embeddings and serialise it into the store.

    Parameters
    ----------
    store
        The painting store (path, URL or writable :class:`PaintingStore`).
    grid_id, model_id
        Which embeddings; default: the only ones the store holds.
    memory_budget_bytes
        RAM the index may take (see :func:`choose_index`).
    kind
        Force the index type ("flat", "hnsw", "ivfpq"); default: chosen by size and budget.
    on_disk
        True: IVF-PQ with memory-mapped inverted lists; False: never; None (default): when
        no in-RAM index fits the budget (:func:`choose_index`).
    expected_vectors
        Size to choose the index for when more tiles will be added later (default: the
        kept tiles of the grid, embedded or not).
    client
        A ``distributed.Client`` or a scheduler address ``"tcp://HOST:PORT"``: IVF-PQ shards
        are encoded on its workers, each reading its rows of the embeddings from the store
        by its location (a shared path or a URL) and writing its re-ranking rows; this
        process trains the quantizer once and appends the shards' lists in row order, so
        the index is the one an in-process build makes. Flat and HNSW builds add to one
        table or graph and run in this process even with a client.
    shard_rows
        Rows per IVF-PQ shard (default :data:`DEFAULT_SHARD_ROWS`, 262,144); see
        :func:`_shard_layout` for the rounding.
    cache_dir
        For a store on object storage, where the built on-disk index stays cached for
        searching (default :func:`default_cache_dir`).
    progress
        ``progress(done, total, stage)``.

    Returns
    -------
    dict
        The index attributes: type, on_disk, parameters, n_vectors, recall_at_10 against
        exact search on perturbed stored vectors, build_seconds, memory, shards, workers.

    Notes
    -----
    Indexes every kept tile whose embedding chunk is done. Embeddings are read in
    blocks of rows, so RAM stays at the index plus one block (flat/HNSW hold the
    vectors anyway). An IVF-PQ build holds its codes in this process until they are
    written (``m + 8`` bytes per vector: 1.03 GB for the Night Watch); searching an
    on-disk index does not. Nothing is marked complete until everything is written; on
    failure the partial index group is removed.
    """
    store = PaintingStore.coerce(store, "r+")
    gid, mid = resolve_grid_model(store, grid_id, model_id)
    with store.job(_index_path(gid, mid), "nightwatch index"):
        return _build_index(store, gid, mid, memory_budget_bytes=memory_budget_bytes, kind=kind, on_disk=on_disk,
                            expected_vectors=expected_vectors, client=client, shard_rows=shard_rows,
                            cache_dir=cache_dir, progress=progress)


def _build_index(store: PaintingStore, grid_id: str, model_id: str, *, memory_budget_bytes: int | None,
                 kind: str | None, on_disk: bool | None, expected_vectors: int | None, client: Any,
                 shard_rows: int | None, cache_dir: str | Path | None,
                 progress: ProgressCallback | None) -> dict[str, Any]:
    """:func:`build_index` under the index's job lock."""
    import faiss

    t0 = time.perf_counter()
    emb = open_embeddings(store, grid_id, model_id)
    tiles = emb.available
    if tiles.size == 0:
        raise NightwatchError(
            f"The embeddings {emb.grid_id}/{emb.model_id} in {store.path} have no finished tiles yet; "
            "run `nightwatch embed` first."
        )
    n_expected = int(expected_vectors or max(tiles.size, int(emb.keep.sum())))
    spec = choose_index(n_expected, emb.dim, memory_budget_bytes, kind=kind, on_disk=on_disk)
    # IVF lists and codebooks are trained on the vectors at hand, so size them for those
    spec = _trained_spec(spec, tiles.size)
    part = _index_path(emb.grid_id, emb.model_id)
    store.mark_incomplete(part)
    if store.has(part):
        del store.root[part]
    try:
        g = store.group(part, create=True)
        queries = _recall_queries(emb, tiles, RECALL_QUERIES)
        k = min(RECALL_K, tiles.size)
        layout = {"shards": 0, "shard_rows": 0, "workers": 0}
        if spec.kind == "ivfpq":
            index, exact_d, exact_i, layout = _build_ivfpq(store, emb, g, spec, tiles, queries, k, client=client,
                                                           shard_rows=shard_rows, progress=progress)
        else:
            index, exact_d, exact_i = _build_in_ram(emb, spec, tiles, queries, k, progress)
        index_file = None
        if spec.on_disk:
            digest, index_file, tile_file = _write_mapped(store, g, index, tiles, cache_dir)
            # searched below through the memory map, exactly as every later load will
            del index
            index = faiss.read_index(str(index_file), faiss.IO_FLAG_MMAP)
            ids: np.ndarray = np.memmap(tile_file, dtype="<i8", mode="r", shape=(tiles.size,))
        else:
            g.create_array("tile_ids", data=tiles.astype(np.int64), chunks=(min(tiles.size, 1 << 20),))
            digest = _write_faiss_bytes(g, index)
            ids = tiles
        vi = _make_vector_index(store, emb, g, spec.kind, spec.params, ids, index, digest=digest,
                                cache_dir=cache_dir, index_file=index_file)
        scores, found = vi.search(queries, k)
        recall = recall_at_k(exact_d, exact_i, scores, found, k)
        t_query = time.perf_counter()
        vi.search(queries[:1], k)
        attrs = {
            "index_type": spec.kind,
            "on_disk": spec.on_disk,
            "params": spec.params,
            "reason": spec.reason,
            "n_vectors": int(tiles.size),
            "dim": emb.dim,
            "recall_at_10": recall,
            "recall_queries": int(queries.shape[0]),
            "query_seconds": time.perf_counter() - t_query,
            "build_seconds": time.perf_counter() - t0,
            "bytes_per_vector": spec.bytes_per_vector,
            "disk_bytes_per_vector": spec.disk_bytes_per_vector,
            "memory_bytes": vi.memory_bytes(),
            "signature": emb.signature,
            "n_added_since_build": 0,
            **layout,
        }
        g.attrs["nightwatch"] = jsonable(attrs)
        store.mark_complete(part, index_type=spec.kind, n_vectors=int(tiles.size), recall_at_10=recall,
                            embeddings=f"grids/{emb.grid_id}/embeddings/{emb.model_id}")
    except BaseException:
        store.mark_incomplete(part)
        if store.has(part):
            del store.root[part]
        raise
    return {"store": str(store.path), "grid": emb.grid_id, "model_id": emb.model_id, **jsonable(attrs)}


def _make_vector_index(store: PaintingStore, emb: Embeddings, g, kind: str, params: dict, tiles: np.ndarray,
                       index, *, digest: str | None = None, cache_dir: str | Path | None = None,
                       index_file: Path | None = None) -> VectorIndex:
    rerank = None
    if kind == "ivfpq":
        arr = g["rerank"]
        local = _local_dir(store, arr.path)
        # on object storage: chunks fetched on first use into the cache entry of this index
        cache = None if local is not None or digest is None else _cache_entry(cache_dir, digest) / "rerank"
        rerank = _RowStore.open(arr, local, cache)
    vi = VectorIndex(index, kind, params, tiles, rerank, emb.signature, dict(g.attrs.get("nightwatch", {})),
                     index_file=index_file)
    # what a search needs to turn tile ids into boxes, kept so cached indexes skip the store
    vi.grid = emb.grid
    vi.pixel_size_um = store.mosaic_pixel_size_um if store.has_mosaic else float("nan")
    return vi


def load_index(store: PaintingStore | str | Path, grid_id: str | None = None, model_id: str | None = None,
               *, allow_unindexed: bool = False, cache_dir: str | Path | None = None) -> VectorIndex:
    """Load the serialised index of a grid's embeddings.

    Parameters
    ----------
    store
        The painting store (path, URL or :class:`PaintingStore`).
    grid_id, model_id
        Which embeddings; default: the only ones the store holds.
    allow_unindexed
        Load even when tiles were embedded after the index was built (for
        :func:`add_to_index`); searches refuse such an index, which would miss them.
    cache_dir
        For a store on object storage: where the files of an on-disk index and the
        re-ranking chunks are cached, in a folder named by the index checksum (default
        :func:`default_cache_dir`). They are fetched once, then memory-mapped.

    Returns
    -------
    VectorIndex
        For an on-disk index, the inverted lists and tile ids stay memory-mapped: loading
        reads the centroids and codebooks only, and a query the lists it scans.

    Raises
    ------
    NightwatchError
        If there is no finished index, it is stale or damaged (checksum, which for an
        on-disk index is read through its files on every load), its signature differs
        from the embeddings' (they were recomputed since), or it misses embedded tiles.
    """
    import faiss

    store = PaintingStore.coerce(store)
    emb = open_embeddings(store, grid_id, model_id)
    part = _index_path(emb.grid_id, emb.model_id)
    what = f"{emb.grid_id}/{emb.model_id} in {store.path}"
    if not store.is_complete(part):
        raise NightwatchError(
            f"{store.path} has no finished index for {emb.grid_id}/{emb.model_id}; build it with `nightwatch index`."
        )
    store.check_fresh(part, "rebuild it with `nightwatch index`")
    g = store.root[part]
    attrs = dict(g.attrs.get("nightwatch", {}))
    if jsonable(attrs.get("signature", {})) != jsonable(emb.signature):
        raise NightwatchError(
            f"The index {what} was built from embeddings with a different "
            "signature than the ones stored now; rebuild it with `nightwatch index`."
        )
    expected = dict(g.attrs.get("checksum", {})).get("sha256")  # indexes written before checksums have none
    damaged = NightwatchError(
        f"The index {what} is damaged (its bytes no longer match their "
        "checksum); rebuild it with `nightwatch index`."
    )
    index_file = None
    if attrs.get("on_disk"):
        if expected is None:
            raise damaged
        index_file, tile_file, entry = _mapped_files(store, g, expected, cache_dir, what)
        if _files_digest(index_file, tile_file) != expected:
            if entry is not None:  # a damaged copy is fetched again next time
                shutil.rmtree(entry, ignore_errors=True)
            raise damaged
        n = tile_file.stat().st_size // 8
        tiles: np.ndarray = np.memmap(tile_file, dtype="<i8", mode="r", shape=(n,))
        unindexed = 0 if allow_unindexed else _count_unindexed(emb.available, tile_file)
    else:
        raw = np.asarray(g["faiss"][...], dtype=np.uint8)
        tiles = np.asarray(g["tile_ids"][...], dtype=np.int64)
        if expected is not None and _index_digest(raw, tiles) != expected:
            raise damaged
        unindexed = 0 if allow_unindexed else np.setdiff1d(emb.available, tiles).size
    if unindexed:
        # built while the embedding was still running: serving it would silently miss those tiles
        raise NightwatchError(
            f"The index {what} holds {tiles.size} tiles but {unindexed} more "
            "have been embedded since it was built; add them with `nightwatch index --add` (or rebuild it)."
        )
    try:
        if index_file is not None:
            # centroids and codebooks are read; the inverted lists are memory-mapped in place
            index = faiss.read_index(str(index_file), faiss.IO_FLAG_MMAP)
        else:
            index = faiss.deserialize_index(raw)
    except RuntimeError as exc:
        raise NightwatchError(
            f"The index {what} cannot be read ({exc}); rebuild it with `nightwatch index`."
        ) from exc
    return _make_vector_index(store, emb, g, attrs["index_type"], attrs.get("params", {}), tiles, index,
                              digest=expected, cache_dir=cache_dir, index_file=index_file)


def add_to_index(
    store: PaintingStore | str | Path,
    grid_id: str | None = None,
    model_id: str | None = None,
    tiles: np.ndarray | None = None,
    *,
    cache_dir: str | Path | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Add newly embedded tiles to an existing index without rebuilding it.

    Parameters
    ----------
    store
        The painting store (path, URL or writable :class:`PaintingStore`).
    grid_id, model_id
        Which embeddings; default: the only ones the store holds.
    tiles
        Tile indices to add; default: every kept, embedded tile not yet in the index.
        Tiles already indexed are skipped.
    cache_dir
        Cache folder for a store on object storage (see :func:`load_index`).
    progress
        ``progress(done, total, stage)``.

    Returns
    -------
    dict
        ``added`` (count), ``n_vectors`` (after), ``index_type``.

    Notes
    -----
    FAISS ``add`` appends to the flat table, the HNSW graph or the IVF lists (the
    trained IVF centroids stay; rebuild when the painting grows many times over).
    The serialised bytes are rewritten and the part re-marked complete last. An
    on-disk index is read into RAM while tiles are added, then written back as files.
    Runs in this process.
    """
    store = PaintingStore.coerce(store, "r+")
    gid, mid = resolve_grid_model(store, grid_id, model_id)
    with store.job(_index_path(gid, mid), "nightwatch index --add"):
        return _add_to_index(store, gid, mid, tiles, cache_dir=cache_dir, progress=progress)


def _add_to_index(store: PaintingStore, grid_id: str, model_id: str, tiles: np.ndarray | None, *,
                  cache_dir: str | Path | None, progress: ProgressCallback | None) -> dict[str, Any]:
    """:func:`add_to_index` under the index's job lock."""
    import faiss

    vi = load_index(store, grid_id, model_id, allow_unindexed=True, cache_dir=cache_dir)
    emb = open_embeddings(store, grid_id, model_id)
    avail = emb.available
    if tiles is None:
        new = np.setdiff1d(avail, vi.tile_ids)
    else:
        tiles = np.unique(np.asarray(tiles, dtype=np.int64))
        missing = np.setdiff1d(tiles, avail)
        if missing.size:
            raise NightwatchError(
                f"Tiles {missing[:5].tolist()} of grid {emb.grid_id} are not embedded with {emb.model_id} "
                f"(or are masked out); embed them before adding them to the index."
            )
        new = np.setdiff1d(tiles, vi.tile_ids)
    part = _index_path(emb.grid_id, emb.model_id)
    g = store.root[part]
    attrs = dict(g.attrs.get("nightwatch", {}))
    if new.size == 0:
        return {"added": 0, "n_vectors": vi.n_vectors, "index_type": vi.kind}
    on_disk = vi.on_disk
    index = vi.index
    old_ids = None
    if on_disk:
        # the memory-mapped lists are read-only: add to a copy in RAM, written back as new files
        index = faiss.read_index(str(vi.index_file))
        old_ids = np.array(vi.tile_ids, dtype=np.int64)
    n0 = vi.n_vectors
    del vi
    store.mark_incomplete(part)
    try:
        blocks = [new[i : i + READ_ROWS] for i in range(0, new.size, READ_ROWS)]
        ids_arr = None if on_disk else g["tile_ids"]
        if ids_arr is not None:
            ids_arr.resize((n0 + new.size,))
        if attrs["index_type"] == "ivfpq":
            g["rerank"].resize((n0 + new.size, emb.dim))
        off = n0
        for i, block in enumerate(blocks):
            vecs = emb.read(block)
            index.add(vecs)
            if ids_arr is not None:
                ids_arr[off : off + block.size] = block
            if attrs["index_type"] == "ivfpq":
                g["rerank"][off : off + block.size] = vecs.astype(np.float16)
            off += block.size
            report(progress, i + 1, len(blocks), "index: add")
        if on_disk:
            _write_mapped(store, g, index, np.concatenate([old_ids, new]), cache_dir)
        else:
            _write_faiss_bytes(g, index)
        attrs["n_vectors"] = int(n0 + new.size)
        attrs["n_added_since_build"] = int(attrs.get("n_added_since_build", 0)) + int(new.size)
        g.attrs["nightwatch"] = jsonable(attrs)
        store.mark_complete(part, index_type=attrs["index_type"], n_vectors=int(n0 + new.size),
                            recall_at_10=attrs.get("recall_at_10"),
                            embeddings=f"grids/{emb.grid_id}/embeddings/{emb.model_id}")
    except BaseException:
        # the index no longer matches its bytes: drop it rather than leave it half-updated
        if store.has(part):
            del store.root[part]
        raise
    return {"added": int(new.size), "n_vectors": int(n0 + new.size), "index_type": attrs["index_type"]}


def index_from_vectors(vectors: np.ndarray, spec: IndexSpec, tile_ids: np.ndarray | None = None) -> VectorIndex:
    """Build an in-memory :class:`VectorIndex` from ``(n, dim)`` unit vectors (no store).

    The same index types and search path as :func:`build_index`; the re-ranking
    vectors of "ivfpq" are kept in RAM as float16. Used by benchmarks and by callers
    that hold embeddings already.

    Parameters
    ----------
    vectors
        ``(n, dim)`` L2-normalised vectors.
    spec
        From :func:`choose_index`; IVF parameters are re-derived for ``n`` when training.
    tile_ids
        Id returned for each row (default ``arange(n)``).

    Returns
    -------
    VectorIndex
    """
    x = np.asarray(vectors)
    n, dim = x.shape
    if dim != spec.dim:
        raise NightwatchError(f"Vectors have dimension {dim}; the index spec expects {spec.dim}.")
    spec = _trained_spec(spec, n)
    index = _new_faiss_index(spec)
    rerank = None
    if spec.kind == "ivfpq":
        rng = np.random.default_rng(0)
        index.train(np.asarray(x[np.sort(rng.choice(n, size=spec.params["train_size"], replace=False))], np.float32))
        rerank = _RowStore([np.asarray(x, dtype=np.float16)], n, n)
    # added block by block so a float16 input is never copied whole to float32
    for i in range(0, n, READ_ROWS):
        index.add(unit_rows(x[i : i + READ_ROWS]))
    ids = np.arange(n, dtype=np.int64) if tile_ids is None else np.asarray(tile_ids, dtype=np.int64)
    return VectorIndex(index, spec.kind, spec.params, ids, rerank)
