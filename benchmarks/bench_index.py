"""Index benchmark: the index chosen for a whole painting, at 1,000,000 clustered 512-d vectors.

Data: unit vectors drawn from a mixture of a few thousand Gaussian clusters on the
sphere (real CLIP tile embeddings cluster by material and texture), stored as
float16 like the embeddings in a painting store. Queries are fresh draws from the
same mixture (new exemplars, not stored vectors).

Measured side by side in one run: exact flat search (IndexFlatIP) and the index
``choose_index`` picks for the full Night Watch (14.3 million tiles, 4 GB budget):
single-query p50 latency, the latency ratio, recall@10 against exact search, and the
RAM that index takes at 14.3 M vectors (from its measured bytes per vector).

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_index.py [--n 1000000]
Targets (issue 4): p50 <= 10 ms, recall@10 >= 0.95, RAM at 14.3 M <= 4 GB.
"""

from __future__ import annotations

import argparse
import time

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


def main() -> None:
    import faiss

    from napari_nightwatch.search.index import choose_index, index_from_vectors, recall_at_k
    from napari_nightwatch.store.embeddings import unit_rows

    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--clusters", type=int, default=3000)
    ap.add_argument("--queries", type=int, default=500)
    ap.add_argument("--flat-latency-queries", type=int, default=20)
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
