"""XRF bridge against plain baselines (issue 13), side by side in one run, on the real
miniature and on the synthetic metamer painting.

A third painting comes from an independent generator (``tests/bridge_independent.py``:
smooth pigment mixtures, Kubelka-Munk colours with per-pigment grains and blue and
dark near-metamers, element maps as the independent XRF generator's self-absorbed
counts with Poisson noise), imported as a photograph and maps.

For each painting the same pipeline runs on one store: element maps (imported and
registered for the miniature: ``miniature-vis-xrf``'s Cu and As maps onto its
photograph with the by-eye control points of ``tests/test_bridge_registration.py``
plus the automatic similarity refinement; fitted from the cube for the synthetic
painting), a tile grid, CLIP embeddings at random weights (the tiny registered
config, or ``--model ViT-B-32``), bridge training, prediction. Printed per split
(spatial blocks, and train on the left half / predict the right half):

- held-out r (and SSIM) per element of the kept method, of each baseline
  (colour-statistics kNN, colour + texture ridge), of the CLIP head alone and of the
  kernel and context-kNN candidates, the
  mean r and the largest shortfall of the kept method against the best baseline;
- the spectrum door: an element-vector / spectrum query made from tiles of the
  training area retrieves tiles of the held-out area; precision@10 scored by the
  hidden measured composition of the hits (a hit is right when its composition class,
  each element above or below half its 95th percentile, is the query's), against the
  colour proxy (held-out tiles nearest in colour statistics to the training tiles of
  the query's class).

Usage: ``python benchmarks/bench_bridge.py [--model nightwatch-tiny] [--epochs 60]``
(about 5 minutes on 2 CPU cores).
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
DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "miniature-vis-xrf"
SHOWN = ("r", "r_colour_knn", "r_descriptor_ridge", "r_head", "r_kernel", "r_context_knn")


def miniature_store(work: Path):
    from napari_nightwatch.cli import main
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import import_mosaic
    from test_bridge_registration import MINIATURE_PIXEL_UM, MINIATURE_POINTS

    path = work / "miniature.nightwatch.zarr"
    import_mosaic(DATA / "2025.jpg", path, pixel_size_um=MINIATURE_PIXEL_UM)
    quiet = ["--json"]
    assert main(["import-maps", str(path), "--map", f"Cu-K={DATA / 'Cu.jpg'}", "--map", f"As-K={DATA / 'As-KB.jpg'}",
                 *quiet]) == 0
    csv = work / "points.csv"
    csv.write_text("xrf_y,xrf_x,mosaic_y,mosaic_x\n" + "\n".join(f"{a[0]},{a[1]},{b[0]},{b[1]}" for a, b in MINIATURE_POINTS))
    assert main(["register", str(path), "--points", str(csv), "--auto", "--refine-model", "similarity", *quiet]) == 0
    return PaintingStore.open(path, mode="r+")


def metamer_store(work: Path, size: int):
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting
    from napari_nightwatch.xrf.maps import fit_store
    from napari_nightwatch.xrf.registration import register_store

    store = synthesize_painting(work / "metamer.nightwatch.zarr", size=size, seed=0, metamers=True)
    gt = load_ground_truth(store)
    fit_store(store, elements=list(gt.families), refine=False)
    register_store(store, auto=True)
    return store


def composition_classes(meas: np.ndarray, train: np.ndarray) -> np.ndarray:
    """Class per tile: bit e set where element e is above half its training 95th percentile."""
    top = np.nanpercentile(meas[train], 95, axis=0)
    high = meas > 0.5 * np.maximum(top, 1e-12)[None]
    return (high * (1 << np.arange(meas.shape[1]))[None]).sum(1)


def spectrum_door(store, bridge, emb, desc_colour, pred_name: str, elements_for_class: list[int] | None) -> dict:
    """Precision@10 of element-vector/spectrum queries from training tiles against held-out tiles:
    through the joint space, by composition (the held-out tiles' composition predicted from
    the photograph against the query's measured one), both ranks fused, and the colour proxy."""
    from napari_nightwatch.search.composition import composition_match_scores, fuse_ranks, tile_composition
    from napari_nightwatch.xrf.pairing import footprint_matrix, pair_cube

    g = store.root[f"predicted/{pred_name}"]
    meas = np.moveaxis(np.asarray(g["measured"]), 0, -1).reshape(-1, len(bridge.element_names))
    split = np.asarray(g["split"]).ravel()
    tiles = emb.available
    train_t = tiles[split[tiles] == 0]
    test_t = tiles[split[tiles] == 2]
    m = meas[:, elements_for_class] if elements_for_class is not None else meas
    ok = np.isfinite(m).all(1)
    cls = np.full(len(m), -1)
    cls[ok] = composition_classes(m[ok], (split[ok] == 0))
    # the encoder's input for the training tiles: element vectors (maps) or paired spectra (cube)
    w, paired, _ = footprint_matrix(emb.grid, store.xrf_affine, store.xrf_shape, index=train_t)
    if store.xrf_kind == "cube":
        x = pair_cube(w, store.xrf_cube())
    else:
        x = meas[paired]
    pos = {t: i for i, t in enumerate(paired.tolist())}
    v_test = emb.read(test_t)
    col = {t: i for i, t in enumerate(tiles.tolist())}
    c_test = desc_colour[[col[t] for t in test_t.tolist()]]
    c_all_train = desc_colour[[col[t] for t in train_t.tolist()]]
    mu, sd = c_all_train.mean(0), c_all_train.std(0) + 1e-9
    # the held-out tiles' composition as the photograph predicts it (never their measurement)
    comp = tile_composition(store, emb.grid_id, maps="predicted", predicted=pred_name)
    cpos = {t: i for i, t in enumerate(comp.tiles.tolist())}
    c_rows = np.array([cpos[t] for t in test_t.tolist()])
    ours, by_comp, fused, proxy, n_q = [], [], [], [], 0
    for k in np.unique(cls[test_t]):
        q_tiles = [t for t in train_t.tolist() if cls[t] == k and t in pos]
        if k < 0 or len(q_tiles) < 5 or (cls[test_t] == k).sum() < 10:
            continue
        n_q += 1
        q = bridge.encode(x[[pos[t] for t in q_tiles]].mean(0)[None])[0]
        joint = v_test @ q
        top = np.argsort(-joint)[:10]
        ours.append(float((cls[test_t[top]] == k).mean()))
        target = dict(zip(bridge.element_names, meas[q_tiles].mean(0).tolist(), strict=True))
        close = composition_match_scores(comp, target)[c_rows]
        for scores, out in ((close, by_comp), (fuse_ranks(joint, close), fused)):
            top = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")[:10]
            out.append(float((cls[test_t[top]] == k).mean()))
        cq = (desc_colour[[col[t] for t in q_tiles]].mean(0) - mu) / sd
        d = np.linalg.norm((c_test - mu) / sd - cq, axis=1)
        proxy.append(float((cls[test_t[np.argsort(d)[:10]]] == k).mean()))
    def mean(v):
        return float(np.mean(v)) if v else None

    return {"queries": n_q, "ours": mean(ours), "composition": mean(by_comp), "both": mean(fused),
            "colour_proxy": mean(proxy)}


def run_split(store, label: str, train_region, epochs: int, class_elements) -> dict:
    from napari_nightwatch.ml.bridge import (
        load_xrf_bridge,
        open_tile_embeddings,
        predict_xrf_maps,
        train_xrf_bridge,
    )
    from napari_nightwatch.ml.bridge.baselines import tile_descriptors
    from napari_nightwatch.ml.embed import tile_reader

    t0 = time.perf_counter()
    tr = train_xrf_bridge(store, epochs=epochs, train_region=train_region, threads=2)
    pred = predict_xrf_maps(store, encoder_id=tr["encoder_id"], name=f"bench-{label}")
    bridge = load_xrf_bridge(store, tr["encoder_id"])
    emb = open_tile_embeddings(store, bridge.grid_id, bridge.image_model_id)
    colour = tile_descriptors(tile_reader(store, emb.grid), emb.available).colour
    door = spectrum_door(store, bridge, emb, colour, pred["name"], class_elements)
    return {"split": label, "seconds": round(time.perf_counter() - t0, 1), "n_test": tr["n_test"],
            "validation": pred["validation"], "door": door}


def print_table(name: str, results: list[dict], elements: list[str]) -> None:
    print(f"\n== {name}: held-out r (SSIM) per element; kept method = ours")
    for res in results:
        val = res["validation"]
        print(f"-- split: {res['split']} ({res['n_test']} held-out tiles, {res['seconds']} s)")
        print(f"{'element':8s} {'ours':>15s} {'kept':>17s} {'colour kNN':>15s} {'col+tex ridge':>15s} "
              f"{'CLIP head':>15s} {'kernel':>7s} {'ctx kNN':>7s} {'skill':>7s} {'evidence':>8s}")
        for el in elements:
            v = val[el]
            cells = [f"{_f(v['r'])} ({_f(v['ssim'], 2)})", v["method"],
                     f"{_f(v['r_colour_knn'])} ({_f(v['ssim_colour_knn'], 2)})",
                     f"{_f(v['r_descriptor_ridge'])} ({_f(v['ssim_descriptor_ridge'], 2)})",
                     f"{_f(v['r_head'])} ({_f(v['ssim_head'], 2)})"]
            print(f"{el:8s} {cells[0]:>15s} {cells[1]:>17s} {cells[2]:>15s} {cells[3]:>15s} {cells[4]:>15s} "
                  f"{_f(v.get('r_kernel')):>7s} {_f(v.get('r_context_knn')):>7s} "
                  f"{_f(v['skill']):>7s} {'yes' if v['evidence'] else 'no':>8s}")
        rs = {k: [val[el][k] for el in elements if val[el].get(k) is not None] for k in SHOWN}
        best_base = [max(val[el]["r_colour_knn"] or -1, val[el]["r_descriptor_ridge"] or -1) for el in elements]
        ours = [val[el]["r"] if val[el]["r"] is not None else -1 for el in elements]
        print("mean r: " + ", ".join(f"{k.removeprefix('r_') if k != 'r' else 'ours'} {np.mean(v):.3f}"
                                     for k, v in rs.items() if v)
              + f"; mean over the per-element best baseline {np.mean(best_base):.3f}; "
              f"ours - best baseline: mean {np.mean(ours) - np.mean(best_base):+.3f}, "
              f"worst element {min(o - b for o, b in zip(ours, best_base, strict=True)):+.3f}")
        d = res["door"]
        print(f"spectrum door precision@10 by hidden measured composition ({d['queries']} queries): "
              f"joint space {_f(d['ours'])}, by predicted composition {_f(d['composition'])}, "
              f"both fused {_f(d['both'])}; colour proxy {_f(d['colour_proxy'])}")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nightwatch-tiny")
    ap.add_argument("--epochs", type=int, default=60)
    ap.add_argument("--metamer-size", type=int, default=512)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--paintings", default="miniature,metamer,independent",
                    help="which of miniature, metamer, independent to run (comma-separated)")
    args = ap.parse_args(argv)

    from napari_nightwatch.ml.clip import load_clip
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store.tiles import make_grid

    engine = load_clip(args.model, "none", device="cpu")
    work = Path(tempfile.mkdtemp(prefix="bench_bridge_"))
    out = {}
    which = set(args.paintings.split(","))
    try:
        if "miniature" not in which:
            pass
        elif DATA.exists():
            store = miniature_store(work)
            h, w = store.mosaic_shape
            grid = make_grid(store, tile=48, stride=24, mask="none")
            embed_store(store, engine, grid, batch_size=64, num_workers=1)
            names = store.xrf_info["elements"]
            out["miniature"] = ([run_split(store, "spatial blocks", None, args.epochs, None),
                                 run_split(store, "train left half, test right half", (0, 0, h, w // 2), args.epochs,
                                           None)], names)
        else:
            print(f"{DATA} is absent: the miniature is skipped")
        from napari_nightwatch.xrf.pairing import load_element_intensity_maps

        for key, label in (("metamer", "metamer painting"), ("independent", "independent generator")):
            if key not in which:
                continue
            if key == "metamer":
                store = metamer_store(work, args.metamer_size)
            else:
                from bridge_independent import painting_store

                store, _ = painting_store(work / "independent.nightwatch.zarr", seed=0)
            grid = make_grid(store, tile=16, mask="none")
            embed_store(store, engine, grid, batch_size=256, num_workers=1)
            names, _ = load_element_intensity_maps(store)
            shown = [el for el in ("Hg-L", "Pb-L", "Fe-K", "Ca-K", "Cu-K", "Co-K", "As-K", "Sn-K", "Sn-L", "Mn-K", "K-K")
                     if el in names]
            cls_el = [list(names).index(el) for el in ("Hg-L", "Cu-K", "Co-K", "Fe-K") if el in names]
            out[label] = ([run_split(store, "spatial blocks", None, args.epochs, cls_el)], shown)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nimage model: {args.model} at random weights; kept method chosen per element by validation r "
          "inside the training area")
    for name, (results, els) in out.items():
        print_table(name, results, list(els))
    if args.json:
        args.json.write_text(json.dumps({k: v[0] for k, v in out.items()}, indent=1, default=str))


def _f(v, nd: int = 3) -> str:
    return "n/a" if v is None else f"{v:.{nd}f}"


if __name__ == "__main__":
    main()
