"""Element maps predicted from the photograph: per tile, by the method kept per element
at training time (image-model features, their stack with colour and texture
descriptors, the plain baselines, or a blend of them), validated on held-out blocks
beside the best baseline and written to ``predicted/<name>/``; and the "scan here
next" map of where the photograph cannot tell the composition.

The per-tile estimates (reading every tile, its descriptors, the head and the
look-alike searches: the long part) are made chunk by chunk of tiles into a work
area ``staging/predict-xrf-<name>/`` with a done-mask, so a killed run resumes
there; with a dask ``client`` the cluster's workers make the chunks, each opening
the store by its location. Both paths go through :func:`_estimate_chunk`, so the
maps are the same bytes. The validation and the maps are then made here from all
tiles at once (they need the held-out statistics of the whole grid)."""

from __future__ import annotations

import hashlib
import json
import math
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from ...core.cluster import connected, task_batches
from ...core.errors import NightwatchError
from ...core.progress import ProgressCallback, report
from ...store import layout
from ...store.painting import open_worker_store, writes
from ...xrf.metrics import block_ssim, pearson_r, top_k_rows
from .models import load_xrf_bridge, open_tile_embeddings
from .split import TEST, VAL

#: an element whose held-out Pearson r (the figure shown: the kept method on the test
#: tiles, or on the validation tiles where there are too few test tiles) is below this
#: carries no evidence in the photograph anywhere
MIN_ELEMENT_R = 0.5

#: fewer held-out test tiles than this and the evidence rule uses the validation r
MIN_TEST_TILES = 10


#: a tile is flagged for an element when the measured values of the training tiles
#: that look like it spread by more than this fraction of their mean
MAX_RELATIVE_SPREAD = 0.25

#: every method reported: image-model (CLIP) features, their stack with the
#: descriptors, the kernel ridge and the context kNN, the two plain baselines, and the
#: blend (non-negative stack of the candidates' predictions)
METHODS = ("head", "joint", "neighbours", "stack", "kernel", "context_knn", "colour_knn", "descriptor_ridge", "blend")


def _clip_estimates(bridge, vectors: np.ndarray, bank_image_vectors: np.ndarray, k: int, chunk: int = 4096) -> dict:
    """Head ensemble, joint-space and look-alike estimates from image embeddings."""
    import torch

    inv_t = 1.0 / max(bridge.temperature, 1e-3)
    be = bridge.bank_elements
    out = {key: [] for key in ("head", "ens_sd", "joint", "neighbours", "spread")}
    for s in range(0, len(vectors), chunk):
        v = np.asarray(vectors[s : s + chunk], np.float32)
        with torch.no_grad():
            ens = bridge.head(torch.as_tensor(v)).numpy()  # (members, n, c)
        # (a) through the joint space: tile image embedding vs spectrum embeddings
        idx, sims = top_k_rows(v @ bridge.bank_vectors.T, k)
        w = np.exp((sims - sims.max(1, keepdims=True)) * inv_t)
        w /= w.sum(1, keepdims=True)
        # spread of the measured composition among the tiles that *look* the same:
        # large where the image does not determine the element (hidden layers)
        idx2, sims2 = top_k_rows(v @ bank_image_vectors.T, k)
        w2 = np.exp((sims2 - sims2.max(1, keepdims=True)) * inv_t)
        w2 /= w2.sum(1, keepdims=True)
        nb = be[idx2]
        mean2 = np.einsum("nk,nkc->nc", w2, nb)
        out["head"].append(np.clip(ens.mean(0), 0, None))
        out["ens_sd"].append(ens.std(0))
        out["joint"].append(np.einsum("nk,nkc->nc", w, be[idx]))
        out["neighbours"].append(mean2)
        out["spread"].append(np.sqrt(np.einsum("nk,nkc->nc", w2, (nb - mean2[:, None]) ** 2)))
    return {key: np.concatenate(v).astype(np.float32) for key, v in out.items()}


