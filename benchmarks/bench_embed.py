"""Embedding pipeline benchmark: end-to-end ``embed_store`` against the bare model, and memory.

Measured side by side in one run, ViT-B-32 at random weights (``--pretrained none``):

1. Pipeline efficiency. The bare model's forward throughput (``encode_image`` on
   random preprocessed input, same batch size and torch threads, no reading,
   preprocessing or writing) and the end-to-end tiles/s of :func:`embed_store` on a
   synthetic mosaic store (zarr read -> preprocess -> model -> float16 write with the
   done-mask). The two are interleaved ``--repeats`` times and medians compared, so
   load from other processes hits both alike. Target: ratio >= 0.9.
2. Memory. Peak RSS of a fresh subprocess embedding a mosaic, and of one embedding
   a mosaic with 4x the pixels (same model, batch size, chunking). Target: ratio <= 1.2.

It also prints the measured per-tile model cost used in docs/scaling.md.

Run:  OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_embed.py [--size 1344] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def textured_mosaic(size: int, seed: int = 0) -> np.ndarray:
    """A painting-like uint8 RGB image: smooth colour fields plus fine texture (compresses like a photo)."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (size // 64 + 2, size // 64 + 2, 3)).astype(np.float32)
    yy = np.linspace(0, coarse.shape[0] - 1.001, size)
    xx = np.linspace(0, coarse.shape[1] - 1.001, size)
    y0, x0 = yy.astype(int), xx.astype(int)
    fy, fx = (yy - y0)[:, None, None], (xx - x0)[None, :, None]
    field = (
        coarse[y0][:, x0] * (1 - fy) * (1 - fx) + coarse[y0 + 1][:, x0] * fy * (1 - fx)
        + coarse[y0][:, x0 + 1] * (1 - fy) * fx + coarse[y0 + 1][:, x0 + 1] * fy * fx
    )
    field += rng.normal(0, 12, field.shape).astype(np.float32)
    return np.clip(field, 0, 255).astype(np.uint8)


def make_store(path: Path, size: int, seed: int = 0):
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_mosaic_array

    store = PaintingStore.create(path, overwrite=True)
    write_mosaic_array(store, textured_mosaic(size, seed), pixel_size_um=5.0, source=f"bench {size}px",
                       source_signature=f"bench-{size}-{seed}")
    return store


def _load(model: str, device: str):
    from napari_nightwatch.ml.clip import load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_clip(model, "none", device=device)


def bare_throughput(engine, n_tiles: int, batch_size: int) -> float:
    """Tiles/s of the model alone on random input, same batching as the pipeline."""
    import torch

    s = engine.image_size
    gen = torch.Generator().manual_seed(0)
    batches = [torch.randn(min(batch_size, n_tiles - i), 3, s, s, generator=gen) for i in range(0, n_tiles, batch_size)]
    t0 = time.perf_counter()
    with torch.inference_mode():
        for x in batches:
            engine._net.encode_image(x.to(engine.device))
    return n_tiles / (time.perf_counter() - t0)


def pipeline_run(store, engine, grid, batch_size: int, num_workers: int) -> dict:
    from napari_nightwatch.ml.embed import embed_store

    path = f"grids/{grid.grid_id}/embeddings/{engine.model_id}"
    if store.has(path):  # start from scratch every repeat
        store.mark_incomplete(path)
        del store.root[path]
    return embed_store(store, engine, grid, batch_size=batch_size, num_workers=num_workers)


def rss_child(store_path: str, model: str, batch_size: int, device: str, threads: int) -> None:
    """Subprocess body: embed one store and print peak RSS (MiB) as JSON."""
    import resource

    import torch

    torch.set_num_threads(threads)
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.tiles import make_grid

    store = PaintingStore.open(store_path, mode="r+")
    engine = _load(model, device)
    grid = make_grid(store, tile=224, mask="none")
    loaded = _current_rss_mib()  # torch + model: the part that cannot depend on the mosaic
    res = embed_store(store, engine, grid, batch_size=batch_size)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux
    print(json.dumps({"peak_rss_mib": round(peak, 1), "after_model_load_mib": round(loaded, 1),
                      "pipeline_mib": round(peak - loaded, 1), "n_tiles": res["n_tiles"],
                      "tiles_per_s": res["tiles_per_s"]}))


