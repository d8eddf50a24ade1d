#!/usr/bin/env python
"""Long jobs on a dask cluster vs in-process (issue 15, item 3), side by side in one run.

One synthetic painting (``synthesize_painting``, default 1024^2 mosaic with a 2-pixel
XRF pitch: a 512 x 512 x 1024 uint16 cube, 537 MB, in 144 storage chunks) is copied twice; on one copy
``xrf-maps`` runs in this process (2 fitting threads, the default), on the other on a
``LocalCluster`` of 2 worker processes x 1 thread, each opening the store by its path
and writing its own chunks. Then tile pairing (``pair_tiles``: footprint spectra of a
16-pixel tile grid) the same two ways. Printed, per job:

- wall time of each way and their ratio (cluster / in-process), and whether the
  outputs are byte for byte equal (``np.array_equal``);
- per-chunk cost: seconds per chunk (CPU time of read + fit + write, summed over
  chunks and divided by their number) and MB per chunk read and written;
- peak memory (VmHWM) of each worker process, and that of the idle worker, for
  docs/scaling.md;
- predict-xrf the same two ways on a bridge-ready painting (tests' helper: fitted
  maps, colour/texture embeddings, a 3-epoch bridge), with its per-chunk cost.

BLAS runs on one thread here (``OMP_NUM_THREADS=1``, as dask's nanny sets for its
workers), so both ways multiply with the same kernels.

Usage: ``.venv/bin/python benchmarks/bench_distributed.py [--size 1024] [--xrf-pixel 2]``
(about 2 minutes on 2 CPU cores).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")  # before numpy loads its BLAS

import argparse  # noqa: E402
import json  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402


def _max_rss_mb() -> float:
    """Peak resident memory of the calling process, MB (VmHWM: getrusage's ru_maxrss would carry the
    parent's peak over the fork + exec that starts a worker)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return float("nan")


def _predict_bench(work: Path, client_address: str, size: int) -> dict:
    """predict-xrf in-process vs on the cluster on two copies of a bridge-ready painting (tests' helper)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from _bridge_support import bridge_ready_store
    from napari_nightwatch.ml import bridge as B
    from napari_nightwatch.ml.bridge import predict as P
    from napari_nightwatch.store import PaintingStore

    store, _, _ = bridge_ready_store(work / "bridge.nightwatch.zarr", size=size, seed=1)
    B.train_xrf_bridge(store, epochs=3, threads=1)
    local = PaintingStore.open(shutil.copytree(store.path, work / "bridge-local.nightwatch.zarr"), mode="r+")
    spread = PaintingStore.open(shutil.copytree(store.path, work / "bridge-cluster.nightwatch.zarr"), mode="r+")
    bridge = B.load_xrf_bridge(local)
    emb = B.open_tile_embeddings(local, bridge.grid_id, bridge.image_model_id)
    tiles = emb.available
    P.PREDICT_CHUNK_TILES = chunk = max(64, tiles.size // 8)  # eight chunks for the cluster to share
    # one chunk alone, for the per-chunk cost
    t0 = time.perf_counter()
    P._estimate_chunk(local, bridge, emb, tiles[:chunk], emb.read(bridge.bank_tiles), 16, P._estimate_columns(bridge))
    chunk_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    a = B.predict_xrf_maps(local)
    local_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    B.predict_xrf_maps(spread, client=client_address)
    cluster_s = time.perf_counter() - t0
    name = a["name"]
    return {
        "tiles": int(tiles.size), "elements": len(bridge.element_names), "chunk_tiles": int(chunk), "in_process_s": round(local_s, 2),
        "cluster_s": round(cluster_s, 2), "ratio_cluster_over_in_process": round(cluster_s / local_s, 3),
        "equal": _same(local.root[f"predicted/{name}"], spread.root[f"predicted/{name}"]),
        "s_per_chunk": round(chunk_s, 3), "s_per_1000_tiles": round(1000 * chunk_s / chunk, 3),
        "MB_per_4096_tile_chunk": round(4096 * len(P._estimate_columns(bridge)) * len(bridge.element_names) * 4 / 1e6, 2),
    }


def _same(a, b) -> bool:
    names = sorted(n for n, _ in a.arrays())
    if names != sorted(n for n, _ in b.arrays()):
        return False
    return all(np.array_equal(np.asarray(a[n][...]), np.asarray(b[n][...]), equal_nan=True) for n in names)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024, help="mosaic edge in pixels")
    ap.add_argument("--xrf-pixel", type=int, default=2, help="XRF pixel in mosaic pixels (cube edge = size / this)")
    ap.add_argument("--workers", type=int, default=2, help="worker processes of the LocalCluster")
    ap.add_argument("--tile", type=int, default=16, help="tile edge of the pairing grid (mosaic pixels)")
    ap.add_argument("--predict-size", type=int, default=512, help="mosaic edge of the predict-xrf painting (0: skip)")
    args = ap.parse_args()

    import distributed

    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.tiles import make_grid
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting
    from napari_nightwatch.xrf.maps import fit_store
    from napari_nightwatch.xrf.pairing import BLOCK_BYTES, footprint_matrix, pair_cube, pair_tiles

    work = Path(tempfile.mkdtemp(prefix="bench-distributed-"))
    out: dict = {"size": args.size, "xrf_pixel": args.xrf_pixel, "workers": args.workers}
    try:
        t0 = time.perf_counter()
        base = synthesize_painting(work / "base.nightwatch.zarr", size=args.size, xrf_pixel=args.xrf_pixel)
        families = list(load_ground_truth(base).families)
        make_grid(base, tile=args.tile, mask="none")
        cube = base.root["xrf/cube"]
        out["cube"] = {"shape": list(cube.shape), "dtype": str(cube.dtype), "storage_chunks": list(cube.chunks),
                       "MB": round(cube.nbytes / 1e6, 1)}
        out["synth_s"] = round(time.perf_counter() - t0, 1)
        local = PaintingStore.open(shutil.copytree(base.path, work / "local.nightwatch.zarr"), mode="r+")
        spread = PaintingStore.open(shutil.copytree(base.path, work / "cluster.nightwatch.zarr"), mode="r+")

        # ---------------------------------------------------------------- xrf-maps
        t0 = time.perf_counter()
        s_local = fit_store(local, families, refine=False, overwrite=True)
        wall_local = time.perf_counter() - t0
        with distributed.LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True,
                                      dashboard_address=None, host="127.0.0.1") as cluster, \
                distributed.Client(cluster) as client:
            # warm: import the package on every worker, so the time and memory below are the job's
            client.run(lambda: __import__("napari_nightwatch.xrf.maps"))
            idle_rss = client.run(_max_rss_mb)
            t0 = time.perf_counter()
            s_cluster = fit_store(spread, families, refine=False, overwrite=True, client=client)
            wall_cluster = time.perf_counter() - t0
            fit_rss = client.run(_max_rss_mb)
            t0 = time.perf_counter()
            pairs_cluster = pair_tiles(spread, client=client)
            pair_cluster_s = time.perf_counter() - t0
            pair_rss = client.run(_max_rss_mb)
            predict = None
            if args.predict_size:
                predict = _predict_bench(work, client.scheduler.address, args.predict_size)
                predict["worker_peak_rss_MB"] = {w: round(v, 1) for w, v in client.run(_max_rss_mb).items()}
        equal = _same(local.root["xrf_maps"], spread.root["xrf_maps"])
        nf = len(s_local["elements"])
        g = local.root["xrf_maps"]
        cy, cx = g["chi2"].chunks
        n_chunks = int(np.asarray(g["done"][...]).size)
        ne = int(cube.shape[2])
        cpu = {k: s_cluster["timings"].get(k, 0.0) for k in ("read_cpu", "fit_cpu", "write_cpu")}
        out["xrf_maps"] = {
            "chunks": n_chunks,
            "chunk_pixels": [int(cy), int(cx)],
            "in_process_s": round(wall_local, 2),
            "cluster_s": round(wall_cluster, 2),
            "ratio_cluster_over_in_process": round(wall_cluster / wall_local, 3),
            "fit_wall_in_process_s": s_local["timings"]["fit_wall"],
            "fit_wall_cluster_s": s_cluster["timings"]["fit_wall"],
            "equal": bool(equal),
            "s_per_chunk": round(sum(cpu.values()) / n_chunks, 3),
            "s_per_chunk_by_stage": {k: round(v / n_chunks, 4) for k, v in cpu.items()},
            "MB_read_per_chunk": round(cy * cx * ne * cube.dtype.itemsize / 1e6, 2),
            "MB_written_per_chunk": round((2 * nf + 1) * cy * cx * 4 / 1e6, 2),
            "spectra_per_s_cluster": s_cluster["spectra_per_second"],
            "spectra_per_s_in_process": s_local["spectra_per_second"],
            "worker_peak_rss_MB": {w: round(v, 1) for w, v in fit_rss.items()},
            "worker_idle_rss_MB": {w: round(v, 1) for w, v in idle_rss.items()},
        }

        # ---------------------------------------------------------------- tile pairing
        t0 = time.perf_counter()
        pairs_local = pair_tiles(local)
        pair_local_s = time.perf_counter() - t0
        # the cube part alone, block by block, for the per-block cost
        w, _, _ = footprint_matrix(pairs_local.grid, local.xrf_affine, local.xrf_shape)
        blocks: list[int] = []
        t0 = time.perf_counter()
        pair_cube(w, local, progress=lambda d, t, s: blocks.append(t))
        cube_s = time.perf_counter() - t0
        n_blocks = blocks[-1]
        # whole storage chunk rows up to the block budget (pairing.BLOCK_BYTES of float64)
        zr = int(cube.chunks[0])
        rows = min(int(cube.shape[0]), zr * max(1, (BLOCK_BYTES // (8 * cube.shape[1] * cube.shape[2])) // zr))
        out["pairing"] = {
            "tiles": len(pairs_local),
            "blocks": n_blocks,
            "block_rows": rows,
            "s_per_block": round(cube_s / n_blocks, 3),
            "MB_read_per_block": round(rows * cube.shape[1] * cube.shape[2] * cube.dtype.itemsize / 1e6, 1),
            "MB_float64_per_block": round(rows * cube.shape[1] * cube.shape[2] * 8 / 1e6, 1),
            "in_process_s": round(pair_local_s, 2),
            "cluster_s": round(pair_cluster_s, 2),
            "ratio_cluster_over_in_process": round(pair_cluster_s / pair_local_s, 3),
            "equal": bool(np.array_equal(pairs_local.spectra, pairs_cluster.spectra)
                          and np.array_equal(pairs_local.elements, pairs_cluster.elements)),
            "worker_peak_rss_MB": {w: round(v, 1) for w, v in pair_rss.items()},
        }
        if predict is not None:
            out["predict_xrf"] = predict
        print(json.dumps(out, indent=1))
        x = out["xrf_maps"]
        print(f"\nxrf-maps: {x['chunks']} chunks of {x['chunk_pixels']} px; in-process {x['in_process_s']} s, "
              f"{args.workers} workers {x['cluster_s']} s, ratio {x['ratio_cluster_over_in_process']}; "
              f"equal: {x['equal']}; {x['s_per_chunk']} s/chunk, {x['MB_read_per_chunk']} MB read + "
              f"{x['MB_written_per_chunk']} MB written per chunk; worker peak RSS "
              f"{max(x['worker_peak_rss_MB'].values()):.0f} MB (idle {max(x['worker_idle_rss_MB'].values()):.0f} MB)")
        p = out["pairing"]
        print(f"pairing: {p['tiles']} tiles, {p['blocks']} blocks of {p['block_rows']} rows, {p['s_per_block']} s/block; "
              f"in-process {p['in_process_s']} s, cluster {p['cluster_s']} s, "
              f"ratio {p['ratio_cluster_over_in_process']}; equal: {p['equal']}")
        if "predict_xrf" in out:
            q = out["predict_xrf"]
            print(f"predict-xrf: {q['tiles']} tiles in chunks of {q['chunk_tiles']}; in-process {q['in_process_s']} s, "
                  f"cluster {q['cluster_s']} s, ratio {q['ratio_cluster_over_in_process']}; equal: {q['equal']}; "
                  f"{q['s_per_1000_tiles']} s per 1000 tiles")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
