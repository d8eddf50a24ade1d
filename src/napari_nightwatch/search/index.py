"""The FAISS vector index over a grid's tile embeddings, kept inside the painting store.

Layout (one index per grid and model)::

    grids/<grid_id>/index/<model_id>/   attrs["nightwatch"] = {index_type, params, n_vectors, dim,
                                        recall_at_10, recall_queries, build_seconds, signature,
                                        bytes_per_vector, disk_bytes_per_vector}
        faiss      (nbytes,) uint8        faiss.serialize_index bytes
        tile_ids   (n_vectors,) int64     faiss row -> tile index of the grid
        rerank     (n_vectors, dim) f16   only for "ivfpq": the exact vectors used to re-rank
                                          candidates, uncompressed so they are memory-mapped

How the index type is chosen (:func:`choose_index`), all on inner product of
L2-normalised vectors (= cosine similarity):

* fewer than ``FLAT_MAX_VECTORS`` (200,000) vectors: exact ``IndexFlatIP``. A query
  scans every vector (about 60 ms at 200k x 512-d on 2 cores), no training, recall 1.
* up to ``HNSW_MAX_VECTORS`` (1,000,000) vectors, when the float32 vectors plus the
  graph links fit the memory budget: ``IndexHNSWFlat`` (sub-millisecond queries, but
  ``4 * dim + 8 * M`` bytes per vector in RAM and a build that grows steeply with size).
* otherwise (whole paintings: millions of tiles): ``IndexIVFPQ`` holding only
  ``dim / 8`` bytes of product-quantised code per vector in RAM, whose candidates are
  re-ranked exactly against the float16 vectors memory-mapped from the store. This is
  the index that keeps 14.3 million tiles of the Night Watch around 1 GB of RAM.

The default memory budget is ``DEFAULT_MEMORY_BUDGET_BYTES`` (4 GB), a fixed number
rather than a fraction of this machine's RAM so the choice is reproducible.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.jsonutil import jsonable
from ..core.progress import ProgressCallback, report
from ..store import PaintingStore
from ..store.embeddings import READ_ROWS, Embeddings, open_embeddings, resolve_grid_model, unit_rows

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
#: rows read from the embeddings at a time while building


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
        RAM per indexed vector (codes or vectors, graph links, ids).
    disk_bytes_per_vector
        Bytes per vector kept on disk and memory-mapped (re-ranking vectors), 0 if none.
    reason
        One sentence saying why this type was chosen.
    """

    kind: str
    dim: int
    params: dict[str, Any] = field(default_factory=dict)
    bytes_per_vector: float = 0.0
    disk_bytes_per_vector: float = 0.0
    reason: str = ""

    def memory_bytes(self, n_vectors: int) -> int:
        """RAM the index takes for ``n_vectors`` (fixed parts such as IVF centroids included)."""
        fixed = 0
        if self.kind == "ivfpq":
            # coarse centroids (float32) + PQ codebooks (float32)
            fixed = 4 * self.dim * self.params["nlist"] + 4 * self.dim * (1 << self.params["nbits"])
        return int(fixed + self.bytes_per_vector * n_vectors)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "dim": self.dim,
            "params": dict(self.params),
            "bytes_per_vector": self.bytes_per_vector,
            "disk_bytes_per_vector": self.disk_bytes_per_vector,
            "reason": self.reason,
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
                     spec.bytes_per_vector, spec.disk_bytes_per_vector, spec.reason)


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
    n_vectors: int, dim: int, memory_budget_bytes: int | None = None, *, kind: str | None = None
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
        Force "flat", "hnsw" or "ivfpq" (parameters still follow the size).

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

    flat = IndexSpec("flat", dim, {}, _flat_bytes(dim), 0.0, "")
    hnsw = IndexSpec("hnsw", dim, {"M": HNSW_M, "ef_construction": 80, "ef_search": 128}, _hnsw_bytes(dim), 0.0, "")

    def ivfpq(dims_per_code: int) -> IndexSpec:
        m = _pq_m(dim, dims_per_code)
        return IndexSpec("ivfpq", dim, _ivf_params(n_vectors, dim, m), _ivfpq_bytes(m), 2.0 * dim, "")

    def why(spec: IndexSpec, text: str) -> IndexSpec:
        return IndexSpec(spec.kind, spec.dim, spec.params, spec.bytes_per_vector, spec.disk_bytes_per_vector, text)

    gb = budget / 1e9
    if kind == "flat":
        return why(flat, "exact flat index requested")
    if kind == "hnsw":
        return why(hnsw, "HNSW index requested")
    if kind is None and n_vectors < FLAT_MAX_VECTORS and flat.memory_bytes(n_vectors) <= budget:
        return why(flat, f"{n_vectors} vectors < {FLAT_MAX_VECTORS}: exact search is fast enough")
    if kind is None and n_vectors <= HNSW_MAX_VECTORS and hnsw.memory_bytes(n_vectors) <= budget:
        return why(hnsw, f"{n_vectors} vectors fit an HNSW graph within {gb:.1f} GB")
    # IVF-PQ: 8 dimensions per code byte by default, coarser codes if the budget demands it
    for dims_per_code in (8, 16, 32):
        spec = ivfpq(dims_per_code)
        if spec.memory_bytes(n_vectors) <= budget or kind == "ivfpq":
            return why(
                spec,
                f"{n_vectors} vectors: IVF-PQ ({spec.params['m']} B codes) fits {gb:.1f} GB; "
                "candidates are re-ranked exactly from float16 vectors on disk",
            )
    smallest = ivfpq(32).memory_bytes(n_vectors)
    raise NightwatchError(
        f"memory_budget_bytes={budget} is below the {smallest} bytes that the most compact index "
        f"needs for {n_vectors} vectors of dimension {dim}; raise the budget."
    )