def bridge_descriptors(store, emb, tiles: np.ndarray):
    """Every descriptor the bridge's methods use, for some tiles: colour and texture of
    the tile and of its surroundings, and the mean image-model vectors of its grid
    neighbourhoods (the same at training and at prediction)."""
    from ..embed import context_reader, context_vectors, tile_reader
    from .baselines import CONTEXT_SCALES, VECTOR_CONTEXT_RADII, tile_descriptors

    desc = tile_descriptors(tile_reader(store, emb.grid), tiles,
                            read_context=[context_reader(store, emb.grid, s) for s in CONTEXT_SCALES])
    desc.vector_context = context_vectors(emb, tiles, VECTOR_CONTEXT_RADII)
    return desc


def method_estimates(bridge, vectors: np.ndarray, bank_image_vectors: np.ndarray, descriptors, *,
                     k: int = 16) -> dict[str, dict[str, np.ndarray]]:
    """Every method's estimate of the element intensities of some tiles.

    Parameters
    ----------
    bridge
        A bridge (or anything with its attributes: ``head``, ``temperature``,
        ``bank_vectors``, ``bank_elements``, ``bank_descriptors``, ``ridges``).
    vectors
        ``(n, dim)`` image embeddings of the tiles.
    bank_image_vectors
        ``(n_train, dim)`` image embeddings of the training tiles.
    descriptors
        :class:`~.baselines.TileDescriptors` of the tiles.
    k
        Neighbours of the joint-space and look-alike estimates.

    Returns
    -------
    dict
        Method -> ``{"estimate", "spread", "level"}``, each ``(n, c)``: the estimate,
        the spread of the measured values of the training tiles that look the same in
        that method's features, and their mean (the level the spread is relative to).
        The head's entry also has ``ens_sd`` (the spread of its ensemble members).
    """
    from .baselines import KnnRegressor

    clip = _clip_estimates(bridge, vectors, bank_image_vectors, k)
    clip_nb = {"spread": clip["spread"], "level": clip["neighbours"]}
    out: dict[str, dict[str, np.ndarray]] = {
        "head": {"estimate": clip["head"], "ens_sd": clip["ens_sd"], **clip_nb},
        "joint": {"estimate": clip["joint"], **clip_nb},
        "neighbours": {"estimate": clip["neighbours"], **clip_nb},
    }
    bd = bridge.bank_descriptors
    if bd is None or not bridge.ridges:
        return out
    be = bridge.bank_elements
    colour = KnnRegressor().fit(bd[:, :15], be)
    est, spread = colour.predict(descriptors.colour, return_spread=True)
    out["colour_knn"] = {"estimate": est, "spread": spread, "level": est}
    level, spread = KnnRegressor().fit(bd, be).predict(descriptors.both, return_spread=True)
    out["descriptor_ridge"] = {"estimate": bridge.ridges["descriptor_ridge"].predict(descriptors.both),
                               "spread": spread, "level": level}
    stack = bridge.ridges["stack"]
    feats = descriptors.stack_features(vectors, n_features=int(stack.coef_.shape[0]))
    out["stack"] = {"estimate": stack.predict(feats), **clip_nb}
    if "kernel" in bridge.ridges:  # bridges trained before the kernel and context kNN have neither
        out["kernel"] = {"estimate": bridge.ridges["kernel"].predict(descriptors.kernel_features(vectors)), **clip_nb}
    bcc = getattr(bridge, "bank_context_colour", None)
    if bcc is not None:
        est, spread = KnnRegressor().fit(bcc, be).predict(descriptors.context_colour, return_spread=True)
        out["context_knn"] = {"estimate": est, "spread": spread, "level": est}
    for m in out.values():
        m["estimate"] = np.clip(m["estimate"], 0, None).astype(np.float32)  # intensities are not negative
    return out


#: tiles per chunk of the per-tile estimates (the unit of resumable and distributed work): a
#: multiple of the head's inference batch (4096) and the descriptors' read batch (512)
PREDICT_CHUNK_TILES = 4096


def _work_path(name: str) -> str:
    """Where the per-tile estimates of predicted maps ``name`` are made (removed when the maps are written)."""
    return f"{layout.STAGING}/predict-xrf-{name}"


