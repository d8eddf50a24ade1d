"""Remote sources: import + embed of a 4096^2 mosaic served over HTTP (127.0.0.1) vs read from disk.

Two source formats, each from the same files on disk and from a local HTTP server (Python's
``http.server``, threaded, in its own process, serving that folder):

1. OME-Zarr (NGFF 0.5, zarr v3, 512 px chunks) used in place: the import reads metadata only,
   the embedding reads the pixels (through zarr's fsspec store when remote).
2. Deep Zoom (JPEG tiles 254 px, overlap 1): the import fetches every finest-level tile once
   and copies the pixels into the store; the embedding then reads the store on disk. A third
   run imports the remote DZI again from a tile cache folder filled by the previous run.

The embedding is :func:`~napari_nightwatch.ml.embed.embed_store` with the tiny test model
(``nightwatch-tiny``, random weights), so reading the mosaic, not the model, dominates, which is
what the ratio is about. Each configuration runs ``--repeats`` times, interleaved, medians
compared. A loopback server has no network latency: the ratios measure the cost of the HTTP
path itself (requests, the fsspec/aiohttp loop, decoding), a lower bound for a real server.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_remote.py [--size 4096] [--repeats 3]``
"""

from __future__ import annotations

import argparse
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_embed import textured_mosaic  # noqa: E402


def serve(folder: Path) -> tuple[subprocess.Popen, str]:
    """Python's threaded ``http.server`` on 127.0.0.1 in its own process (a server is never in the
    reader's process; in-process, its threads would compete with the reader for the GIL)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory",
                             str(folder)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(100):  # wait until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    return proc, f"http://127.0.0.1:{port}"


def write_ngff(path: Path, img: np.ndarray) -> Path:
    import zarr
    from ome_zarr.format import FormatV05
    from ome_zarr.writer import write_image

    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    write_image(img.transpose(2, 0, 1), g, axes="cyx", fmt=FormatV05(), scale_factors=[2, 4, 8],
                scale={"c": 1.0, "y": 5.0, "x": 5.0}, axes_units={"y": "micrometer", "x": "micrometer"},
                storage_options={"chunks": (3, 512, 512)})
    return path


def write_dzi(folder: Path, img: np.ndarray, tile: int = 254, overlap: int = 1) -> Path:
    """The finest level of a Deep Zoom pyramid (JPEG, quality 90), which is all an import reads."""
    import math

    from PIL import Image

    h, w = img.shape[:2]
    level = math.ceil(math.log2(max(h, w)))
    d = folder / "painting_files" / str(level)
    d.mkdir(parents=True)
    for row in range(math.ceil(h / tile)):
        for col in range(math.ceil(w / tile)):
            y0, x0 = max(row * tile - overlap, 0), max(col * tile - overlap, 0)
            y1, x1 = min((row + 1) * tile + overlap, h), min((col + 1) * tile + overlap, w)
            Image.fromarray(img[y0:y1, x0:x1]).save(d / f"{col}_{row}.jpg", quality=90)
    dzi = folder / "painting.dzi"
    dzi.write_text(f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpg" Overlap="{overlap}" '
                   f'TileSize="{tile}"><Size Height="{h}" Width="{w}"/></Image>')
    return dzi


def run_once(source, out: Path, engine, cache_dir=None) -> dict:
    """Import ``source`` into a fresh store and embed it (224 px tiles, no mask); seconds per stage."""
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store.sources import import_mosaic
    from napari_nightwatch.store.tiles import make_grid

    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    store = import_mosaic(source, out, cache_dir=cache_dir)
    t1 = time.perf_counter()
    grid = make_grid(store, tile=224, mask="none")
    res = embed_store(store, engine, grid, batch_size=64)
    t2 = time.perf_counter()
    vec = np.asarray(store.root[f"grids/{grid.grid_id}/embeddings/{engine.model_id}/vectors"][...], dtype=np.float32)
    return {"import": t1 - t0, "embed": t2 - t1, "total": t2 - t0, "n_tiles": res["n_tiles"], "vectors": vec}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(2)
    from napari_nightwatch.ml.clip import load_clip

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        engine = load_clip("nightwatch-tiny", "none", device="cpu")

    tmp = Path(tempfile.mkdtemp(prefix="bench_remote_"))
    served = tmp / "served"
    served.mkdir()
    img = textured_mosaic(args.size, seed=0)
    t = time.perf_counter()
    write_ngff(served / "mosaic.ome.zarr", img)
    write_dzi(served / "dz", img)
    print(f"mosaic {args.size}x{args.size} RGB; OME-Zarr and DZI written in {time.perf_counter() - t:.1f} s; "
          f"embed model {engine.model_id}, 224 px tiles")
    srv, base = serve(served)
    cache = tmp / "tile-cache"
    configs = {
        "ngff local": lambda: (served / "mosaic.ome.zarr", None),
        "ngff http": lambda: (f"{base}/mosaic.ome.zarr", None),
        "dzi local": lambda: (served / "dz" / "painting.dzi", None),
        "dzi http": lambda: (f"{base}/dz/painting.dzi", None),
        "dzi http cached": lambda: (f"{base}/dz/painting.dzi", cache),
    }
    times: dict[str, list[dict]] = {k: [] for k in configs}
    vectors: dict[str, np.ndarray] = {}
    try:
        # fill the tile cache once so "dzi http cached" measures reads from the cache folder
        from napari_nightwatch.store.sources import import_mosaic

        import_mosaic(f"{base}/dz/painting.dzi", tmp / "warm.nightwatch.zarr", cache_dir=cache)
        for r in range(args.repeats):
            for name, make in configs.items():
                src, cdir = make()
                res = run_once(src, tmp / "out.nightwatch.zarr", engine, cache_dir=cdir)
                vectors[name] = res.pop("vectors")
                times[name].append(res)
                print(f"  repeat {r} {name:16s}: import {res['import']:6.2f} s, embed {res['embed']:6.2f} s "
                      f"({res['n_tiles']} tiles), total {res['total']:6.2f} s")
    finally:
        srv.terminate()
        srv.wait()

    med = {k: {s: statistics.median(x[s] for x in v) for s in ("import", "embed", "total")} for k, v in times.items()}
    # the same pixels must give the same embeddings whichever way they were read
    same_ngff = np.array_equal(vectors["ngff local"], vectors["ngff http"])
    same_dzi = np.array_equal(vectors["dzi local"], vectors["dzi http"]) and np.array_equal(
        vectors["dzi local"], vectors["dzi http cached"])
    print(f"medians of {args.repeats} (seconds):")
    for k, m in med.items():
        print(f"  {k:16s}: import {m['import']:6.2f}  embed {m['embed']:6.2f}  total {m['total']:6.2f}")
    for fmt, remote in (("ngff", "ngff http"), ("dzi", "dzi http"), ("dzi", "dzi http cached")):
        loc = med[f"{fmt} local"]
        rem = med[remote]
        print(f"RATIO {remote} / {fmt} local: import {rem['import'] / loc['import']:.2f}, embed "
              f"{rem['embed'] / loc['embed']:.2f}, import+embed {rem['total'] / loc['total']:.2f}")
    print(f"embeddings identical remote vs local: OME-Zarr {same_ngff}, DZI {same_dzi}")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