# ------------------------------------------------------------------------------- store access
# ------------------------------------------------------------------------------- the index
class _RowStore:
    """float16 re-ranking vectors: memory-mapped zarr chunks, or an in-RAM array.

    FAISS's ``IndexRefineFlat`` would need the exact vectors in RAM (29 GB at 14.3 M
    x 512 float32), so they stay on disk as uncompressed float16 zarr chunks, which
    the zarr v3 spec lays out as raw little-endian rows, and are memory-mapped.
    """

    def __init__(self, chunks: list[np.ndarray], chunk_rows: int, n_rows: int) -> None:
        self.chunks = chunks
        self.chunk_rows = chunk_rows
        self.n_rows = n_rows

    @classmethod
    def open(cls, arr, path: Path | None) -> _RowStore:
        n, dim = (int(v) for v in arr.shape)
        rows = int(arr.chunks[0])
        n_chunks = -(-n // rows)
        raw = (
            path is not None
            and not arr.metadata.to_dict().get("codecs", [{}])[1:]  # only the bytes codec: raw chunks
            and arr.metadata.to_dict()["codecs"][0].get("configuration", {}).get("endian", "little") == "little"
        )
        chunks: list[np.ndarray] = []
        for i in range(n_chunks):
            f = path / "c" / str(i) / "0" if path is not None else None
            if raw and f is not None and f.exists() and f.stat().st_size == rows * dim * 2:
                chunks.append(np.memmap(f, dtype="<f2", mode="r", shape=(rows, dim)))
            else:
                chunks.append(np.asarray(arr[i * rows : min(n, (i + 1) * rows)], dtype=np.float16))
        return cls(chunks, rows, n)

    def take(self, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((rows.size, self.chunks[0].shape[1] if self.chunks else 0), np.float32)
        c, r = np.divmod(rows, self.chunk_rows)
        for ci in np.unique(c):
            sel = c == ci
            out[sel] = self.chunks[int(ci)][r[sel]]
        return unit_rows(out)


class VectorIndex:
    """A loaded index: :meth:`search` maps query vectors to the best tiles.

    Attributes
    ----------
    kind, params, dim, n_vectors, tile_ids, signature, attrs
        As stored in ``grids/<grid_id>/index/<model_id>``.
    """

    def __init__(self, faiss_index, kind: str, params: dict, tile_ids: np.ndarray, rerank: _RowStore | None = None,
                 signature: dict | None = None, attrs: dict | None = None) -> None:
        self.index = faiss_index
        self.kind = kind
        self.params = dict(params)
        self.tile_ids = np.asarray(tile_ids, dtype=np.int64)
        self.rerank = rerank
        self.signature = dict(signature or {})
        self.attrs = dict(attrs or {})
        self.grid = None  # TileGrid, set when loaded from a store
        self.pixel_size_um = float("nan")

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
        """RAM of the FAISS index (serialised size) plus the tile-id table."""
        import faiss

        return int(faiss.serialize_index(self.index).size + self.tile_ids.nbytes)


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


def _write_faiss_bytes(group, index) -> None:
    """Write the serialised index (after its ``tile_ids``) and the checksum of both."""
    import faiss

    buf = np.asarray(faiss.serialize_index(index), dtype=np.uint8)
    if "faiss" in group:
        del group["faiss"]
    arr = group.create_array("faiss", shape=buf.shape, dtype=np.uint8, chunks=(min(max(buf.size, 1), 1 << 24),))
    arr[...] = buf
    group.attrs["checksum"] = {"sha256": _index_digest(buf, np.asarray(group["tile_ids"][...])),
                               "of": "faiss bytes, then tile_ids as little-endian int64"}


def build_index(
    store: PaintingStore | str | Path,
    grid_id: str | None = None,
    model_id: str | None = None,
    *,
    memory_budget_bytes: int | None = None,
    kind: str | None = None,
    expected_vectors: int | None = None,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Build the index of a grid's embeddings and serialise it into the store.

    Parameters
    ----------
    store
        The painting store (path or writable :class:`PaintingStore`).
    grid_id, model_id
        Which embeddings; default: the only ones the store holds.
    memory_budget_bytes
        RAM the index may take (see :func:`choose_index`).
    kind
        Force the index type ("flat", "hnsw", "ivfpq"); default: chosen by size and budget.
    expected_vectors
        Size to choose the index for when more tiles will be added later (default: the
        kept tiles of the grid, embedded or not).
    progress
        ``progress(done, total, stage)``.

    Returns
    -------
    dict
        The index attributes: type, parameters, n_vectors, recall_at_10 against exact
        search on perturbed stored vectors, build_seconds, memory.

    Notes
    -----
    Indexes every kept tile whose embedding chunk is done. Embeddings are read in
    blocks of rows, so RAM stays at the index plus one block (flat/HNSW hold the
    vectors anyway). Nothing is marked complete until everything is written; on
    failure the partial index group is removed.
    """
    store = PaintingStore.coerce(store, "r+")
    gid, mid = resolve_grid_model(store, grid_id, model_id)
    with store.job(_index_path(gid, mid), "nightwatch index"):
        return _build_index(store, gid, mid, memory_budget_bytes=memory_budget_bytes, kind=kind,
                            expected_vectors=expected_vectors, progress=progress)


def _build_index(store: PaintingStore, grid_id: str, model_id: str, *, memory_budget_bytes: int | None,
                 kind: str | None, expected_vectors: int | None, progress: ProgressCallback | None) -> dict[str, Any]:
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
    spec = choose_index(n_expected, emb.dim, memory_budget_bytes, kind=kind)
    # IVF lists and codebooks are trained on the vectors at hand, so size them for those
    spec = _trained_spec(spec, tiles.size)
    index = _new_faiss_index(spec)
    part = _index_path(emb.grid_id, emb.model_id)
    store.mark_incomplete(part)
    if store.has(part):
        del store.root[part]
    blocks = [tiles[i : i + READ_ROWS] for i in range(0, tiles.size, READ_ROWS)]
    n_steps = len(blocks) + (1 if spec.kind == "ivfpq" else 0)
    try:
        g = store.group(part, create=True)
        if spec.kind == "ivfpq":
            report(progress, 0, n_steps, "index: train")
            rng = np.random.default_rng(0)
            train = emb.read(np.sort(rng.choice(tiles, size=spec.params["train_size"], replace=False)))
            index.train(train)
            del train
            rerank = g.create_array(
                "rerank", shape=(tiles.size, emb.dim), dtype=np.float16,
                chunks=(min(RERANK_CHUNK_ROWS, tiles.size), emb.dim), compressors=None, fill_value=0,
            )
        queries = _recall_queries(emb, tiles, RECALL_QUERIES)
        k = min(RECALL_K, tiles.size)
        heap = faiss.ResultHeap(queries.shape[0], k, keep_max=True)
        done = 1 if spec.kind == "ivfpq" else 0
        offset = 0
        for block in blocks:
            vecs = emb.read(block)
            index.add(vecs)
            # exact top-k computed alongside, block by block, for the recall measurement
            scores = queries @ vecs.T
            if block.size > k:
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                heap.add_result(np.take_along_axis(scores, top, axis=1), block[top])
            else:
                heap.add_result(scores, np.broadcast_to(block, scores.shape).copy())
            if spec.kind == "ivfpq":
                rerank[offset : offset + block.size] = vecs.astype(np.float16)
            offset += block.size
            done += 1
            report(progress, done, n_steps, "index: add")
        heap.finalize()
        g.create_array("tile_ids", data=tiles.astype(np.int64), chunks=(min(tiles.size, 1 << 20),))
        _write_faiss_bytes(g, index)
        vi = _make_vector_index(store, emb, g, spec.kind, spec.params, tiles, index)
        scores, ids = vi.search(queries, k)
        recall = recall_at_k(heap.D, heap.I, scores, ids, k)
        t_query = time.perf_counter()
        vi.search(queries[:1], k)
        attrs = {
            "index_type": spec.kind,
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
                       index) -> VectorIndex:
    rerank = None
    if kind == "ivfpq":
        local = Path(store.path) / g.path if Path(store.path).is_dir() else None
        rerank = _RowStore.open(g["rerank"], None if local is None else local / "rerank")
    vi = VectorIndex(index, kind, params, tiles, rerank, emb.signature, dict(g.attrs.get("nightwatch", {})))
    # what a search needs to turn tile ids into boxes, kept so cached indexes skip the store
    vi.grid = emb.grid
    vi.pixel_size_um = store.mosaic_pixel_size_um if store.has_mosaic else float("nan")
    return vi



def load_index(store: PaintingStore | str | Path, grid_id: str | None = None, model_id: str | None = None,
               *, allow_unindexed: bool = False) -> VectorIndex:
    """Load the serialised index of a grid's embeddings.

    Parameters
    ----------
    store
        The painting store.
    grid_id, model_id
        Which embeddings; default: the only ones the store holds.
    allow_unindexed
        Load even when tiles were embedded after the index was built (for
        :func:`add_to_index`); searches refuse such an index, which would miss them.

    Returns
    -------
    VectorIndex

    Raises
    ------
    NightwatchError
        If there is no finished index, it is stale or damaged (checksum), its
        signature differs from the embeddings' (they were recomputed since), or it
        misses embedded tiles.
    """
    import faiss

    store = PaintingStore.coerce(store)
    emb = open_embeddings(store, grid_id, model_id)
    part = _index_path(emb.grid_id, emb.model_id)
    if not store.is_complete(part):
        raise NightwatchError(
            f"{store.path} has no finished index for {emb.grid_id}/{emb.model_id}; build it with `nightwatch index`."
        )
    store.check_fresh(part, "rebuild it with `nightwatch index`")
    g = store.root[part]
    attrs = dict(g.attrs.get("nightwatch", {}))
    if jsonable(attrs.get("signature", {})) != jsonable(emb.signature):
        raise NightwatchError(
            f"The index {emb.grid_id}/{emb.model_id} in {store.path} was built from embeddings with a different "
            "signature than the ones stored now; rebuild it with `nightwatch index`."
        )
    raw = np.asarray(g["faiss"][...], dtype=np.uint8)
    tiles = np.asarray(g["tile_ids"][...], dtype=np.int64)
    expected = dict(g.attrs.get("checksum", {})).get("sha256")  # indexes written before checksums have none
    if expected is not None and _index_digest(raw, tiles) != expected:
        raise NightwatchError(
            f"The index {emb.grid_id}/{emb.model_id} in {store.path} is damaged (its bytes no longer match their "
            "checksum); rebuild it with `nightwatch index`."
        )
    unindexed = 0 if allow_unindexed else np.setdiff1d(emb.available, tiles).size
    if unindexed:
        # built while the embedding was still running: serving it would silently miss those tiles
        raise NightwatchError(
            f"The index {emb.grid_id}/{emb.model_id} in {store.path} holds {tiles.size} tiles but {unindexed} more "
            "have been embedded since it was built; add them with `nightwatch index --add` (or rebuild it)."
        )
    try:
        index = faiss.deserialize_index(raw)
    except RuntimeError as exc:
        raise NightwatchError(
            f"The index {emb.grid_id}/{emb.model_id} in {store.path} cannot be read ({exc}); rebuild it with "
            "`nightwatch index`."
        ) from exc
    return _make_vector_index(store, emb, g, attrs["index_type"], attrs.get("params", {}), tiles, index)


def add_to_index(
    store: PaintingStore | str | Path,
    grid_id: str | None = None,
    model_id: str | None = None,
    tiles: np.ndarray | None = None,
    *,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Add newly embedded tiles to an existing index without rebuilding it.

    Parameters
    ----------
    store
        The painting store (path or writable :class:`PaintingStore`).
    grid_id, model_id
        Which embeddings; default: the only ones the store holds.
    tiles
        Tile indices to add; default: every kept, embedded tile not yet in the index.
        Tiles already indexed are skipped.
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
    The serialised bytes are rewritten and the part re-marked complete last.
    """
    store = PaintingStore.coerce(store, "r+")
    gid, mid = resolve_grid_model(store, grid_id, model_id)
    with store.job(_index_path(gid, mid), "nightwatch index --add"):
        return _add_to_index(store, gid, mid, tiles, progress=progress)


def _add_to_index(store: PaintingStore, grid_id: str, model_id: str, tiles: np.ndarray | None, *,
                  progress: ProgressCallback | None) -> dict[str, Any]:
    """:func:`add_to_index` under the index's job lock."""
    vi = load_index(store, grid_id, model_id, allow_unindexed=True)
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
    store.mark_incomplete(part)
    try:
        n0 = vi.n_vectors
        blocks = [new[i : i + READ_ROWS] for i in range(0, new.size, READ_ROWS)]
        ids_arr = g["tile_ids"]
        ids_arr.resize((n0 + new.size,))
        if vi.kind == "ivfpq":
            g["rerank"].resize((n0 + new.size, emb.dim))
        off = n0
        for i, block in enumerate(blocks):
            vecs = emb.read(block)
            vi.index.add(vecs)
            ids_arr[off : off + block.size] = block
            if vi.kind == "ivfpq":
                g["rerank"][off : off + block.size] = vecs.astype(np.float16)
            off += block.size
            report(progress, i + 1, len(blocks), "index: add")
        _write_faiss_bytes(g, vi.index)
        attrs["n_vectors"] = int(n0 + new.size)
        attrs["n_added_since_build"] = int(attrs.get("n_added_since_build", 0)) + int(new.size)
        g.attrs["nightwatch"] = jsonable(attrs)
        store.mark_complete(part, index_type=vi.kind, n_vectors=int(n0 + new.size),
                            recall_at_10=attrs.get("recall_at_10"),
                            embeddings=f"grids/{emb.grid_id}/embeddings/{emb.model_id}")
    except BaseException:
        # the index no longer matches its bytes: drop it rather than leave it half-updated
        if store.has(part):
            del store.root[part]
        raise
    return {"added": int(new.size), "n_vectors": int(n0 + new.size), "index_type": vi.kind}


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
