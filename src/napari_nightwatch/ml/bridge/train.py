"""Training the XRF bridge: the spectrum encoder (InfoNCE against the frozen image
embeddings of co-registered tiles) and the inverse regression head (image embedding ->
element intensities), saved under ``models/<encoder_id>/`` (see :mod:`.models`)."""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ...core.errors import NightwatchError
from ...core.progress import ProgressCallback, report
from ...store import layout
from ...store.painting import writes
from ..spectrum_encoder import SpectrumEncoderConfig
from .models import build_head, encode_in_batches, open_tile_embeddings
from .split import TEST, TRAIN, UNPAIRED, VAL, spatial_block_split


# ------------------------------------------------------------------------------- training
def _seed_torch(seed: int):
    import torch

    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def _neighbour_similarity(z: np.ndarray, v: np.ndarray, k: int = 10) -> tuple[float, float]:
    """Validation retrieval of spectrum embeddings ``z`` against image embeddings ``v``.

    Returns the mean image-space cosine between each tile and the top-k tiles its
    spectrum retrieves (graded: retrieving a look-alike of the right tile counts),
    and the recall@k of the tile itself.
    """
    k = min(k, len(v))
    s = z @ v.T
    top = np.argpartition(-s, k - 1, axis=1)[:, :k]
    sim = np.einsum("nd,nkd->nk", v, v[top]).mean()
    recall = (top == np.arange(len(v))[:, None]).any(1).mean()
    return float(sim), float(recall)