def _estimate_columns(bridge) -> list[tuple[str, str]]:
    """``(method, key)`` of every per-tile array :func:`method_estimates` gives for ``bridge``, in stored order."""
    cols = [("head", "estimate"), ("head", "ens_sd"), ("head", "spread"), ("head", "level")]
    methods = ["joint", "neighbours"]
    if bridge.bank_descriptors is not None and bridge.ridges:
        methods += ["colour_knn", "descriptor_ridge", "stack"]
        methods += ["kernel"] if "kernel" in bridge.ridges else []
        methods += ["context_knn"] if bridge.bank_context_colour is not None else []
    return cols + [(m, key) for m in methods for key in ("estimate", "spread", "level")]


def _estimate_chunk(store, bridge, emb, tiles: np.ndarray, bank_img: np.ndarray, k: int,
                    columns: list[tuple[str, str]]) -> np.ndarray:
    """Every method's per-tile arrays for ``tiles``, side by side: ``(n, len(columns) * c)`` float32.

    The one per-chunk step of both the in-process and the distributed prediction.
    """
    vectors = emb.read(tiles)
    desc = bridge_descriptors(store, emb, tiles)
    est = method_estimates(bridge, vectors, bank_img, desc, k=k)
    made = sorted((m, key) for m, d in est.items() for key in d)
    if made != sorted(columns):  # a new method or key must be added to _estimate_columns
        raise NightwatchError(f"The per-tile estimates changed shape ({made} vs {sorted(columns)}); this is a bug.")
    # one float32 table (the kNN baselines' spread and level come as float64; the maps written are float32)
    return np.concatenate([np.asarray(est[m][key], np.float32) for m, key in columns], axis=1)


def _predict_chunks_task(location: str, encoder_id: str, work: str, chunks: list[tuple[int, np.ndarray]], k: int,
                         chunk_tiles: int, run: str) -> list[int]:
    """Run on a dask worker: make and write the per-tile estimates of ``chunks`` ``(chunk id, tiles)``.

    Writes those rows of the work area only; the submitting process marks them done.
    Stops early when the run that submitted it is no longer the work area's current one
    (it was cancelled and the area remade), so a left-over task never writes stale rows.
    """

    store = open_worker_store(location)
    bridge = load_xrf_bridge(store, encoder_id)  # cached per worker process
    emb = open_tile_embeddings(store, bridge.grid_id, bridge.image_model_id)
    bank_img = emb.read(bridge.bank_tiles)
    columns = _estimate_columns(bridge)
    out = store.root[f"{work}/estimates"]
    written = []
    for cid, tiles in chunks:
        rows = _estimate_chunk(store, bridge, emb, tiles, bank_img, k, columns)
        if dict(store.root[work].attrs.get("nightwatch", {})).get("run") != run:
            break
        out[cid * chunk_tiles : cid * chunk_tiles + len(tiles)] = rows
        written.append(int(cid))
    return written


