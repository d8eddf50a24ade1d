"""XRF bridge figures (issue 5), measured side by side in one run on one synthetic painting.

For each image encoder - the informative colour/texture encoder of the tests and
ViT-B-32 at random weights (the real architecture; pretrained weights cannot be
reached here) - the same pipeline runs on the same store: fitted element maps,
automatic registration, a tile grid, embeddings, spectrum-encoder + inverse-head
training, prediction. Printed per encoder:

- spectrum -> tile retrieval precision@10 by ground-truth surface pigment, for
  single-pixel and 3x3-region queries (five pure pixels per surface pigment);
- per-element Pearson r and SSIM of the predicted maps on held-out blocks;
- the hidden-ground lead: on held-out tiles whose surface is not lead paint, the
  fraction flagged "no evidence" and the fraction confidently wrong (unflagged and
  off by more than 3 sigma);
- training time and registration error.

Usage: ``python benchmarks/bench_bridge.py [--size 1024] [--tile 32] [--skip-vit]``
(about 5-10 minutes on 2 CPU cores at size 1024).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

SURFACE_ELEMENTS = ("Hg-L", "Cu-K", "Co-K", "Fe-K", "Sn-K")


def retrieval_precision(store, bridge, gt, grid_tiles, vectors, labels, rng) -> dict[str, float]:
    from napari_nightwatch.ml.bridge import query_input

    out = {}
    for mode in ("pixel", "region"):
        precs = []
        for p in np.unique(gt.surface_labels_xrf):
            yy, xx = gt.pure_xrf_pixels(p)
            if len(yy) < 3:
                continue
            for i in rng.choice(len(yy), min(5, len(yy)), replace=False):
                if mode == "pixel":
                    x, _ = query_input(store, xrf_pixel=(yy[i], xx[i]))
                else:
                    x, _ = query_input(store, xrf_region=(yy[i] - 1, xx[i] - 1, yy[i] + 2, xx[i] + 2))
                q = bridge.encode(x[None])[0]
                top = np.argsort(-(vectors @ q))[:10]
                precs.append(float((labels[top] == p).mean()))
        out[mode] = float(np.mean(precs))
    return out


def run(engine, base: Path, work: Path, tile: int, gt) -> dict:
    from _bridge_support import hidden_lead
    from napari_nightwatch.core.geometry import apply_affine
    from napari_nightwatch.ml.bridge import (
        load_xrf_bridge,
        open_tile_embeddings,
        predict_xrf_maps,
        train_xrf_bridge,
    )
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.tiles import make_grid

    path = work / f"{engine.model_id}.nightwatch.zarr"
    shutil.copytree(base, path)
    store = PaintingStore.open(path, mode="r+")
    t0 = time.perf_counter()
    grid = make_grid(store, tile=tile, mask="none")
    embed_store(store, engine, grid, batch_size=32, num_workers=1)
    t_embed = time.perf_counter() - t0
    t0 = time.perf_counter()
    trained = train_xrf_bridge(store, threads=2)
    t_train = time.perf_counter() - t0
    pred = predict_xrf_maps(store)
    bridge = load_xrf_bridge(store)
    emb = open_tile_embeddings(store)
    vectors = emb.read(emb.available)
    labels, _ = gt.tile_labels(emb.grid.boxes(emb.available))
    prec = retrieval_precision(store, bridge, gt, emb.available, vectors, labels, np.random.default_rng(0))
    ny, nx = store.xrf_shape
    c = np.array([[0, 0], [0, nx - 1], [ny - 1, 0], [ny - 1, nx - 1]], float)
    reg_err = float(np.abs(apply_affine(store.xrf_affine, c) - apply_affine(gt.true_affine, c)).max() / gt.xrf_pixel)
    return {
        "model_id": engine.model_id,
        "n_tiles": int(emb.available.size),
        "embed_s": round(t_embed, 1),
        "train_s": round(t_train, 1),
        "epochs": trained["epochs_run"],
        "precision@10": prec,
        "elements": {el: {k: pred["validation"][el].get(k) for k in ("r", "ssim", "method", "r_head", "r_joint", "evidence")}
                     for el in pred["validation"]},
        "hidden_lead": hidden_lead(store, pred["name"], gt),
        "registration_error_xrf_px": reg_err,
    }


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=1024)
    ap.add_argument("--tile", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-vit", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)

    from _bridge_support import ColourTextureEngine
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting
    from napari_nightwatch.xrf.maps import fit_store
    from napari_nightwatch.xrf.registration import register_store

    work = Path(tempfile.mkdtemp(prefix="bench_bridge_"))
    try:
        base = work / "base.nightwatch.zarr"
        t0 = time.perf_counter()
        store = synthesize_painting(base, size=args.size, seed=args.seed)
        gt = load_ground_truth(store)
        fit_store(store, elements=list(gt.families), refine=False)
        register_store(store, auto=True)
        print(f"synthetic painting {args.size} px, maps and registration: {time.perf_counter() - t0:.1f} s", flush=True)
        engines = [ColourTextureEngine()]
        if not args.skip_vit:
            from napari_nightwatch.ml.clip import load_clip

            engines.append(load_clip("ViT-B-32", "none", device="cpu"))
        results = [run(e, base, work, args.tile, gt) for e in engines]
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'figure':34s}" + "".join(f"{r['model_id'][:28]:>30s}" for r in results))

    def row(name, values):
        print(f"{name:34s}" + "".join(f"{v:>30s}" for v in values))

    row("precision@10 pixel query", [f"{r['precision@10']['pixel']:.3f}" for r in results])
    row("precision@10 3x3 region query", [f"{r['precision@10']['region']:.3f}" for r in results])
    for el in SURFACE_ELEMENTS:
        if el in results[0]["elements"]:
            row(f"{el} r / SSIM (held out)", [f"{_f(r['elements'][el]['r'])} / {_f(r['elements'][el]['ssim'])}" for r in results])
    row("Pb-L r / SSIM (held out)", [f"{_f(r['elements']['Pb-L']['r'])} / {_f(r['elements']['Pb-L']['ssim'])}" for r in results])
    row("hidden Pb: flagged / conf. wrong", [f"{r['hidden_lead']['flagged']:.2f} / {r['hidden_lead']['confidently_wrong']:.2f}"
                                             for r in results])
    row("train s / embed s", [f"{r['train_s']} / {r['embed_s']}" for r in results])
    row("registration error (XRF px)", [f"{r['registration_error_xrf_px']:.2f}" for r in results])
    if len(results) == 2:
        a, b = results
        print(f"\nratio ViT-B-32(random)/informative: precision@10 pixel "
              f"{b['precision@10']['pixel'] / max(a['precision@10']['pixel'], 1e-9):.2f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1, default=str))


def _f(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


if __name__ == "__main__":
    main()
