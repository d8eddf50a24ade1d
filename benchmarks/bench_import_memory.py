"""Peak memory of a mosaic import does not grow with the image: 4096^2 vs 8192^2 tiled TIFF.

Each import runs in a fresh subprocess that reports its peak resident set size
(``ru_maxrss``); a third subprocess only imports the modules, giving the baseline.
The TIFFs are written tile by tile, so writing them does not need the whole image either.

Run: ``OMP_NUM_THREADS=2 .venv/bin/python benchmarks/bench_import_memory.py [--sizes 4096 8192] [--chunk 512]
[--format tiff|dzi]``.
Target: the 4x larger image raises peak memory by at most 20 %.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CHILD = r"""
import json, resource, sys, time
from pathlib import Path
from napari_nightwatch.store.sources import import_mosaic
src, out, chunk = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0 = time.perf_counter()
if src != "-":
    store = import_mosaic(Path(src), Path(out), chunk=chunk)
    shape = store.mosaic_shape
else:
    shape = None
print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "seconds": time.perf_counter() - t0, "shape": shape}))
"""


def write_tiled_tiff(path: Path, size: int, tile: int = 256) -> None:
    """An RGB photograph-like TIFF (smooth gradients + noise), written tile by tile."""
    import numpy as np
    import tifffile

    rng = np.random.default_rng(0)

    def tiles():
        for ty in range(0, size, tile):
            for tx in range(0, size, tile):
                yy, xx = np.mgrid[ty : ty + tile, tx : tx + tile]
                base = (np.sin(yy / 97.0) + np.cos(xx / 61.0) + 2) * 50
                t = np.stack([base, base * 0.8, base * 0.6], -1) + rng.integers(0, 25, (tile, tile, 3))
                yield t.astype(np.uint8)

    tifffile.imwrite(path, tiles(), shape=(size, size, 3), dtype="uint8", tile=(tile, tile), photometric="rgb",
                     compression="zlib")


def write_dzi(folder: Path, size: int, tile: int = 254, overlap: int = 1) -> Path:
    """The same picture as a Deep Zoom tile tree (finest level only, JPEG tiles), cut tile by tile."""
    import math

    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    level = math.ceil(math.log2(size))
    d = folder / "painting_files" / str(level)
    d.mkdir(parents=True)
    n = math.ceil(size / tile)
    for row in range(n):
        for col in range(n):
            y0, x0 = max(row * tile - overlap, 0), max(col * tile - overlap, 0)
            y1, x1 = min((row + 1) * tile + overlap, size), min((col + 1) * tile + overlap, size)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            base = (np.sin(yy / 97.0) + np.cos(xx / 61.0) + 2) * 50
            t = np.stack([base, base * 0.8, base * 0.6], -1) + rng.integers(0, 25, (y1 - y0, x1 - x0, 3))
            Image.fromarray(t.astype(np.uint8)).save(d / f"{col}_{row}.jpg", quality=90)
    dzi = folder / "painting.dzi"
    dzi.write_text(f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="jpg" Overlap="{overlap}" '
                   f'TileSize="{tile}"><Size Height="{size}" Width="{size}"/></Image>')
    return dzi


def run_child(src: str, out: str, chunk: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    res = subprocess.run([sys.executable, "-c", CHILD, src, out, str(chunk)], capture_output=True, text=True, env=env,
                         check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs=2, default=[4096, 8192])
    ap.add_argument("--chunk", type=int, default=512)
    ap.add_argument("--format", choices=["tiff", "dzi"], default="tiff", help="source written for the import")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        tmpd = Path(tmp)
        results = {}
        base = run_child("-", "-", args.chunk)
        for size in args.sizes:
            t0 = time.perf_counter()
            if args.format == "tiff":
                src = tmpd / f"m{size}.tif"
                write_tiled_tiff(src, size)
            else:
                src = write_dzi(tmpd / f"dzi{size}", size)
            print(f"wrote {args.format} {size}x{size} in {time.perf_counter() - t0:.1f} s", flush=True)
            results[size] = run_child(str(src), str(tmpd / f"m{size}.nightwatch.zarr"), args.chunk)
            r = results[size]
            print(f"{args.format} {size}x{size} RGB: peak RSS {r['peak_rss_mb']:.0f} MiB, import {r['seconds']:.1f} s "
                  f"({size * size / r['seconds'] / 1e6:.1f} Mpx/s)", flush=True)
        small, large = (results[s] for s in args.sizes)
        px_ratio = (args.sizes[1] / args.sizes[0]) ** 2
        ratio = large["peak_rss_mb"] / small["peak_rss_mb"]
        net = (large["peak_rss_mb"] - base["peak_rss_mb"]) / max(small["peak_rss_mb"] - base["peak_rss_mb"], 1e-6)
        print(f"baseline (imports only): {base['peak_rss_mb']:.0f} MiB")
        print(f"pixels x{px_ratio:.0f}: peak RSS ratio {ratio:.3f} (target <= 1.20); "
              f"above-baseline ratio {net:.2f}; time ratio {large['seconds'] / small['seconds']:.2f}")
        return 0 if ratio <= 1.20 else 1


if __name__ == "__main__":
    sys.exit(main())
