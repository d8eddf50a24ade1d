"""Element maps predicted from the photograph: per tile, from its image embedding
(through the joint space and through the regression head), validated on held-out
blocks and written to ``predicted/<name>/``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ...core.errors import NightwatchError
from ...core.progress import ProgressCallback, report
from ...store import layout
from ...xrf.metrics import block_ssim, leave_block_out_r, pearson_r, top_k_rows
from .models import XrfBridge, load_xrf_bridge, open_tile_embeddings
from .split import TEST, VAL

#: elements whose leave-block-out predictability from look-alike training tiles
#: (Pearson r) is below this carry no evidence in the photograph anywhere
MIN_ELEMENT_R = 0.5


#: a tile is flagged for an element when the measured values of the training tiles
#: that look like it spread by more than this fraction of their mean
MAX_RELATIVE_SPREAD = 0.25


def predict_elements(
    bridge: XrfBridge,
    vectors: np.ndarray,
    bank_image_vectors: np.ndarray,
    *,
    k: int = 16,
    chunk: int = 4096,
) -> dict[str, np.ndarray]:
    """Element intensities of tiles from their image embeddings alone.

    Parameters
    ----------
    bridge
        A loaded bridge with an inverse head (trained with element maps).
    vectors
        ``(n, dim)`` image embeddings of the tiles.
    bank_image_vectors
        ``(n_train, dim)`` image embeddings of the training tiles (for the
        neighbour spread behind the "no evidence" flag).
    k
        Neighbours for the joint-space estimate and for the spread.
    chunk
        Tiles per batch.

    Returns
    -------
    dict
        Each ``(n, c)``: ``head`` (regression ensemble mean), ``joint`` (through
        the joint space), ``neighbours`` (mean composition of the training tiles
        that look the same), ``spread`` (their weighted standard deviation) and
        ``uncertainty`` (ensemble and neighbour spread combined).
    """
    import torch

    if bridge.head is None:
        raise NightwatchError(
            f"Spectrum encoder {bridge.encoder_id} was trained without element maps, so it has no inverse; fit element "
            "maps (nightwatch xrf-maps) and retrain (nightwatch train-xrf)."
        )
    inv_t = 1.0 / max(bridge.temperature, 1e-3)
    be = bridge.bank_elements
    out = {key: [] for key in ("head", "joint", "neighbours", "uncertainty", "spread")}
    for s in range(0, len(vectors), chunk):
        v = np.asarray(vectors[s : s + chunk], np.float32)
        with torch.no_grad():
            ens = bridge.head(torch.as_tensor(v)).numpy()  # (members, n, c)
        head = np.clip(ens.mean(0), 0, None)
        ens_sd = ens.std(0)
        # (a) through the joint space: tile image embedding vs spectrum embeddings
        idx, sims = top_k_rows(v @ bridge.bank_vectors.T, k)
        w = np.exp((sims - sims.max(1, keepdims=True)) * inv_t)
        w /= w.sum(1, keepdims=True)
        joint = np.einsum("nk,nkc->nc", w, be[idx])
        # spread of the measured composition among the tiles that *look* the same:
        # large where the image does not determine the element (hidden layers)
        idx2, sims2 = top_k_rows(v @ bank_image_vectors.T, k)
        w2 = np.exp((sims2 - sims2.max(1, keepdims=True)) * inv_t)
        w2 /= w2.sum(1, keepdims=True)
        nb = be[idx2]
        mean2 = np.einsum("nk,nkc->nc", w2, nb)
        spread = np.sqrt(np.einsum("nk,nkc->nc", w2, (nb - mean2[:, None]) ** 2))
        out["head"].append(head)
        out["joint"].append(joint)
        out["neighbours"].append(mean2)
        out["spread"].append(spread)
        out["uncertainty"].append(np.sqrt(ens_sd**2 + spread**2))
    return {key: np.concatenate(v).astype(np.float32) for key, v in out.items()}


def predict_xrf_maps(
    store,
    *,
    encoder_id: str | None = None,
    grid_id: str | None = None,
    name: str | None = None,
    k: int = 16,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Predict element maps for every tile of a grid from the photograph alone.

    Parameters
    ----------
    store
        Painting store opened "r+" with a trained bridge (:func:`train_xrf_bridge`).
    encoder_id
        Which trained bridge (default: the newest, on ``grid_id`` if given).
    grid_id
        Grid of the prediction (default: the bridge's grid).
    name
        Name under ``predicted/`` (default: the encoder id).
    k
        Neighbours for the joint-space estimate and the spread.
    progress
        Optional progress callback.

    Returns
    -------
    dict
        name, elements, per-element validation on held-out blocks (Pearson r and
        SSIM for the head and the joint-space estimate), flagged fractions.
    """
    from ...core.jsonutil import jsonable
    from ...io.ngff import write_image_metadata
    from ...xrf.pairing import footprint_matrix, load_element_intensity_maps

    store.require_writable()
    bridge = load_xrf_bridge(store, encoder_id, grid_id=grid_id)
    if grid_id is not None and grid_id != bridge.grid_id:
        raise NightwatchError(f"Spectrum encoder {bridge.encoder_id} was trained on grid {bridge.grid_id}, not {grid_id}.")
    emb = open_tile_embeddings(store, bridge.grid_id, bridge.image_model_id)
    grid = emb.grid
    tiles = emb.available
    report(progress, 0, 3, "predict-xrf")
    vectors = emb.read(tiles)
    bank_img = emb.read(bridge.bank_tiles)
    pred = predict_elements(bridge, vectors, bank_img, k=k)
    report(progress, 1, 3, "predict-xrf")
    names = bridge.element_names
    c = len(names)
    # measured intensities at the tile grid (same footprint weights as in training)
    cur_names, maps = load_element_intensity_maps(store)
    if list(cur_names) != names:
        raise NightwatchError(
            f"The element maps of {store.path} ({', '.join(cur_names)}) differ from those encoder "
            f"{bridge.encoder_id} was trained with ({', '.join(names)}); retrain with `nightwatch train-xrf`."
        )
    w, mtiles, _ = footprint_matrix(grid, store.xrf_affine, store.xrf_shape, index=tiles)
    measured = np.full((grid.n_tiles, c), np.nan, np.float32)
    measured[mtiles] = np.asarray(w @ np.nan_to_num(maps.reshape(c, -1).T.astype(np.float64)), np.float32)
    split = bridge.split
    pos = np.full(grid.n_tiles, -1, np.int64)
    pos[tiles] = np.arange(tiles.size)

    val_tiles = np.flatnonzero((split == VAL) & (pos >= 0))
    test_tiles = np.flatnonzero((split == TEST) & (pos >= 0))
    train_meas = measured[bridge.bank_tiles]
    typical = np.nanpercentile(train_meas, 95, axis=0) - np.nanpercentile(train_meas, 5, axis=0)
    typical = np.maximum(typical, 1e-12)
    # element-level evidence: leave-block-out predictability on the training tiles
    bt = bridge.attrs["split"]["block_tiles"]
    r_, c_ = grid.row_col(bridge.bank_tiles)
    blocks = (r_ // bt) * (-(-grid.n_cols // bt)) + c_ // bt
    cv_r = leave_block_out_r(bank_img, bridge.bank_elements, blocks, k=k, inv_t=1.0 / max(bridge.temperature, 1e-3))
    element_ok = np.array([r is not None and r >= MIN_ELEMENT_R for r in cv_r])
    # spread among look-alikes relative to their own level (a lead ground present under
    # half of a colour is a 50 % spread whatever lead white paint elsewhere reaches),
    # floored at a fifth of the element's typical range so counting noise around zero
    # in tiles without the element does not count as "no evidence"
    rel_spread = pred["spread"] / np.maximum(pred["neighbours"], 0.2 * typical[None])
    no_evidence = (rel_spread > MAX_RELATIVE_SPREAD) | ~element_ok[None]

    # the map written is, per element, the estimate that did best on the validation
    # tiles (never the test tiles reported below)
    methods = ("head", "joint", "neighbours")
    val_r = {m: [pearson_r(pred[m][pos[val_tiles], i], measured[val_tiles, i]) for i in range(c)] for m in methods}
    chosen = []
    for i in range(c):
        scores = [(val_r[m][i] if val_r[m][i] is not None else -np.inf) for m in methods]
        chosen.append(methods[int(np.argmax(scores))] if np.isfinite(max(scores)) else "head")
    pred["best"] = np.stack([pred[chosen[i]][:, i] for i in range(c)], 1) if c else pred["head"]
    # calibrate the uncertainty with the chosen estimate's error on the validation
    # tiles (held out from training, never the test tiles): ensemble and neighbour
    # spreads alone miss what all members and look-alikes get wrong together
    resid = pred["best"][pos[val_tiles]] - measured[val_tiles]
    val_rms = np.sqrt(np.nanmean(resid**2, axis=0)) if len(val_tiles) else np.zeros(c)
    pred["uncertainty"] = np.sqrt(pred["uncertainty"] ** 2 + np.nan_to_num(val_rms)[None] ** 2).astype(np.float32)

    validation: dict[str, Any] = {}
    rows_cols = grid.shape
    held = np.zeros(grid.n_tiles, bool)
    held[test_tiles] = True
    held_map = held.reshape(rows_cols)
    for i, el in enumerate(names):
        m_map = measured[:, i].reshape(rows_cols)
        entry: dict[str, Any] = {"method": chosen[i], "evidence": bool(element_ok[i]), "cv_r": cv_r[i],
                                 "val_rms": float(np.nan_to_num(val_rms[i]))}
        for method in ("best",) + methods:
            p_full = np.full(grid.n_tiles, np.nan, np.float32)
            p_full[tiles] = pred[method][:, i]
            key = "" if method == "best" else f"_{method}"
            entry[f"r{key}"] = pearson_r(p_full[test_tiles], measured[test_tiles, i])
            entry[f"ssim{key}"] = block_ssim(m_map, p_full.reshape(rows_cols), held_map, bt)
            if method != "best":
                entry[f"val_r{key}"] = val_r[method][i]
        flagged = no_evidence[pos[test_tiles], i]
        entry["flagged_fraction"] = float(flagged.mean()) if flagged.size else None
        entry["r_unflagged"] = pearson_r(pred["best"][pos[test_tiles][~flagged], i], measured[test_tiles[~flagged], i])
        entry["n_test"] = int(test_tiles.size)
        validation[el] = entry
    report(progress, 2, 3, "predict-xrf")

    name = name or bridge.encoder_id
    part = f"predicted/{name}"
    scale, translate = grid.map_transform()
    px = store.mosaic_pixel_size_um
    attrs = {
        "elements": names,
        "encoder_id": bridge.encoder_id,
        "image_model_id": bridge.image_model_id,
        "grid_id": bridge.grid_id,
        "grid": grid.to_attrs(),
        "map_transform": {"scale": list(scale), "translate": list(translate), "units": "level-0 mosaic pixels"},
        "validation": validation,
        "no_evidence_rule": {"min_element_cv_r": MIN_ELEMENT_R, "max_relative_spread": MAX_RELATIVE_SPREAD, "k": k},
        "methods": dict(zip(names, chosen, strict=True)),
        "arrays": {"0": "best estimate per element (see methods)", "head": "regression head",
                   "joint": "joint-space prediction", "uncertainty": "one standard deviation",
                   "no_evidence": "1 = no evidence in the photograph", "measured": "paired measurement",
                   "split": "-1 unpaired or left out (overlaps a held-out tile), 0 train, 1 val, 2 test"},
    }
    store.remove_part(part)
    try:
        g = store.group(part, create=True)

        def put(key: str, per_tile: np.ndarray, dtype, fill) -> None:
            full = np.full((grid.n_tiles,) + per_tile.shape[1:], fill, dtype)
            full[tiles] = per_tile
            img = np.moveaxis(full.reshape(rows_cols + per_tile.shape[1:]), -1, 0)
            g.create_array(key, shape=img.shape, dtype=dtype, chunks=(1,) + img.shape[1:],
                           dimension_names=("c", "y", "x"))[...] = img

        put("0", pred["best"], np.float32, np.nan)
        put("head", pred["head"], np.float32, np.nan)
        put("joint", pred["joint"], np.float32, np.nan)
        put("uncertainty", pred["uncertainty"], np.float32, np.nan)
        put("no_evidence", no_evidence.astype(np.uint8), np.uint8, 1)
        put("measured", measured[tiles], np.float32, np.nan)
        g.create_array("split", shape=rows_cols, dtype=np.int8)[...] = split.reshape(rows_cols)
        write_image_metadata(
            g, "cyx", [[1.0, scale[0] * px, scale[1] * px]], name=f"predicted element maps ({bridge.encoder_id})",
            channel_names=names, translation=[0.0, translate[0] * px, translate[1] * px],
        )
        g.attrs["nightwatch"] = jsonable(attrs)
        store.mark_complete(part, encoder_id=bridge.encoder_id, image_model_id=bridge.image_model_id,
                            grid_id=bridge.grid_id, validation=validation)
    except BaseException:
        store.remove_part(part)
        raise
    report(progress, 3, 3, "predict-xrf")
    return {"name": name, "encoder_id": bridge.encoder_id, "grid_id": bridge.grid_id, "elements": names,
            "validation": validation}


def export_predicted_maps(store, name: str | None, out_dir: str | Path) -> list[str]:
    """Write one float32 TIFF per predicted element (``Pb-L.tif``) plus a JSON sidecar.

    The sidecar (``predicted_maps.json``) gives the grid's origin and step in
    level-0 mosaic pixels: map pixel ``(r, c)`` is centred on mosaic pixel
    ``origin + step * (r, c)``.
    """
    import json

    import tifffile

    if not store.has("predicted"):
        raise NightwatchError(f"{store.path} has no predicted maps yet; run `nightwatch predict-xrf`.")
    done = store.completed()  # one read of the records, not one per set of maps
    names = sorted(n for n, _ in store.root[layout.PREDICTED].groups() if layout.predicted(n) in done)
    if name is None:
        if not names:
            raise NightwatchError(f"{store.path} has no complete predicted maps; run `nightwatch predict-xrf`.")
        name = names[-1]
    if name not in names:
        raise NightwatchError(f"{store.path} has no predicted maps {name!r}; it has {', '.join(names) or 'none'}.")
    g = store.root[f"predicted/{name}"]
    attrs = dict(g.attrs["nightwatch"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = np.asarray(g["0"][...], np.float32)
    unc = np.asarray(g["uncertainty"][...], np.float32)
    flags = np.asarray(g["no_evidence"][...], np.uint8)
    written = []
    for i, el in enumerate(attrs["elements"]):
        p = out / f"{el}.tif"
        tifffile.imwrite(p, data[i])
        tifffile.imwrite(out / f"{el}_uncertainty.tif", unc[i])
        tifffile.imwrite(out / f"{el}_no_evidence.tif", flags[i])
        written.append(str(p))
    mt = attrs["map_transform"]
    sidecar = {
        "name": name,
        "elements": attrs["elements"],
        "origin_level0_px": mt["translate"],
        "step_level0_px": mt["scale"],
        "shape": list(data.shape[1:]),
        "mosaic_pixel_size_um": store.mosaic_pixel_size_um,
        "grid": attrs["grid"],
        "encoder_id": attrs["encoder_id"],
        "image_model_id": attrs["image_model_id"],
        "validation": attrs["validation"],
    }
    (out / "predicted_maps.json").write_text(json.dumps(sidecar, indent=1))
    written.append(str(out / "predicted_maps.json"))
    return written