def _per_tile_estimates(store, bridge, emb, tiles: np.ndarray, k: int, name: str, client,
                        progress: ProgressCallback | None) -> dict[str, dict[str, np.ndarray]]:
    """:func:`method_estimates` of every tile, made (or resumed) chunk by chunk in the work area."""
    from ... import __version__
    from ...core.jsonutil import jsonable

    columns = _estimate_columns(bridge)
    c = len(bridge.element_names)
    n = int(tiles.size)
    chunk = PREDICT_CHUNK_TILES
    n_chunks = math.ceil(n / chunk)
    done_records = store.completed()
    emb_part = layout.embeddings(bridge.grid_id, bridge.image_model_id)
    # what the estimates are made from: a resumed run reuses finished chunks only when all of it is unchanged
    signature = json.loads(json.dumps(jsonable({
        "encoder_id": bridge.encoder_id,
        "model_record": dict(done_records.get(layout.model(bridge.encoder_id), {})).get("id"),
        "embeddings_record": dict(done_records.get(emb_part, {})).get("id"),
        "tiles": hashlib.sha256(np.ascontiguousarray(tiles, np.int64).tobytes()).hexdigest()[:16],
        "n_tiles": n, "k": int(k), "chunk_tiles": chunk, "columns": [list(col) for col in columns],
        "elements": list(bridge.element_names), "package_version": __version__,
    })))
    work = _work_path(name)
    if store.has(work) and store.node_attrs(work).get("signature") != signature:
        store.remove_part(work)
    if not store.has(work):
        g = store.group(work, create=True)
        g.create_array("estimates", shape=(n, len(columns) * c), dtype=np.float32,
                       chunks=(chunk, len(columns) * c), fill_value=np.nan)
        g.create_array("done", shape=(n_chunks,), dtype=bool, chunks=(max(1, n_chunks),), fill_value=False)
        g.attrs["nightwatch"] = {"signature": signature}
    g = store.root[work]
    out, done_arr = g["estimates"], g["done"]
    todo = [int(i) for i in np.flatnonzero(~np.asarray(done_arr[...], bool))]
    state = {"done": n_chunks - len(todo)}
    stage = "predict-xrf: per-tile estimates"
    report(progress, state["done"], n_chunks, stage)

    def record(cid: int) -> None:
        done_arr[cid] = True  # only this process writes the done-mask, after the chunk's rows
        state["done"] += 1
        report(progress, state["done"], n_chunks, stage)

    def rows(cid: int) -> np.ndarray:
        return tiles[cid * chunk : (cid + 1) * chunk]

    if todo and client is not None:
        from distributed import as_completed

        run = uuid.uuid4().hex
        g.attrs["nightwatch"] = {**dict(g.attrs.get("nightwatch", {})), "run": run}
        futures = [
            client.submit(_predict_chunks_task, str(store.path), bridge.encoder_id, work,
                          [(cid, rows(cid)) for cid in batch], int(k), chunk, run, pure=False,
                          key=f"nightwatch-predict-xrf-{batch[0]}-{run[:8]}")
            for batch in task_batches(todo, client, max_per_task=4)
        ]
        try:
            for fut in as_completed(futures):
                for cid in fut.result():
                    record(cid)
        except BaseException:
            client.cancel(futures)
            raise
    elif todo:
        bank_img = emb.read(bridge.bank_tiles)
        for cid in todo:
            out[cid * chunk : cid * chunk + rows(cid).size] = _estimate_chunk(store, bridge, emb, rows(cid), bank_img,
                                                                             k, columns)
            record(cid)
    flat = np.asarray(out[...], np.float32)
    est: dict[str, dict[str, np.ndarray]] = {}
    for j, (m, key) in enumerate(columns):
        est.setdefault(m, {})[key] = flat[:, j * c : (j + 1) * c]
    return est


def _require_head(bridge) -> None:
    if bridge.head is None:
        raise NightwatchError(
            f"Spectrum encoder {bridge.encoder_id} was trained without element maps, so it has no inverse; fit element "
            "maps (nightwatch xrf-maps) and retrain (nightwatch train-xrf)."
        )