def _train_encoder(cfg, x_tr, v_tr, x_va, v_va, *, epochs, batch_size, lr, patience, seed, progress):
    import torch

    from ..spectrum_encoder import augment_spectra, build_spectrum_encoder, normalise_inputs

    gen = _seed_torch(seed)
    model = build_spectrum_encoder(cfg)
    if cfg.input_kind == "maps":
        scale = np.percentile(x_tr, 99, axis=0).astype(np.float32)
        model.map_scale.copy_(torch.as_tensor(np.maximum(scale, 1e-6)))
    with torch.no_grad():
        f = normalise_inputs(x_tr, cfg, model.map_scale)
        model.feat_mean.copy_(f.mean(0))
        model.feat_std.copy_(f.std(0).clamp_min(1e-3))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    xt = torch.as_tensor(x_tr, dtype=torch.float32)
    vt = torch.as_tensor(v_tr, dtype=torch.float32)
    n = len(xt)
    bs = int(min(batch_size, n))
    best = (-np.inf, None, 0)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        perm = torch.randperm(n, generator=gen)
        losses = []
        for s in range(0, n - bs + 1, bs):
            idx = perm[s : s + bs]
            z = model.encode_binned(augment_spectra(xt[idx], cfg, generator=gen))
            logits = model.logit_scale.exp() * z @ vt[idx].T
            target = torch.arange(len(idx))
            loss = 0.5 * (
                torch.nn.functional.cross_entropy(logits, target) + torch.nn.functional.cross_entropy(logits.T, target)
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # CLIP's clamp: temperature no sharper than 1/100
                model.logit_scale.clamp_(0, float(np.log(100)))
            losses.append(float(loss.detach()))
        model.eval()
        with torch.no_grad():
            zv = model.encode_raw(torch.as_tensor(x_va, dtype=torch.float32)).numpy()
        score, recall = _neighbour_similarity(zv, v_va)
        history.append({"epoch": epoch, "loss": float(np.mean(losses)), "val_similarity@10": score, "val_recall@10": recall})
        report(progress, epoch, epochs, f"train-xrf: loss={np.mean(losses):.4f} val_similarity@10={score:.4f}")
        if score > best[0] + 1e-4:
            best = (score, {k: v.clone() for k, v in model.state_dict().items()}, epoch)
        elif epoch - best[2] >= patience:
            break
    model.load_state_dict(best[1])
    model.eval()
    return model, history, best[2]


def _train_head(v_tr, e_tr, v_va, e_va, *, epochs=600, lr=3e-3, patience=60, seed=0, weight_decay=1e-3):
    """Train the ensemble: each member on its own Poisson-bootstrap weights of the
    training tiles (so the spread of the members is a model uncertainty), early
    stopping per member on the validation tiles."""
    import torch

    head = build_head(v_tr.shape[1], e_tr.shape[1])
    mu, sd = e_tr.mean(0), e_tr.std(0) + 1e-6
    head.target_mean.copy_(torch.as_tensor(mu))
    head.target_std.copy_(torch.as_tensor(sd))
    vt, et = torch.as_tensor(v_tr), torch.as_tensor((e_tr - mu) / sd)
    vv, ev = torch.as_tensor(v_va), torch.as_tensor((e_va - mu) / sd)
    gen = _seed_torch(seed)
    m = head.w1.shape[0]
    boot = torch.poisson(torch.ones(m, len(vt), 1), generator=gen)
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    best_val = torch.full((m,), np.inf)
    best = {k: v.detach().clone() for k, v in head.named_parameters()}
    since = torch.zeros(m)
    for _ in range(epochs):
        head.train()
        loss = (boot * (head.standardised(vt) - et) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        head.eval()
        with torch.no_grad():
            val = ((head.standardised(vv) - ev) ** 2).mean(dim=(1, 2)) if len(vv) else torch.full((m,), float(loss))
            better = val < best_val - 1e-5
            best_val = torch.where(better, val, best_val)
            since = torch.where(better, torch.zeros_like(since), since + 1)
            for k, p in head.named_parameters():
                best[k][better] = p.detach()[better]
        if bool((since >= patience).all()):
            break
    with torch.no_grad():
        for k, p in head.named_parameters():
            p.copy_(best[k])
    head.eval()
    return head


#: folds of the spatial cross-validation that chooses the method per element
CV_FOLDS = 5

#: methods the cross-validation chooses from (and "blend", their non-negative stack); the
#: joint-space estimate is reported but
#: not a candidate: its spectrum encoder was trained on every training tile, so it
#: cannot be refitted without a held-out fold's spectra at the cost of one encoder per fold
CANDIDATES = ("head", "neighbours", "stack", "kernel", "context_knn", "colour_knn", "descriptor_ridge")


def _tile_blocks(grid, tiles: np.ndarray, block_tiles: int) -> np.ndarray:
    r, c = grid.row_col(tiles)
    return (r // block_tiles) * (-(-grid.n_cols // block_tiles)) + c // block_tiles


def _fit_descriptor_models(vectors, desc, y, blocks, seed):
    from .baselines import RandomFeatureRidge, RidgeRegressor

    y = np.asarray(y, np.float64)
    return {
        "descriptor_ridge": RidgeRegressor().fit(desc.both, y, blocks, seed=seed),
        "stack": RidgeRegressor().fit(desc.stack_features(vectors), y, blocks, seed=seed),
        "kernel": RandomFeatureRidge().fit(desc.kernel_features(vectors), y, blocks, seed=seed),
    }


def _choose_per_element(store, emb, tiles, split, vectors, elements, z_all, head, temperature, names, block_tiles,
                        seed):
    """Fit the descriptor models on the training tiles and keep, per element, the method
    with the best spatially cross-validated r inside the training area (baselines
    included, so the kept method never validates worse than the best baseline).

    The cross-validation runs over the training and validation tiles (never the test
    tiles): whole spatial blocks form :data:`CV_FOLDS` folds; for each fold every
    candidate (the head ensemble too, retrained with early stopping on a block split of
    the other folds) is fitted on the other folds and predicts the fold; the r of the
    pooled out-of-fold predictions scores it.

    Returns the selection (element -> method, cross-validated r of every method, best
    baseline), the ridge arrays to save, and the training tiles' descriptors (colour and
    texture; colour with the surroundings').
    """
    from types import SimpleNamespace

    from ...xrf.metrics import pearson_r
    from .baselines import block_folds, choose_methods, cross_fitted_blend, fit_blend
    from .predict import bridge_descriptors, method_estimates

    grid = emb.grid
    tr, va = split == TRAIN, split == VAL
    desc = bridge_descriptors(store, emb, tiles)
    ridges = _fit_descriptor_models(vectors[tr], desc.take(tr), elements[tr], _tile_blocks(grid, tiles[tr], block_tiles),
                                    seed)
    # spatial cross-validation inside the training area
    region = np.flatnonzero(tr | va)
    blocks = _tile_blocks(grid, tiles[region], block_tiles)
    folds = block_folds(blocks, CV_FOLDS, seed)
    oof = {m: np.full((region.size, len(names)), np.nan) for m in CANDIDATES}
    rng = np.random.default_rng(seed)
    for f in np.unique(folds):
        held, fit = region[folds == f], region[folds != f]
        fit_blocks = blocks[folds != f]
        ub = np.unique(fit_blocks)
        inner_val = np.isin(fit_blocks, rng.choice(ub, max(1, ub.size // 5), replace=False))
        if held.size == 0 or (~inner_val).sum() < 4 or inner_val.sum() < 2:
            continue
        # a shorter schedule than the final head's (at most 250 epochs, not 600): one head
        # per fold would otherwise dominate the training time. Its cross-validated r may
        # understate the final head a little, which only biases the choice towards the
        # other methods, never towards a method that did not earn it
        f_head = _train_head(vectors[fit[~inner_val]], elements[fit[~inner_val]], vectors[fit[inner_val]],
                             elements[fit[inner_val]], seed=seed, epochs=250, patience=40)
        bank = SimpleNamespace(head=f_head, temperature=temperature, bank_vectors=z_all[fit], bank_elements=elements[fit],
                               bank_descriptors=desc.both[fit], bank_context_colour=desc.context_colour[fit],
                               ridges=_fit_descriptor_models(vectors[fit], desc.take(fit), elements[fit], fit_blocks, seed))
        est = method_estimates(bank, vectors[held], vectors[fit], desc.take(held))
        for m in CANDIDATES:
            oof[m][folds == f] = est[m]["estimate"]
    meas = elements[region].astype(np.float64)
    done = np.all([np.isfinite(oof[m]).all(1) for m in CANDIDATES], axis=0)
    cv_r = {m: [pearson_r(oof[m][done, i], meas[done, i]) for i in range(len(names))] for m in CANDIDATES}
    # the blend: non-negative stacking of every candidate, scored by its own cross-fitted
    # out-of-fold predictions (weights fitted without the fold they predict)
    cv_r["blend"], blends = [], []
    for i in range(len(names)):
        if done.sum() < 3:  # too few tiles in the training area for any fold to predict: no blend
            cv_r["blend"].append(None)
            blends.append(None)
            continue
        p = np.stack([oof[m][done, i] for m in CANDIDATES], 1)
        cv_r["blend"].append(pearson_r(cross_fitted_blend(p, meas[done, i], folds[done]), meas[done, i]))
        w, b = fit_blend(p, meas[done, i])
        blends.append({"weights": dict(zip(CANDIDATES, (float(v) for v in w), strict=True)), "intercept": b})
    selection = choose_methods(cv_r, names)
    for i, el in enumerate(names):
        selection[el]["val_r_all"] = {m: cv_r[m][i] for m in cv_r}
        selection[el]["blend"] = blends[i]
        selection[el]["validation"] = f"{CV_FOLDS}-fold spatial block cross-validation inside the training area"
    return selection, {m: rg.to_arrays() for m, rg in ridges.items()}, (desc.both[tr], desc.context_colour[tr])


@writes(layout.MODELS, "nightwatch train-xrf")
def train_xrf_bridge(
    store,
    *,
    grid_id: str | None = None,
    image_model_id: str | None = None,
    epochs: int = 200,
    train_region: tuple[float, float, float, float] | None = None,
    block_tiles: int = 4,
    batch_size: int = 256,
    lr: float = 2e-3,
    arch: str = "mlp",
    patience: int = 25,
    min_train_tiles: int = 32,
    max_tiles: int = 50000,
    seed: int = 0,
    threads: int | None = None,
    progress: ProgressCallback | None = None,
    client=None,
) -> dict[str, Any]:
    """Train the spectrum encoder and the inverse head on a grid's paired tiles.

    Parameters
    ----------
    store
        Painting store opened "r+" with a mosaic, XRF data (cube or imported maps),
        registered, and tile embeddings of an image model.
    grid_id, image_model_id
        Which embeddings to pair (default: the only ones).
    epochs
        Maximum epochs of the encoder (early stopping on validation retrieval).
    train_region
        Level-0 box ``y0, x0, y1, x1``: train only on tiles inside; the rest is held out.
    block_tiles
        Edge of the spatial blocks of the split, in tiles.
    batch_size, lr, arch, patience, seed
        Training settings (InfoNCE batch, AdamW learning rate, "mlp"/"conv",
        epochs without improvement before stopping, seed).
    min_train_tiles
        Fewer paired training tiles than this is refused.
    max_tiles
        At most this many paired tiles are used (random, per split), bounding memory.
    threads
        torch CPU threads while training (default: torch's own setting).
    progress
        ``progress(done, total, stage)``; the stage string carries the loss.
    client
        A ``dask.distributed.Client`` or a scheduler address ``"tcp://HOST:PORT"``: the
        tiles are paired with the cube's spectra by the cluster's workers
        (:func:`~napari_nightwatch.xrf.pairing.pair_cube`); training runs here.

    Returns
    -------
    dict
        encoder_id, numbers of tiles per split, epochs run, validation metrics, timings.
    """
    import torch

    from ...core.cluster import connected

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        with connected(client) as cl:  # first: an unreachable scheduler is refused before any work
            return _train_xrf_bridge(store, grid_id, image_model_id, epochs, train_region, block_tiles, batch_size,
                                     lr, arch, patience, min_train_tiles, max_tiles, seed, progress, cl)
    finally:
        torch.set_num_threads(before)


def _train_xrf_bridge(store, grid_id, image_model_id, epochs, train_region, block_tiles, batch_size, lr, arch,
                      patience, min_train_tiles, max_tiles, seed, progress, client=None) -> dict[str, Any]:

    from ...core.jsonutil import jsonable
    from ...xrf.pairing import footprint_matrix, load_element_intensity_maps, pair_cube
    from ..spectrum_encoder import state_dict_hash, to_safetensors_bytes

    t0 = time.perf_counter()
    store.require_writable()
    emb = open_tile_embeddings(store, grid_id, image_model_id)
    kind = store.xrf_kind
    grid = emb.grid
    report(progress, 0, 1, "pairing tiles with XRF")
    w, tiles, _cov = footprint_matrix(grid, store.xrf_affine, store.xrf_shape, index=emb.available)
    if tiles.size == 0:
        raise NightwatchError(
            f"No tile of grid {emb.grid_id} lies inside the XRF scan of {store.path}; check the registration (nightwatch register)."
        )
    split = spatial_block_split(grid, tiles, block_tiles=block_tiles, train_region=train_region, seed=seed)
    rng = np.random.default_rng(seed)
    use = np.zeros(tiles.size, bool)
    for s in (TRAIN, VAL, TEST):
        idx = np.flatnonzero(split == s)
        cap = int(max_tiles * (0.6, 0.2, 0.2)[s])
        use[rng.choice(idx, cap, replace=False) if idx.size > cap else idx] = True
    n_train, n_val = int(np.sum(use & (split == TRAIN))), int(np.sum(use & (split == VAL)))
    if n_train < min_train_tiles or n_val < 4:
        raise NightwatchError(
            f"Only {n_train} training and {n_val} validation tiles of grid {emb.grid_id} lie inside the XRF scan"
            f"{' and the training region' if train_region else ''}; at least {min_train_tiles} and 4 are needed "
            "(use a smaller tile, a larger region, or check the registration)."
        )
    rows = np.flatnonzero(use)
    tiles, split, w = tiles[rows], split[rows], w[rows]
    vectors = emb.read(tiles)
    names, maps = load_element_intensity_maps(store, required=False)
    elements = None
    if names is not None:
        flat = np.nan_to_num(maps.reshape(len(names), -1).T.astype(np.float64))
        elements = np.asarray(w @ flat, dtype=np.float32)
    if kind == "cube":
        x = pair_cube(w, store, progress=progress, client=client)
        sumspec = store.xrf_sum_spectrum()
        ny, nx = store.xrf_shape
        cfg = SpectrumEncoderConfig(
            input_kind="spectrum", n_inputs=x.shape[1], dim=emb.dim, arch=arch,
            calibration=store.xrf_calibration.to_dict(), element_names=list(names or []),
            pixel_counts=float(sumspec.sum() / (ny * nx)),
        )
    else:
        x = elements
        cfg = SpectrumEncoderConfig(input_kind="maps", n_inputs=len(names), dim=emb.dim, arch="mlp", element_names=list(names))
    tr, va = split == TRAIN, split == VAL
    model, history, best_epoch = _train_encoder(
        cfg, x[tr], vectors[tr], x[va], vectors[va], epochs=epochs, batch_size=batch_size, lr=lr,
        patience=patience, seed=seed, progress=progress,
    )
    t_enc = time.perf_counter() - t0
    z_all = encode_in_batches(model, x)
    val_sim, val_recall = _neighbour_similarity(z_all[va], vectors[va])
    head = None
    selection, baseline_arrays, bank_desc = None, {}, None
    if elements is not None:
        report(progress, 0, 1, "train-xrf: inverse head")
        head = _train_head(vectors[tr], elements[tr], vectors[va], elements[va], seed=seed)
        report(progress, 0, 1, "train-xrf: baselines and choice per element")
        selection, baseline_arrays, bank_desc = _choose_per_element(
            store, emb, tiles, split, vectors, elements, z_all, head, float(1 / model.logit_scale.detach().exp()),
            list(names), block_tiles, seed)
    enc_hash = state_dict_hash(model)
    encoder_id = f"xrf-{cfg.input_kind}__{emb.model_id}__{enc_hash[:8]}"
    full_split = np.full(grid.n_tiles, UNPAIRED, np.int8)
    full_split[tiles] = split
    attrs = {
        "config": cfg.to_dict(),
        "config_hash": cfg.config_hash(),
        "encoder_hash": enc_hash,
        "head_hash": state_dict_hash(head) if head is not None else None,
        "image_model_id": emb.model_id,
        "image_signature": emb.signature,
        "grid_id": emb.grid_id,
        "grid": grid.to_attrs(),
        "split": {"block_tiles": block_tiles, "train_region": train_region, "seed": seed,
                  "n_train": int(tr.sum()), "n_val": int(va.sum()), "n_test": int((split == TEST).sum())},
        "element_names": list(names or []),
        "selection": selection,
        "xrf_kind": kind,
        "xrf_affine": store.xrf_affine.tolist(),
        "training": {"epochs_max": epochs, "epochs_run": len(history), "best_epoch": best_epoch,
                     "batch_size": batch_size, "lr": lr, "seconds": round(time.perf_counter() - t0, 2),
                     "encoder_seconds": round(t_enc, 2), "temperature": float(1 / model.logit_scale.detach().exp())},
        "validation": {"val_similarity@10": val_sim, "val_recall@10": val_recall},
        "history": history[-50:],
    }
    part = f"models/{encoder_id}"

    store.remove_part(part)
    try:
        g = store.group(part, create=True)

        def put(name: str, arr: np.ndarray) -> None:
            g.create_array(name, shape=arr.shape, dtype=arr.dtype, chunks=arr.shape if arr.size else None)[...] = arr

        put("encoder", np.frombuffer(to_safetensors_bytes(model), np.uint8))
        put("split", full_split)
        bank = split == TRAIN
        put("bank_tiles", tiles[bank].astype(np.int64))
        put("bank_vectors", z_all[bank].astype(np.float16))
        if head is not None:
            put("head", np.frombuffer(to_safetensors_bytes(head), np.uint8))
            put("bank_elements", elements[bank].astype(np.float32))
            put("bank_descriptors", bank_desc[0].astype(np.float64))
            put("bank_context_colour", bank_desc[1].astype(np.float64))
            for method, arrays in baseline_arrays.items():
                sub = g.create_group(f"baselines/{method}")
                for key, arr in arrays.items():
                    a = np.asarray(arr, np.float64)
                    sub.create_array(key, shape=a.shape, dtype=a.dtype, chunks=a.shape if a.size else None)[...] = a
        g.attrs["nightwatch"] = jsonable(attrs)
        store.mark_complete(
            part, image_model_id=emb.model_id, image_signature=emb.signature, grid_id=emb.grid_id,
            encoder_hash=enc_hash, train_region=train_region, epochs=len(history), validation=attrs["validation"],
        )
    except BaseException:
        store.remove_part(part)
        raise
    return {
        "encoder_id": encoder_id,
        "image_model_id": emb.model_id,
        "grid_id": emb.grid_id,
        "input_kind": cfg.input_kind,
        "n_train": attrs["split"]["n_train"],
        "n_val": attrs["split"]["n_val"],
        "n_test": attrs["split"]["n_test"],
        "epochs_run": len(history),
        "best_epoch": best_epoch,
        "final_loss": history[-1]["loss"],
        "validation": attrs["validation"],
        "elements": list(names or []),
        "selection": selection,
        "seconds": attrs["training"]["seconds"],
    }
