"""Index benchmark: the index chosen for a whole painting, at 1,000,000 clustered 512-d vectors.

Data: unit vectors drawn from a mixture of a few thousand Gaussian clusters on the
sphere (real CLIP tile embeddings cluster by material and texture), stored as
float16 like the embeddings in a painting store. Queries are fresh draws from the
same mixture (new exemplars, not stored vectors).

Measured side by side in one run: exact flat search (IndexFlatIP) and the index
``choose_index`` picks for the full Night Watch (14.3 million tiles, 4 GB budget):
single-query p50 latency, the latency ratio, recall@10 against exact search, and the
RAM that index takes at 14.3 M vectors (from its measured bytes per vector).

Part "scale" (issue 15): a real painting store holding ``--store-n`` clustered vectors as
its embeddings, indexed by ``build_index`` three ways: in-memory IVF-PQ, on-disk IVF-PQ
(inverted lists memory-mapped from the store), and on-disk built as shards on a
``LocalCluster`` of ``--workers`` processes. Each index is loaded in a fresh process
(load time, resident and malloc'd memory after load, single-query latency with the
page cache dropped for the index files and warm, recall@10 on held-out queries against
exact search); the sharded index is compared byte for byte with the in-process one.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_index.py [--part chosen|scale|all] [--n 1000000]
Targets (issue 4): p50 <= 10 ms, recall@10 >= 0.95, RAM at 14.3 M <= 4 GB.
Targets (issue 15): on-disk recall@10 equal to in-memory; resident memory after load far
below the lists; sharded build byte-identical to the in-process one.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

NIGHT_WATCH_TILES = 14_300_000


def clustered_unit_vectors(n: int, dim: int, n_clusters: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` float16 unit vectors from a mixture of ``n_clusters`` Gaussian clusters on the sphere."""
    centres = rng.standard_normal((n_clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    # cluster spreads so that members sit at cosine ~0.75-0.9 from their centre
    spread = rng.uniform(0.6, 1.0, n_clusters).astype(np.float32) / np.sqrt(dim)
    out = np.empty((n, dim), np.float16)
    step = 100_000
    for i in range(0, n, step):
        m = min(step, n - i)
        c = rng.integers(0, n_clusters, m)
        x = centres[c] + rng.standard_normal((m, dim)).astype(np.float32) * spread[c, None]
        x /= np.linalg.norm(x, axis=1, keepdims=True)
        out[i : i + m] = x
    return out


def single_query_latencies(search, queries: np.ndarray, k: int) -> np.ndarray:
    t = []
    for q in queries:
        t0 = time.perf_counter()
        search(q[None], k)
        t.append(time.perf_counter() - t0)
    return np.asarray(t)


def run_chosen(args) -> None:
    """Exact flat search vs the index chosen for the whole Night Watch (issue 4)."""
    import faiss

    from napari_nightwatch.search.index import choose_index, index_from_vectors, recall_at_k
    from napari_nightwatch.store.embeddings import unit_rows

    rng = np.random.default_rng(0)
    k = 10

    t0 = time.perf_counter()
    half = clustered_unit_vectors(args.n + args.queries, args.dim, args.clusters, rng)
    queries = half[args.n :].astype(np.float32)
    base = half[: args.n]
    print(f"data: {args.n} x {args.dim} float16 unit vectors, {args.clusters} clusters, "
          f"{args.queries} held-out queries ({time.perf_counter() - t0:.1f} s)")

    flat = faiss.IndexFlatIP(args.dim)
    for i in range(0, args.n, 100_000):
        flat.add(unit_rows(base[i : i + 100_000]))  # as the index sees stored float16 rows
    t0 = time.perf_counter()
    exact_d, exact_i = flat.search(queries, k)
    print(f"exact ground truth for {args.queries} queries (batched): {time.perf_counter() - t0:.1f} s")
    flat_lat = single_query_latencies(flat.search, queries[: args.flat_latency_queries], k)

    del flat  # free its 2 GB before building the chosen index
    spec = choose_index(NIGHT_WATCH_TILES, args.dim)
    print(f"chosen for {NIGHT_WATCH_TILES} tiles: {spec.kind} ({spec.reason})")
    t0 = time.perf_counter()
    vi = index_from_vectors(base, spec)
    build_s = time.perf_counter() - t0
    print(f"built {vi.kind} {vi.params} on {args.n} vectors in {build_s:.1f} s")
    vi.search(queries[:5], k)  # warm-up
    lat = single_query_latencies(vi.search, queries, k)
    d, i = vi.search(queries, k)
    recall = recall_at_k(exact_d, exact_i, d, i, k)

    ram_at_n = faiss.serialize_index(vi.index).size + vi.tile_ids.nbytes
    per_vec = ram_at_n / args.n
    fixed = 4 * args.dim * (vi.params["nlist"] + (1 << vi.params["nbits"])) if vi.kind == "ivfpq" else 0
    ram_nw = fixed + (ram_at_n - fixed) / args.n * NIGHT_WATCH_TILES
    disk_nw = spec.disk_bytes_per_vector * NIGHT_WATCH_TILES

    p50_flat = float(np.median(flat_lat)) * 1e3
    p50 = float(np.median(lat)) * 1e3
    print()
    print(f"{'':28s}{'exact flat':>14s}{vi.kind:>14s}")
    print(f"{'single-query p50 (ms)':28s}{p50_flat:14.2f}{p50:14.3f}")
    print(f"{'single-query p95 (ms)':28s}{np.percentile(flat_lat, 95) * 1e3:14.2f}{np.percentile(lat, 95) * 1e3:14.3f}")
    print(f"{'recall@10 vs exact':28s}{1.0:14.3f}{recall:14.4f}")
    print(f"{'RAM bytes per vector':28s}{4 * args.dim + 8:14.0f}{per_vec:14.1f}")
    print(f"{'RAM at 14.3 M vectors (GB)':28s}{(4 * args.dim + 8) * NIGHT_WATCH_TILES / 1e9:14.2f}{ram_nw / 1e9:14.2f}")
    print(f"speed-up of {vi.kind} over exact flat (p50 ratio): {p50_flat / p50:.0f}x")
    print(f"re-ranking vectors on disk (memory-mapped) at 14.3 M: {disk_nw / 1e9:.1f} GB")
    ok = p50 <= 10 and recall >= 0.95 and ram_nw <= 4e9
    print(f"targets (p50 <= 10 ms, recall@10 >= 0.95, RAM at 14.3 M <= 4 GB): {'met' if ok else 'NOT met'}")


# ----------------------------------------------------------------------------- part "scale" (issue 15)
class _Signature:
    """Stands in for an embedding model: the store only needs its signature."""

    model_id = "bench__clustered"

    def __init__(self, dim: int) -> None:
        self.signature = {"model": "bench", "pretrained": "none", "model_hash": "clustered-seed-0", "dim": dim,
                          "preprocessing": {"input": "synthetic"}}


def make_store(path: Path, n: int, dim: int, clusters: int, rng: np.random.Generator) -> np.ndarray:
    """A painting store whose 2-px grid has >= ``n`` tiles embedded with clustered vectors; returns them."""
    from napari_nightwatch.core.jsonutil import jsonable
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.embeddings import embedding_signature
    from napari_nightwatch.store.sources import write_mosaic_array
    from napari_nightwatch.store.tiles import make_grid

    side = 2 * int(np.ceil(np.sqrt(n)))
    store = PaintingStore.create(path)
    write_mosaic_array(store, np.zeros((side, side, 3), np.uint8), pixel_size_um=5.0, source="bench")
    grid = make_grid(store, level=0, tile=2, mask="none")
    model = _Signature(dim)
    x = clustered_unit_vectors(grid.n_tiles, dim, clusters, rng)
    chunk = 4096
    g = store.group(f"grids/{grid.grid_id}/embeddings/{model.model_id}", create=True)
    g.create_array("vectors", data=x, chunks=(chunk, dim))
    n_chunks = -(-grid.n_tiles // chunk)
    g.create_array("done", data=np.ones(n_chunks, bool), chunks=(n_chunks,))
    g.attrs["nightwatch"] = jsonable({"signature": embedding_signature(store, model, grid), "dim": dim,
                                      "chunk_tiles": chunk})
    store.mark_complete(f"grids/{grid.grid_id}/embeddings/{model.model_id}", model_id=model.model_id)
    return x


def _drop_from_page_cache(folder: Path) -> None:
    """Ask the kernel to forget the cached pages of every file under ``folder`` (no root needed)."""
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def _malloc_held() -> int:
    try:
        class MallInfo2(ctypes.Structure):
            _fields_ = [(k, ctypes.c_size_t) for k in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                       "fsmblks", "uordblks", "fordblks", "keepcost")]

        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = MallInfo2
        m = libc.mallinfo2()
        return int(m.uordblks + m.hblkhd)
    except (OSError, AttributeError):  # not glibc
        return -1


def _rss() -> dict[str, int]:
    """Resident memory: all, anonymous (what the process holds) and file-backed (mapped files, code)."""
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def _mapped(path: Path) -> int:
    """Resident bytes of this process's mappings of one file."""
    total, mine = 0, False
    with open("/proc/self/smaps") as fh:
        for line in fh:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):
                mine = head[-1] == str(path)
            elif mine and line.startswith("Rss:"):
                total += int(head[1]) * 1024
    return total


def child(store: str, queries_file: str, truth_file: str, out_file: str) -> None:
    """In a fresh process: load the index, measure memory, cold and warm latency, recall."""
    import faiss

    from napari_nightwatch.search.index import load_index, recall_at_k
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.embeddings import open_embeddings

    queries = np.load(queries_file)
    truth = np.load(truth_file)
    st = PaintingStore.open(store)
    # first-use costs (FAISS's library, zarr's codecs) before the measurement, not in it
    faiss.IndexFlatIP(8).search(np.zeros((1, 8), np.float32), 1)
    open_embeddings(st).read(np.arange(2))
    part = Path(store) / "grids"
    _drop_from_page_cache(part)  # the index files and re-ranking rows, as after a reboot
    rss0, held0 = _rss(), _malloc_held()
    t0 = time.perf_counter()
    vi = load_index(st)
    load_s = time.perf_counter() - t0
    rss1, held1 = _rss(), _malloc_held()
    mapped_load = _mapped(vi.index_file) if vi.on_disk else 0
    _drop_from_page_cache(part)  # the checksum pass read the files: cold again for the first queries
    cold = single_query_latencies(vi.search, queries[:20], 10)
    warm = single_query_latencies(vi.search, queries, 10)  # pages of lists and rows touched so far stay cached
    rss2 = _rss()
    d, i = vi.search(queries, 10)
    exact_d = truth[:, :10]
    exact_i = truth[:, 10:].astype(np.int64)
    out = {
        "on_disk": vi.on_disk, "load_s": load_s, "rss_growth_load": rss1["VmRSS"] - rss0["VmRSS"],
        "anon_growth_load": rss1["RssAnon"] - rss0["RssAnon"], "file_growth_load": rss1["RssFile"] - rss0["RssFile"],
        "held_growth_load": held1 - held0, "mapped_index_after_load": mapped_load,
        "mapped_index_after_queries": _mapped(vi.index_file) if vi.on_disk else 0,
        "anon_growth_after_queries": rss2["RssAnon"] - rss0["RssAnon"],
        "rss_growth_after_queries": rss2["VmRSS"] - rss0["VmRSS"], "cold_p50_ms": float(np.median(cold) * 1e3),
        "warm_p50_ms": float(np.median(warm) * 1e3), "warm_p95_ms": float(np.percentile(warm, 95) * 1e3),
        "recall_at_10": recall_at_k(exact_d, exact_i, d, i, 10), "memory_bytes": vi.memory_bytes(),
        "lists_bytes": vi.n_vectors * (vi.index.code_size + 8), "ids": i.tolist(),
        "index_file_bytes": vi.index_file.stat().st_size if vi.index_file else 0,
    }
    Path(out_file).write_text(json.dumps(out))


def _measure(store: Path, queries_file: Path, truth_file: Path) -> dict:
    out = store.parent / "measure.json"
    # a fixed glibc mmap threshold returns freed temporaries of the load to the system, so the
    # growth measured is what the index keeps (as in tests/test_search_index_ondisk.py)
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072", MALLOC_TRIM_THRESHOLD_="131072")
    subprocess.run([sys.executable, __file__, "--child", str(store), str(queries_file), str(truth_file), str(out)],
                   check=True, env=env)
    return json.loads(out.read_text())


def run_scale(args) -> None:
    """On-disk vs in-memory IVF-PQ from a store, and the sharded build on a LocalCluster (issue 15)."""
    import faiss

    from napari_nightwatch.search.index import build_index, choose_index
    from napari_nightwatch.store.embeddings import unit_rows

    rng = np.random.default_rng(1)
    root = Path(tempfile.mkdtemp(prefix="bench-index-", dir=args.tmp))
    try:
        store = root / "bench.nightwatch.zarr"
        t0 = time.perf_counter()
        x = make_store(store, args.store_n, args.dim, args.clusters, rng)
        n = x.shape[0]
        queries = unit_rows(clustered_unit_vectors(args.queries, args.dim, args.clusters, np.random.default_rng(1)))
        print(f"\nstore: {n} tiles x {args.dim} float16 clustered embeddings ({time.perf_counter() - t0:.1f} s)")
        flat = faiss.IndexFlatIP(args.dim)
        for i in range(0, n, 100_000):
            flat.add(unit_rows(x[i : i + 100_000]))
        exact_d, exact_i = flat.search(queries, 10)
        del flat, x
        qf, tf = root / "queries.npy", root / "truth.npy"
        np.save(qf, queries)
        # tile id = row (no mask); ids < 2**24 are exact in float32
        np.save(tf, np.concatenate([exact_d, exact_i.astype(np.float32)], axis=1))

        res, info = {}, {}
        for name, kw in (("in-memory", {"kind": "ivfpq", "on_disk": False}), ("on-disk", {"on_disk": True})):
            t0 = time.perf_counter()
            info[name] = build_index(store, **kw)
            info[name]["wall_s"] = time.perf_counter() - t0
            res[name] = _measure(store, qf, tf)
        index_file = next((store / "grids").rglob("index/*/faiss/c/0"))
        in_process_bytes = index_file.read_bytes()

        from distributed import Client, LocalCluster

        # in-process and sharded builds alternate with the cluster up, so both see the same load
        builds: dict[str, list[dict]] = {"here": [], "sharded": []}
        identical = True
        with LocalCluster(n_workers=args.workers, processes=True, threads_per_worker=1, dashboard_address=None,
                          host="127.0.0.1") as cluster, Client(cluster) as client:
            for _ in range(args.repeats):
                for name, kw in (("here", {}), ("sharded", {"client": client, "shard_rows": args.shard_rows})):
                    t0 = time.perf_counter()
                    b = build_index(store, on_disk=True, **kw)
                    b["wall_s"] = time.perf_counter() - t0
                    builds[name].append(b)
                    identical &= index_file.read_bytes() == in_process_bytes

        m, d = res["in-memory"], res["on-disk"]
        print(f"index: IVF-PQ {info['on-disk']['params']['nlist']} lists, {info['on-disk']['params']['m']} B codes, "
              f"nprobe {info['on-disk']['params']['nprobe']}; lists {d['lists_bytes'] / 1e6:.1f} MB, "
              f"index file {d['index_file_bytes'] / 1e6:.1f} MB")
        print(f"\n{'':38s}{'in-memory':>12s}{'on-disk':>12s}{'ratio':>9s}")

        def row(label: str, a: float, b: float, fmt: str = "12.3f") -> None:
            ratio = b / a if a else float("nan")
            print(f"{label:38s}{a:{fmt}}{b:{fmt}}{ratio:9.2f}")

        row("load time (s, checksum included)", m["load_s"], d["load_s"])
        row("RSS growth on load (MB)", m["rss_growth_load"] / 1e6, d["rss_growth_load"] / 1e6)
        row("  anonymous (MB)", m["anon_growth_load"] / 1e6, d["anon_growth_load"] / 1e6)
        row("  file-backed: code, mapped files (MB)", m["file_growth_load"] / 1e6, d["file_growth_load"] / 1e6)
        row("malloc'd growth on load (MB)", m["held_growth_load"] / 1e6, d["held_growth_load"] / 1e6)
        nq = args.queries + 20
        row(f"RSS growth after {nq} queries (MB)", m["rss_growth_after_queries"] / 1e6,
            d["rss_growth_after_queries"] / 1e6)
        row(f"  anonymous, after {nq} queries (MB)", m["anon_growth_after_queries"] / 1e6,
            d["anon_growth_after_queries"] / 1e6)
        row("index.memory_bytes() (MB)", m["memory_bytes"] / 1e6, d["memory_bytes"] / 1e6)
        row("first 20 queries, cold cache, p50 (ms)", m["cold_p50_ms"], d["cold_p50_ms"])
        row("single-query p50, warm (ms)", m["warm_p50_ms"], d["warm_p50_ms"])
        row("single-query p95, warm (ms)", m["warm_p95_ms"], d["warm_p95_ms"])
        row("recall@10 vs exact (held-out)", m["recall_at_10"], d["recall_at_10"], "12.4f")
        print(f"on-disk, growth on load / lists bytes: RSS {d['rss_growth_load'] / d['lists_bytes']:.3f}, "
              f"anonymous {d['anon_growth_load'] / d['lists_bytes']:.3f}, malloc'd "
              f"{d['held_growth_load'] / d['lists_bytes']:.3f}; index file resident in this process after load "
              f"{d['mapped_index_after_load'] / 1e6:.2f} MB, after the queries "
              f"{d['mapped_index_after_queries'] / 1e6:.2f} MB")
        print(f"same result ids on all {args.queries} queries: {m['ids'] == d['ids']}; "
              f"recall@10 equal: {m['recall_at_10'] == d['recall_at_10']}")
        def med(name: str, key: str) -> float:
            return float(np.median([b[key] for b in builds[name]]))

        a, b = builds["here"][0], builds["sharded"][0]
        print(f"\nbuild, on-disk ({args.repeats} alternating repeats, medians): in-process ({a['shards']} shard) "
              f"{med('here', 'wall_s'):.1f} s (train {med('here', 'train_seconds'):.1f} s, encode "
              f"{med('here', 'encode_seconds'):.1f} s); {b['workers']} workers ({b['shards']} shards of "
              f"{b['shard_rows']} rows) {med('sharded', 'wall_s'):.1f} s (train {med('sharded', 'train_seconds'):.1f} s, "
              f"encode {med('sharded', 'encode_seconds'):.1f} s)")
        print(f"sharded / in-process build time: {med('sharded', 'wall_s') / med('here', 'wall_s'):.2f} "
              f"(encode only: {med('sharded', 'encode_seconds') / med('here', 'encode_seconds'):.2f}); encode "
              f"cost per 1000 rows, in-process: {med('here', 'encode_seconds') / n * 1e3:.3f} s")
        print(f"every sharded and in-process index file byte-identical to the first in-process one: {identical}")
        nw = choose_index(NIGHT_WATCH_TILES, args.dim, on_disk=True)
        print(f"\nat {NIGHT_WATCH_TILES} tiles x {args.dim}: on-disk resident {nw.memory_bytes(NIGHT_WATCH_TILES) / 1e6:.1f} MB, "
              f"lists {NIGHT_WATCH_TILES * (nw.params['m'] + 8) / 1e9:.2f} GB + tile ids "
              f"{NIGHT_WATCH_TILES * 8 / 1e9:.2f} GB + re-ranking rows {NIGHT_WATCH_TILES * 2 * args.dim / 1e9:.1f} GB "
              "memory-mapped")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--part", choices=("chosen", "scale", "all"), default="all")
    ap.add_argument("--n", type=int, default=1_000_000, help="vectors for part 'chosen'")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--flat-latency-queries", type=int, default=20)
    ap.add_argument("--store-n", type=int, default=200_000, help="tiles of the store for part 'scale'")
    ap.add_argument("--workers", type=int, default=2, help="LocalCluster worker processes for part 'scale'")
    ap.add_argument("--shard-rows", type=int, default=65_536, help="rows per build shard for part 'scale'")
    ap.add_argument("--repeats", type=int, default=2, help="alternating build repeats for part 'scale'")
    ap.add_argument("--tmp", default=None, help="folder for the temporary store (default: the system's)")
    ap.add_argument("--child", nargs=4, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    if args.part in ("chosen", "all"):
        run_chosen(args)
    if args.part in ("scale", "all"):
        run_scale(args)


if __name__ == "__main__":
    main()