@writes(layout.PREDICTED, "nightwatch predict-xrf")
def predict_xrf_maps(
    store,
    *,
    encoder_id: str | None = None,
    grid_id: str | None = None,
    name: str | None = None,
    k: int = 16,
    progress: ProgressCallback | None = None,
    client=None,
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
        Optional progress callback; may raise Cancelled (finished chunks of the
        per-tile estimates are kept and a rerun resumes after them).
    client
        A ``dask.distributed.Client`` or a scheduler address ``"tcp://HOST:PORT"``: the
        per-tile estimates are made by the cluster's workers, which need the store at
        the same location (a shared filesystem or object storage). None: in-process.

    Returns
    -------
    dict
        name, elements, per-element figures on the held-out test blocks: Pearson r
        and SSIM of the kept method (``r``, ``ssim``) and of the best baseline
        (``r_baseline``, ``ssim_baseline``), the skill over it (``skill``), every
        method's ``r_<method>`` / ``ssim_<method>`` / ``val_r_<method>``, the
        evidence flag (from the same ``r``), flagged fractions.
    """
    store.require_writable()
    with connected(client) as cl:  # first: an unreachable scheduler is refused before any work
        return _predict_xrf_maps(store, encoder_id=encoder_id, grid_id=grid_id, name=name, k=k, progress=progress,
                                 client=cl)


def _predict_xrf_maps(store, *, encoder_id, grid_id, name, k, progress, client) -> dict[str, Any]:
    """:func:`predict_xrf_maps` once the cluster (if any) is connected."""
    from ...core.jsonutil import jsonable
    from ...io.ngff import write_image_metadata
    from ...xrf.pairing import footprint_matrix, load_element_intensity_maps

    bridge = load_xrf_bridge(store, encoder_id, grid_id=grid_id)
    if grid_id is not None and grid_id != bridge.grid_id:
        raise NightwatchError(f"Spectrum encoder {bridge.encoder_id} was trained on grid {bridge.grid_id}, not {grid_id}.")
    _require_head(bridge)
    if not bridge.selection:
        raise NightwatchError(
            f"Spectrum encoder {bridge.encoder_id} was trained before the baselines were part of the bridge; "
            "retrain it with `nightwatch train-xrf`."
        )
    emb = open_tile_embeddings(store, bridge.grid_id, bridge.image_model_id)
    grid = emb.grid
    tiles = emb.available
    name = name or bridge.encoder_id
    report(progress, 0, 3, "predict-xrf")
    est = _per_tile_estimates(store, bridge, emb, tiles, k, name, client, progress)
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

    # the blend: the stored non-negative weights of each element over the candidates; its
    # spread is that of its largest-weight member
    blend = {"estimate": np.zeros((len(tiles), c), np.float32), "spread": np.zeros((len(tiles), c), np.float32),
             "level": np.zeros((len(tiles), c), np.float32)}
    for i, el in enumerate(names):
        bl = bridge.selection[el].get("blend") or {"weights": {"colour_knn": 1.0}, "intercept": 0.0}
        blend["estimate"][:, i] = bl["intercept"] + sum(w * est[m]["estimate"][:, i] for m, w in bl["weights"].items())
        lead = max(bl["weights"], key=lambda m: bl["weights"][m])
        blend["spread"][:, i], blend["level"][:, i] = est[lead]["spread"][:, i], est[lead]["level"][:, i]
    blend["estimate"] = np.clip(blend["estimate"], 0, None)
    est["blend"] = blend
    # the map written is, per element, the method kept at training time by its spatially
    # cross-validated r inside the training area (bridge.selection); test tiles only report
    chosen = [bridge.selection[el]["method"] for el in names]
    pick = {key: np.stack([est[chosen[i]][key][:, i] for i in range(c)], 1) for key in ("estimate", "spread", "level")}
    best = pick["estimate"]
    # calibrate the uncertainty with the kept estimate's error on the validation tiles
    # (held out from training, never the test tiles): the look-alike spread alone misses
    # what all look-alikes get wrong together; the head adds its members' disagreement
    resid = best[pos[val_tiles]] - measured[val_tiles]
    val_rms = np.sqrt(np.nanmean(resid**2, axis=0)) if len(val_tiles) else np.zeros(c)
    ens = np.stack([est["head"]["ens_sd"][:, i] if chosen[i] == "head" else np.zeros(len(tiles)) for i in range(c)], 1)
    uncertainty = np.sqrt(ens**2 + pick["spread"] ** 2 + np.nan_to_num(val_rms)[None] ** 2).astype(np.float32)

    validation: dict[str, Any] = {}
    rows_cols = grid.shape
    held = np.zeros(grid.n_tiles, bool)
    held[test_tiles] = True
    held_map = held.reshape(rows_cols)
    bt = bridge.attrs["split"]["block_tiles"]
    element_ok = np.zeros(c, bool)
    for i, el in enumerate(names):
        sel = bridge.selection[el]
        m_map = measured[:, i].reshape(rows_cols)
        entry: dict[str, Any] = {"method": chosen[i], "baseline": sel["baseline"], "val_r": sel["val_r"],
                                 "val_r_baseline": sel["val_r_baseline"], "val_rms": float(np.nan_to_num(val_rms[i]))}
        for method in est:
            p_full = np.full(grid.n_tiles, np.nan, np.float32)
            p_full[tiles] = est[method]["estimate"][:, i]
            entry[f"r_{method}"] = pearson_r(p_full[test_tiles], measured[test_tiles, i])
            entry[f"ssim_{method}"] = block_ssim(m_map, p_full.reshape(rows_cols), held_map, bt)
            entry[f"val_r_{method}"] = sel.get("val_r_all", {}).get(method)
        for key, method in (("", chosen[i]), ("_baseline", sel["baseline"])):
            entry[f"r{key}"], entry[f"ssim{key}"] = entry[f"r_{method}"], entry[f"ssim_{method}"]
        entry["skill"] = None if entry["r"] is None or entry["r_baseline"] is None else entry["r"] - entry["r_baseline"]
        entry["skill_ssim"] = (None if entry["ssim"] is None or entry["ssim_baseline"] is None
                               else entry["ssim"] - entry["ssim_baseline"])
        # one evidence rule: the held-out r shown above (validation r where the test
        # blocks are too few to give one)
        shown = entry["r"] if test_tiles.size >= MIN_TEST_TILES and entry["r"] is not None else entry["val_r"]
        entry["evidence_r"] = shown
        element_ok[i] = shown is not None and shown >= MIN_ELEMENT_R
        entry["evidence"] = bool(element_ok[i])
        entry["n_test"] = int(test_tiles.size)
        validation[el] = entry
    # spread among look-alikes (in the kept method's features) relative to their own
    # level (a lead ground present under half of a colour is a 50 % spread whatever lead
    # white paint elsewhere reaches), floored at a fifth of the element's typical range
    # so counting noise around zero in tiles without the element does not count
    rel_spread = pick["spread"] / np.maximum(pick["level"], 0.2 * typical[None])
    no_evidence = (rel_spread > MAX_RELATIVE_SPREAD) | ~element_ok[None]
    for i, el in enumerate(names):
        flagged = no_evidence[pos[test_tiles], i]
        validation[el]["flagged_fraction"] = float(flagged.mean()) if flagged.size else None
        validation[el]["r_unflagged"] = pearson_r(best[pos[test_tiles][~flagged], i], measured[test_tiles[~flagged], i])
    report(progress, 2, 3, "predict-xrf")
    pred = {"best": best, "head": est["head"]["estimate"], "joint": est["joint"]["estimate"],
            "baseline": np.stack([est[bridge.selection[el]["baseline"]]["estimate"][:, i] for i, el in enumerate(names)], 1),
            "uncertainty": uncertainty}

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
        "no_evidence_rule": {"min_element_r": MIN_ELEMENT_R, "min_test_tiles": MIN_TEST_TILES,
                             "max_relative_spread": MAX_RELATIVE_SPREAD, "k": k,
                             "rule": "no evidence for an element where its shown held-out r < min_element_r; "
                                     "per tile where look-alikes' measured values spread > max_relative_spread"},
        "methods": dict(zip(names, chosen, strict=True)),
        "arrays": {"0": "best estimate per element (see methods)", "head": "regression head",
                   "joint": "joint-space prediction", "baseline": "best baseline per element",
                   "uncertainty": "one standard deviation",
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
        put("baseline", pred["baseline"], np.float32, np.nan)
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
    store.remove_part(_work_path(name))  # the per-tile estimates are in the maps now
    report(progress, 3, 3, "predict-xrf")
    return {"name": name, "encoder_id": bridge.encoder_id, "grid_id": bridge.grid_id, "elements": names,
            "validation": validation}


def export_predicted_maps(store, name: str | None, out_dir: str | Path, *, overwrite: bool = False) -> list[str]:
    """Write one float32 TIFF per predicted element (``Pb-L.tif``) plus a JSON sidecar.

    The sidecar (``predicted_maps.json``) gives the grid's origin and step in
    level-0 mosaic pixels: map pixel ``(r, c)`` is centred on mosaic pixel
    ``origin + step * (r, c)``.
    """
    import json

    import tifffile

    name = _predicted_name(store, name)
    g = store.root[f"predicted/{name}"]
    attrs = dict(g.attrs["nightwatch"])
    from ...core.paths import check_export_folder, check_targets, safe_file_stem

    out = check_export_folder(out_dir)
    # names from the store's attributes are checked before anything is written (a crafted '../../x' stays out)
    stems = [safe_file_stem(el, "Element family") for el in attrs["elements"]]
    check_targets([out / f"{el}{sfx}.tif" for el in stems for sfx in ("", "_uncertainty", "_no_evidence")]
                  + [out / "scan_here_next.tif", out / "predicted_maps.json"], overwrite)
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
    scan, _ = scan_next_map(store, name)
    tifffile.imwrite(out / "scan_here_next.tif", scan)
    written.append(str(out / "scan_here_next.tif"))
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
        "methods": attrs.get("methods"),
        "no_evidence_rule": attrs.get("no_evidence_rule"),
        "scan_here_next": "scan_here_next.tif: per tile 0-1, 1 = the photograph cannot tell the composition "
                          "(no evidence, or uncertainty at least the element's typical range)",
    }
    (out / "predicted_maps.json").write_text(json.dumps(sidecar, indent=1))
    written.append(str(out / "predicted_maps.json"))
    return written


def scan_next_map(store, name: str | None = None) -> tuple[np.ndarray, dict]:
    """Where the photograph cannot tell the composition: a map to plan the next MA-XRF scan.

    Per tile, the largest over elements of: 1 where the tile is flagged "no evidence"
    for the element, else its predicted uncertainty as a fraction of the element's
    typical range (5th-95th percentile of the measured training tiles), clipped to 1.

    Parameters
    ----------
    store
        Painting store with predicted maps (:func:`predict_xrf_maps`).
    name
        Which predicted maps (default: the newest complete ones).

    Returns
    -------
    map, info
        ``(rows, cols)`` float32 in 0-1 on the tile grid (NaN where no tile), and
        ``{"name", "map_transform", "elements", "driver"}`` where ``driver`` is the
        ``(rows, cols)`` int16 index of the element that sets each tile's score.
    """
    name = _predicted_name(store, name)
    g = store.root[f"predicted/{name}"]
    attrs = dict(g.attrs["nightwatch"])
    unc = np.asarray(g["uncertainty"][...], np.float64)
    flags = np.asarray(g["no_evidence"][...], np.uint8)
    meas = np.asarray(g["measured"][...], np.float64)
    split = np.asarray(g["split"][...])
    train = split == 0
    per_el = np.empty_like(unc)
    for i in range(unc.shape[0]):
        m = meas[i][train & np.isfinite(meas[i])]
        typical = max(float(np.percentile(m, 95) - np.percentile(m, 5)), 1e-12) if m.size else 1.0
        per_el[i] = np.where(flags[i] > 0, 1.0, np.clip(unc[i] / typical, 0.0, 1.0))
    per_el[:, np.isnan(unc).all(0)] = np.nan
    valid = ~np.isnan(per_el).all(0)
    score = np.full(unc.shape[1:], np.nan, np.float32)
    driver = np.full(unc.shape[1:], -1, np.int16)
    score[valid] = np.nanmax(per_el[:, valid], axis=0)
    driver[valid] = np.nanargmax(per_el[:, valid], axis=0)
    return score, {"name": name, "map_transform": attrs["map_transform"], "elements": attrs["elements"],
                   "driver": driver}


def _predicted_name(store, name: str | None) -> str:
    if not store.has("predicted"):
        raise NightwatchError(f"{store.path} has no predicted maps yet; run `nightwatch predict-xrf`.")
    done = store.completed()  # one read of the records, not one per set of maps
    names = sorted(n for n, _ in store.root[layout.PREDICTED].groups() if layout.predicted(n) in done)
    if name is None:
        if not names:
            raise NightwatchError(f"{store.path} has no complete predicted maps; run `nightwatch predict-xrf`.")
        return names[-1]
    if name not in names:
        raise NightwatchError(f"{store.path} has no predicted maps {name!r}; it has {', '.join(names) or 'none'}.")
    return name