def _current_rss_mib() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="ViT-B-32")
    p.add_argument("--size", type=int, default=1344, help="mosaic edge (px) for the throughput comparison")
    p.add_argument("--mem-size", type=int, default=1120, help="mosaic edge (px) of the small memory run; the big one is 2x")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=2, help="torch threads (both sides)")
    p.add_argument("--workers", type=int, default=2, help="reader threads of the pipeline")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--rss-child", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.rss_child:
        rss_child(args.rss_child, args.model, args.batch_size, args.device, args.threads)
        return

    import torch

    torch.set_num_threads(args.threads)
    from napari_nightwatch.store.tiles import make_grid

    tmp = Path(tempfile.mkdtemp(prefix="bench_embed_"))
    store = make_store(tmp / "tput.nightwatch.zarr", args.size)
    engine = _load(args.model, args.device)
    grid = make_grid(store, tile=224, mask="none")
    n = grid.n_tiles
    print(f"model {engine.model_id} on {engine.device} ({engine.precision}), torch threads {torch.get_num_threads()}, "
          f"batch {args.batch_size}, mosaic {args.size}x{args.size} px -> {n} tiles of 224 px")
    bare_throughput(engine, min(n, args.batch_size), args.batch_size)  # warm-up
    bare, e2e, timings = [], [], []
    for r in range(args.repeats):
        bare.append(bare_throughput(engine, n, args.batch_size))
        res = pipeline_run(store, engine, grid, args.batch_size, args.workers)
        e2e.append(res["tiles_per_s"])
        timings.append(res["timings"])
        print(f"  repeat {r}: bare model {bare[-1]:7.2f} tiles/s | embed_store {e2e[-1]:7.2f} tiles/s | stages {res['timings']}")
    b, e = float(np.median(bare)), float(np.median(e2e))
    # each repeat pairs two runs made seconds apart, so their ratio is robust to load from other processes
    paired = float(np.median(np.asarray(e2e) / np.asarray(bare)))
    print(f"bare model forward      : {b:8.2f} tiles/s  ({1000 / b:.1f} ms/tile, median of {args.repeats})")
    print(f"embed_store end to end  : {e:8.2f} tiles/s  ({1000 / e:.1f} ms/tile)")
    print(f"PIPELINE EFFICIENCY RATIO (embed_store / bare model) = {e / b:.3f} (ratio of medians), "
          f"{paired:.3f} (median of paired ratios)   (target >= 0.9)")

    if args.skip_memory:
        return
    small = make_store(tmp / "mem_small.nightwatch.zarr", args.mem_size)
    big = make_store(tmp / "mem_big.nightwatch.zarr", 2 * args.mem_size)
    del small, big
    out = {}
    for name in ("mem_small", "mem_big"):
        cmd = [sys.executable, __file__, "--rss-child", str(tmp / f"{name}.nightwatch.zarr"), "--model", args.model,
               "--batch-size", str(args.batch_size), "--device", args.device, "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=True)
        out[name] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"  {name}: {out[name]}")
    ratio = out["mem_big"]["peak_rss_mib"] / out["mem_small"]["peak_rss_mib"]
    print(f"peak RSS {args.mem_size}^2 px: {out['mem_small']['peak_rss_mib']:.0f} MiB, "
          f"{2 * args.mem_size}^2 px (4x pixels): {out['mem_big']['peak_rss_mib']:.0f} MiB")
    print(f"PEAK MEMORY RATIO (4x pixels / 1x) = {ratio:.3f}   (target <= 1.2)")
    print(f"pipeline working memory above the loaded model: {out['mem_small']['pipeline_mib']:.0f} MiB vs "
          f"{out['mem_big']['pipeline_mib']:.0f} MiB")


if __name__ == "__main__":
    main()
