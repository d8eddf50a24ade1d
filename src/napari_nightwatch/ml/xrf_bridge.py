"""The XRF "third door": spectra into the image-text space, and composition out of it.

- :func:`train_xrf_bridge` pairs each tile of a grid with the XRF data under it
  (:mod:`napari_nightwatch.xrf.pairing`), trains the spectrum encoder
  (:mod:`.spectrum_encoder`) with the symmetric InfoNCE loss against the *frozen*
  image embeddings of the paired tiles, and trains the inverse regression head
  (image embedding -> element intensities).  Train / validation / test tiles are
  split by spatial blocks, so neighbouring tiles never straddle the split.  Saved
  under ``models/<encoder_id>/`` (layout below) with its provenance.
- :func:`spectrum_query_vector` turns a cube pixel, region or spectrum file into a
  vector in the image model's space, for the ordinary search machinery.
- :func:`predict_xrf_maps` estimates element intensities for every tile of the
  grid from its image embedding alone, two ways - (a) through the joint space: the
  element content of the training spectra whose encoder embeddings lie nearest,
  softmax-weighted; (b) the regression head (an ensemble) - with a per-tile
  uncertainty and a "no evidence" flag, validates on the held-out blocks
  (Pearson r, SSIM) and writes ``predicted/<name>/``.

Store layout written here::

    models/<encoder_id>/        attrs["nightwatch"]: config (SpectrumEncoderConfig),
                                encoder_hash, head_hash, image_model_id,
                                image_signature, grid_id, grid, split {...},
                                element_names, target_mean/std, validation, history
      encoder                   (nbytes,) uint8  safetensors of the spectrum encoder
      head                      (nbytes,) uint8  safetensors of the inverse head ensemble
      split                     (n_tiles,) int8  -1 unpaired (or left out: overlaps a held-out
                                tile), 0 train, 1 val, 2 test
      bank_tiles                (n_train,) int64 training tiles (joint-space bank)
      bank_vectors              (n_train, dim) float16 encoder embeddings of their spectra
      bank_elements             (n_train, c) float32 their element intensities
    predicted/<name>/           NGFF 0.5 image (c, rows, cols) on the tile grid:
                                "0" best estimate per element (chosen on validation
                                tiles); attrs["nightwatch"]: elements, methods, grid,
                                map_transform (level-0 px), validation, flag rule
      head                      (c, rows, cols) float32 regression-head prediction
      joint                     (c, rows, cols) float32 prediction through the joint space
      uncertainty               (c, rows, cols) float32 one standard deviation
      no_evidence               (c, rows, cols) uint8   1 = the photograph does not say
      measured                  (c, rows, cols) float32 paired measurement (NaN outside scan)
      split                     (rows, cols) int8 (as in the model)
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.progress import ProgressCallback, report
from ..core.tiling import TileGrid
from .embed import Embeddings, open_embeddings
from .spectrum_encoder import SpectrumEncoderConfig

#: splits of the paired tiles
TRAIN, VAL, TEST, UNPAIRED = 0, 1, 2, -1
#: elements whose leave-block-out predictability from look-alike training tiles
#: (Pearson r) is below this carry no evidence in the photograph anywhere
MIN_ELEMENT_R = 0.5
#: a tile is flagged for an element when the measured values of the training tiles
#: that look like it spread by more than this fraction of their mean
MAX_RELATIVE_SPREAD = 0.25


# ------------------------------------------------------------------------------- embeddings
def open_tile_embeddings(store, grid_id: str | None = None, model_id: str | None = None) -> Embeddings:
    """The image embeddings to pair with XRF data (the only ones, or the named ones).

    The same handle search uses (:func:`napari_nightwatch.ml.embed.open_embeddings`):
    a missing or ambiguous choice is one sentence listing what the store holds, and
    embeddings made from another mosaic, grid or mask are refused.
    """
    return open_embeddings(store, grid_id, model_id)


_SIGNATURE_KEYS = ("model", "pretrained", "model_hash", "dim", "preprocessing")


def _signature_mismatch(recorded: dict, current: dict) -> list[str]:
    import json

    return [
        k for k in _SIGNATURE_KEYS
        if k in recorded and k in current and json.dumps(recorded[k], sort_keys=True) != json.dumps(current[k], sort_keys=True)
    ]


# ------------------------------------------------------------------------------- split
def spatial_block_split(
    grid: TileGrid,
    tiles: np.ndarray,
    *,
    block_tiles: int = 4,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    train_region: tuple[float, float, float, float] | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Assign tiles to train / validation / test by square blocks of the grid.

    Parameters
    ----------
    grid
        The tile grid.
    tiles
        Tile indices to split (the paired ones).
    block_tiles
        Block edge in tiles; whole blocks go to one split, so a tile's neighbours
        (which overlap it or share its paint) are on its side of the split.
    fractions
        Share of blocks for train, validation, test (without ``train_region``).
    train_region
        Level-0 box ``y0, x0, y1, x1``: only tiles wholly inside it train (blocks
        split into train and validation 80/20); everything else is test.
    seed
        Seed of the block shuffle.

    Returns
    -------
    numpy.ndarray
        ``(len(tiles),)`` int8 of TRAIN, VAL, TEST, and UNPAIRED for the tiles of an
        overlapping grid (``stride < tile``) left out because they share pixels with a
        tile of a held-out split (see :func:`_separate_overlapping_splits`).
    """
    tiles = np.asarray(tiles, dtype=np.int64)
    r, c = grid.row_col(tiles)
    bcols = -(-grid.n_cols // block_tiles)
    block = (r // block_tiles) * bcols + (c // block_tiles)
    rng = np.random.default_rng(seed)
    out = np.full(tiles.size, TEST, np.int8)
    if train_region is not None:
        inside = np.isin(tiles, grid.tiles_in_box(train_region, fully=True))
        ub = np.unique(block[inside])
        rng.shuffle(ub)
        n_val = max(1, int(round(0.2 * ub.size))) if ub.size > 1 else 0
        val_blocks = set(ub[:n_val].tolist())
        out[inside] = np.where(np.isin(block[inside], list(val_blocks)), VAL, TRAIN)
        return _separate_overlapping_splits(grid, tiles, out)
    ub = np.unique(block)
    rng.shuffle(ub)
    f = np.asarray(fractions, float) / np.sum(fractions)
    n = ub.size
    n_val = max(1, int(round(f[1] * n))) if n >= 3 else 0
    n_test = max(1, int(round(f[2] * n))) if n >= 3 else 0
    n_train = n - n_val - n_test
    lab = np.empty(n, np.int8)
    lab[:n_train], lab[n_train : n_train + n_val], lab[n_train + n_val :] = TRAIN, VAL, TEST
    lookup = dict(zip(ub.tolist(), lab.tolist(), strict=True))
    return _separate_overlapping_splits(grid, tiles, np.array([lookup[b] for b in block.tolist()], dtype=np.int8))


def _separate_overlapping_splits(grid: TileGrid, tiles: np.ndarray, split: np.ndarray) -> np.ndarray:
    """Leave out (UNPAIRED) the tiles that share pixels with a tile of a more held-out split.

    On an overlapping grid (``stride < tile``) the tiles along a block edge overlap the
    next block's, so a test tile would be half made of a training tile's paint. Test
    blocks are kept whole (the SSIM is measured per whole block); a validation tile
    overlapping a test tile, and a training tile overlapping a validation or test
    tile, are dropped instead. A grid without overlap is returned unchanged.
    """
    from scipy.ndimage import maximum_filter

    reach = -(-grid.tile // grid.stride) - 1  # tiles this many rows/cols apart still overlap
    if reach <= 0 or tiles.size == 0:
        return split
    r, c = grid.row_col(tiles)
    labels = np.full(grid.shape, UNPAIRED, np.int8)
    labels[r, c] = split
    # TRAIN < VAL < TEST: the most held-out split among each tile's overlapping neighbours
    strongest = maximum_filter(labels, size=2 * reach + 1, mode="constant", cval=UNPAIRED)
    return np.where(strongest[r, c] > split, UNPAIRED, split).astype(np.int8)


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

    from .spectrum_encoder import augment_spectra, build_spectrum_encoder, normalise_inputs

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


#: the inverse head: members of the ensemble and their width
HEAD_MEMBERS, HEAD_HIDDEN = 5, 64


def _build_head(dim: int, n_out: int, n_members: int = HEAD_MEMBERS, hidden: int = HEAD_HIDDEN, dropout: float = 0.3):
    """An ensemble of small MLPs (image embedding -> element intensities), batched.

    The members' weights are stacked so the whole ensemble trains and predicts in
    one batched matrix product per layer, not one Python step per member.
    """
    import torch

    nn = torch.nn

    class _Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            g = torch.Generator().manual_seed(0)
            self.w1 = nn.Parameter(torch.randn(n_members, dim, hidden, generator=g) / np.sqrt(dim))
            self.b1 = nn.Parameter(torch.zeros(n_members, 1, hidden))
            self.w2 = nn.Parameter(torch.randn(n_members, hidden, n_out, generator=g) / np.sqrt(hidden))
            self.b2 = nn.Parameter(torch.zeros(n_members, 1, n_out))
            self.drop = nn.Dropout(dropout)
            self.register_buffer("target_mean", torch.zeros(n_out))
            self.register_buffer("target_std", torch.ones(n_out))

        def standardised(self, v):  # (members, n, n_out)
            h = torch.nn.functional.gelu(torch.matmul(v, self.w1) + self.b1)
            return torch.matmul(self.drop(h), self.w2) + self.b2

        def forward(self, v):  # (members, n, n_out) in intensity units
            return self.standardised(v) * self.target_std + self.target_mean

    return _Head()


def _train_head(v_tr, e_tr, v_va, e_va, *, epochs=600, lr=3e-3, patience=60, seed=0, weight_decay=1e-3):
    """Train the ensemble: each member on its own Poisson-bootstrap weights of the
    training tiles (so the spread of the members is a model uncertainty), early
    stopping per member on the validation tiles."""
    import torch

    head = _build_head(v_tr.shape[1], e_tr.shape[1])
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


def _encode_in_batches(model, x: np.ndarray, batch: int = 4096) -> np.ndarray:
    import torch

    out = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            out.append(model.encode_raw(torch.as_tensor(x[s : s + batch], dtype=torch.float32)).numpy())
    return np.concatenate(out) if out else np.zeros((0, model.cfg.dim), np.float32)


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

    Returns
    -------
    dict
        encoder_id, numbers of tiles per split, epochs run, validation metrics, timings.
    """
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(int(threads))
    try:
        return _train_xrf_bridge(store, grid_id, image_model_id, epochs, train_region, block_tiles, batch_size, lr,
                                 arch, patience, min_train_tiles, max_tiles, seed, progress)
    finally:
        torch.set_num_threads(before)


def _train_xrf_bridge(store, grid_id, image_model_id, epochs, train_region, block_tiles, batch_size, lr, arch,
                      patience, min_train_tiles, max_tiles, seed, progress) -> dict[str, Any]:

    from ..project import _jsonable
    from ..xrf.pairing import footprint_matrix, load_element_intensity_maps, pair_cube
    from .spectrum_encoder import state_dict_hash, to_safetensors_bytes

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
        x = pair_cube(w, store.xrf_cube(), progress=progress)
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
    z_all = _encode_in_batches(model, x)
    val_sim, val_recall = _neighbour_similarity(z_all[va], vectors[va])
    head = None
    if elements is not None:
        report(progress, 0, 1, "train-xrf: inverse head")
        head = _train_head(vectors[tr], elements[tr], vectors[va], elements[va], seed=seed)
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
        "xrf_kind": kind,
        "xrf_affine": store.xrf_affine.tolist(),
        "training": {"epochs_max": epochs, "epochs_run": len(history), "best_epoch": best_epoch,
                     "batch_size": batch_size, "lr": lr, "seconds": round(time.perf_counter() - t0, 2),
                     "encoder_seconds": round(t_enc, 2), "temperature": float(1 / model.logit_scale.detach().exp())},
        "validation": {"val_similarity@10": val_sim, "val_recall@10": val_recall},
        "history": history[-50:],
    }
    part = f"models/{encoder_id}"
    from ..io.mosaic import _remove_part

    _remove_part(store, part)
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
        g.attrs["nightwatch"] = _jsonable(attrs)
        store.mark_complete(
            part, image_model_id=emb.model_id, image_signature=emb.signature, grid_id=emb.grid_id,
            encoder_hash=enc_hash, train_region=train_region, epochs=len(history), validation=attrs["validation"],
        )
    except BaseException:
        _remove_part(store, part)
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
        "seconds": attrs["training"]["seconds"],
    }


# ------------------------------------------------------------------------------- loading
class XrfBridge:
    """A trained spectrum encoder + inverse head, loaded from ``models/<encoder_id>/``."""

    def __init__(self, store, encoder_id: str) -> None:
        from .spectrum_encoder import build_spectrum_encoder, load_safetensors_bytes

        g = store.root[f"models/{encoder_id}"]
        self.store = store
        self.encoder_id = encoder_id
        self.attrs = dict(g.attrs["nightwatch"])
        self.config = SpectrumEncoderConfig.from_dict(self.attrs["config"])
        if self.config.config_hash() != self.attrs.get("config_hash"):
            raise NightwatchError(f"The config of spectrum encoder {encoder_id} in {store.path} does not match its hash.")
        self.encoder = build_spectrum_encoder(self.config)
        load_safetensors_bytes(self.encoder, np.asarray(g["encoder"][...]).tobytes(), f"spectrum encoder {encoder_id}")
        self.encoder.eval()
        self.element_names = list(self.attrs.get("element_names", []))
        self.head = None
        if "head" in g:
            self.head = _build_head(self.config.dim, len(self.element_names))
            load_safetensors_bytes(self.head, np.asarray(g["head"][...]).tobytes(), f"inverse head {encoder_id}")
            self.head.eval()
            self.bank_elements = np.asarray(g["bank_elements"][...], np.float32)
        self.bank_tiles = np.asarray(g["bank_tiles"][...], np.int64)
        self.bank_vectors = np.asarray(g["bank_vectors"][...], np.float32)
        self.split = np.asarray(g["split"][...], np.int8)

    @property
    def image_model_id(self) -> str:
        return self.attrs["image_model_id"]

    @property
    def grid_id(self) -> str:
        return self.attrs["grid_id"]

    @property
    def temperature(self) -> float:
        return float(self.attrs["training"]["temperature"])

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Raw spectra (cube channels) or element vectors ``(n, m)`` -> unit vectors ``(n, dim)``."""
        x = np.atleast_2d(np.asarray(x, dtype=np.float32))
        if x.shape[1] != self.config.n_inputs:
            raise NightwatchError(
                f"Spectrum encoder {self.encoder_id} expects {self.config.n_inputs} "
                f"{'channels' if self.config.input_kind == 'spectrum' else 'element intensities'}; got {x.shape[1]}."
            )
        return _encode_in_batches(self.encoder, x)


def list_xrf_encoders(store) -> list[str]:
    """Ids of the complete spectrum encoders in a store, oldest first."""
    if not store.has("models"):
        return []
    done = store.completed()
    ids = [m for m, _ in store.root["models"].groups() if m.startswith("xrf-") and f"models/{m}" in done]
    return sorted(ids, key=lambda m: done[f"models/{m}"].get("created", ""))


def load_xrf_bridge(
    store,
    encoder_id: str | None = None,
    *,
    image_model_id: str | None = None,
    grid_id: str | None = None,
) -> XrfBridge:
    """Load a trained spectrum encoder, checking it fits the store's embeddings.

    Parameters
    ----------
    store
        Painting store.
    encoder_id
        Which encoder (default: the newest one matching ``image_model_id`` / ``grid_id``).
    image_model_id
        The image model whose space the caller wants; an encoder trained against
        another model's embeddings is refused with one sentence.
    grid_id
        Restrict the default choice to encoders trained on this grid.
    """
    ids = list_xrf_encoders(store)
    if not ids:
        raise NightwatchError(f"{store.path} has no trained spectrum encoder; run `nightwatch train-xrf` first.")
    if encoder_id is None:
        cands = [i for i in ids if grid_id is None or store.node_attrs(f"models/{i}").get("grid_id") == grid_id]
        if image_model_id is not None:
            match = [i for i in cands if store.node_attrs(f"models/{i}").get("image_model_id") == image_model_id]
            if not match and cands:
                other = store.node_attrs(f"models/{cands[-1]}").get("image_model_id")
                raise NightwatchError(
                    f"The spectrum encoder {cands[-1]} was trained against embeddings of {other!r}, not {image_model_id!r}; "
                    f"retrain it for this model (nightwatch train-xrf --model {image_model_id})."
                )
            cands = match
        if not cands:
            raise NightwatchError(f"{store.path} has no spectrum encoder for grid {grid_id!r}; it has {', '.join(ids)}.")
        encoder_id = cands[-1]
    elif encoder_id not in ids:
        raise NightwatchError(f"{store.path} has no spectrum encoder {encoder_id!r}; it has {', '.join(ids)}.")
    bridge = XrfBridge(store, encoder_id)
    if image_model_id is not None and bridge.image_model_id != image_model_id:
        raise NightwatchError(
            f"The spectrum encoder {encoder_id} was trained against embeddings of {bridge.image_model_id!r}, "
            f"not {image_model_id!r}; retrain it for this model (nightwatch train-xrf --model {image_model_id})."
        )
    # the embeddings it was trained against must still be the ones in the store
    emb = open_tile_embeddings(store, bridge.grid_id, bridge.image_model_id)
    diff = _signature_mismatch(bridge.attrs.get("image_signature", {}), emb.signature)
    if diff:
        raise NightwatchError(
            f"The spectrum encoder {encoder_id} was trained against other embeddings than grid "
            f"{bridge.grid_id}/{bridge.image_model_id} now holds ({diff[0]} differs); retrain it with `nightwatch train-xrf`."
        )
    return bridge


# ------------------------------------------------------------------------------- spectrum search
def _spectrum_on_axis(energies: np.ndarray, counts: np.ndarray, store, what: str) -> np.ndarray:
    """Bring a spectrum onto the cube's channel axis, or say why it cannot be.

    Counts are rebinned per energy interval (the XRF engine's
    :func:`~napari_nightwatch.xrf.spectra.rebin_spectrum`), so finer or coarser
    channels keep the spectrum's shape.  The file must cover the energies where the
    cube has its counts: beyond the file's range there is nothing to compare, and a
    truncated spectrum would look like another composition.
    """
    from ..xrf.spectra import rebin_spectrum

    target = store.xrf_energies()
    e = np.asarray(energies, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if e.shape != c.shape or e.ndim != 1 or e.size < 2:
        raise NightwatchError(f"{what} must be one spectrum with an energy per channel.")
    if not np.all(np.isfinite(c)) or (c < 0).any():
        raise NightwatchError(f"{what} has NaN or negative counts.")
    sumspec = store.xrf_sum_spectrum()
    outside = (target < e.min()) | (target > e.max())
    lost = float(sumspec[outside].sum() / max(sumspec.sum(), 1e-12))
    if lost > 0.05:
        raise NightwatchError(
            f"{what} covers {e.min():.2f}-{e.max():.2f} keV but {lost:.0%} of the cube's counts lie outside that range "
            f"(cube: {target[0]:.2f}-{target[-1]:.2f} keV); give a spectrum measured over the cube's energy range."
        )
    return rebin_spectrum(c, e, target)


def _read_spectrum_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(energies keV, counts) of a spectrum file read by the XRF file readers."""
    from ..io.xrf_files import read_spectrum

    spec = read_spectrum(path)
    if spec.calibration is None:
        raise NightwatchError(f"Spectrum file {path} has no energy calibration, so it cannot be put on the cube's energy axis.")
    return spec.energies(), np.asarray(spec.counts, dtype=np.float64)


def query_input(
    store,
    *,
    spectrum_file: str | Path | None = None,
    xrf_pixel: tuple[int, int] | None = None,
    xrf_region: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, str]:
    """The raw encoder input for a query: a spectrum on the cube axis, or a maps vector."""
    given = [a is not None for a in (spectrum_file, xrf_pixel, xrf_region)]
    if sum(given) != 1:
        raise NightwatchError("Give exactly one of a spectrum file (--spectrum), an XRF pixel (--xrf-pixel) or region (--xrf-region).")
    kind = store.xrf_kind
    ny, nx = store.xrf_shape
    if spectrum_file is not None:
        if kind != "cube":
            raise NightwatchError(
                f"{store.path} holds exported element maps, not a spectral cube, so a spectrum file cannot be compared; "
                "query by --xrf-pixel or --xrf-region instead."
            )
        path = Path(spectrum_file)
        if not path.is_file():
            raise NightwatchError(f"Spectrum file {path} does not exist.")
        e, c = _read_spectrum_file(path)
        return _spectrum_on_axis(e, c, store, f"Spectrum file {path}"), f"file {path.name}"
    if xrf_pixel is not None:
        y, x = (int(round(v)) for v in xrf_pixel)
        if not (0 <= y < ny and 0 <= x < nx):
            raise NightwatchError(f"XRF pixel ({y}, {x}) lies outside the {ny} x {nx} px scan.")
        y0, x0, y1, x1 = y, x, y + 1, x + 1
        what = f"XRF pixel ({y}, {x})"
    else:
        y0, x0, y1, x1 = (int(round(v)) for v in xrf_region)
        y0, y1 = sorted((y0, y1))
        x0, x1 = sorted((x0, x1))
        y0, x0, y1, x1 = max(0, y0), max(0, x0), min(ny, y1), min(nx, x1)
        if y1 <= y0 or x1 <= x0:
            raise NightwatchError(f"XRF region {tuple(xrf_region)} does not cover any pixel of the {ny} x {nx} px scan.")
        what = f"XRF region ({y0}, {x0}, {y1}, {x1})"
    if kind == "cube":
        block = np.asarray(store.xrf_cube()[y0:y1, x0:x1], dtype=np.float64)
        return block.reshape(-1, block.shape[-1]).mean(0), what
    from ..xrf.pairing import load_element_intensity_maps

    _, maps = load_element_intensity_maps(store)
    return np.nanmean(maps[:, y0:y1, x0:x1].reshape(maps.shape[0], -1), axis=1), what


def spectrum_query_vector(
    store,
    *,
    spectrum_file: str | Path | None = None,
    xrf_pixel: tuple[int, int] | None = None,
    xrf_region: tuple[int, int, int, int] | None = None,
    grid_id: str | None = None,
    model_id: str | None = None,
) -> tuple[np.ndarray, str]:
    """A query vector in the image model's embedding space from an XRF spectrum.

    Parameters
    ----------
    store
        Painting store (path or :class:`~napari_nightwatch.project.PaintingStore`)
        with a trained spectrum encoder.
    spectrum_file
        A single-spectrum file (any format the XRF engine reads), resampled onto
        the cube's energy axis.
    xrf_pixel
        ``(y, x)`` XRF pixel of the cube (or of the imported maps).
    xrf_region
        ``(y0, x0, y1, x1)`` XRF pixels: the mean spectrum of the rectangle.
    grid_id
        Use the encoder trained on this grid (default: the newest encoder).
    model_id
        Use the encoder trained against this image model; another model's encoder
        is refused with one sentence.

    Returns
    -------
    vector, model_id
        ``(dim,)`` float32 unit vector and the image model whose index to search.
    """
    from ..project import PaintingStore

    if not isinstance(store, PaintingStore):
        store = PaintingStore.open(store)
    bridge = load_xrf_bridge(store, image_model_id=model_id, grid_id=grid_id)
    x, _ = query_input(store, spectrum_file=spectrum_file, xrf_pixel=xrf_pixel, xrf_region=xrf_region)
    if float(np.sum(x)) <= 0:
        raise NightwatchError("The query spectrum has no counts.")
    return bridge.encode(x[None])[0].astype(np.float32), bridge.image_model_id


# ------------------------------------------------------------------------------- the inverse
def _topk_rows(sims: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    k = min(k, sims.shape[1])
    idx = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    return idx, np.take_along_axis(sims, idx, 1)


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
        idx, sims = _topk_rows(v @ bridge.bank_vectors.T, k)
        w = np.exp((sims - sims.max(1, keepdims=True)) * inv_t)
        w /= w.sum(1, keepdims=True)
        joint = np.einsum("nk,nkc->nc", w, be[idx])
        # spread of the measured composition among the tiles that *look* the same:
        # large where the image does not determine the element (hidden layers)
        idx2, sims2 = _topk_rows(v @ bank_image_vectors.T, k)
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


def leave_block_out_r(
    image_vectors: np.ndarray, elements: np.ndarray, blocks: np.ndarray, *, k: int = 16, inv_t: float = 20.0,
    chunk: int = 2048,
) -> list[float | None]:
    """Per element: how well the photograph predicts it, without looking at its block.

    Each training tile's composition is estimated from the training tiles that look
    most alike *in other spatial blocks* (softmax-weighted), and compared with its
    measurement (Pearson r).  Near 0 where the photograph carries no evidence of the
    element (a hidden layer); None where the element does not vary.
    """
    n = len(image_vectors)
    pred = np.zeros_like(elements, dtype=np.float64)
    for s in range(0, n, chunk):
        sims = image_vectors[s : s + chunk] @ image_vectors.T
        sims[blocks[s : s + chunk, None] == blocks[None, :]] = -np.inf
        idx, top = _topk_rows(sims, k)
        w = np.exp((top - top.max(1, keepdims=True)) * inv_t)
        w[~np.isfinite(top)] = 0
        w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
        pred[s : s + chunk] = np.einsum("nk,nkc->nc", w, elements[idx])
    return [pearson_r(pred[:, i], elements[:, i]) for i in range(elements.shape[1])]


def pearson_r(a: np.ndarray, b: np.ndarray) -> float | None:
    """Pearson correlation of two vectors (None when either is constant or empty)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size < 3 or a.std() == 0 or b.std() == 0:
        return None
    return float(np.corrcoef(a, b)[0, 1])


def block_ssim(measured: np.ndarray, predicted: np.ndarray, held_out: np.ndarray, block_tiles: int) -> float | None:
    """Mean SSIM over the held-out blocks of two (rows, cols) maps.

    Each block that is wholly held out and measured is compared on its own
    (window 7, or the block edge if smaller and odd), so no window mixes held-out
    tiles with training tiles; the data range is the measured map's range.
    """
    from skimage.metrics import structural_similarity

    rows, cols = measured.shape
    rng = float(np.nanmax(measured) - np.nanmin(measured)) if np.isfinite(measured).any() else 0.0
    if rng <= 0:
        return None
    win = min(7, block_tiles if block_tiles % 2 else block_tiles - 1)
    if win < 3:
        return None
    vals, weights = [], []
    for r0 in range(0, rows, block_tiles):
        for c0 in range(0, cols, block_tiles):
            sl = (slice(r0, r0 + block_tiles), slice(c0, c0 + block_tiles))
            m, p, h = measured[sl], predicted[sl], held_out[sl]
            if min(m.shape) < win or not h.all() or not np.isfinite(m).all():
                continue
            vals.append(structural_similarity(m, p, data_range=rng, win_size=win))
            weights.append(m.size)
    if not vals:
        return None
    return float(np.average(vals, weights=weights))


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
    from ..io.mosaic import _remove_part
    from ..io.ngff import write_image_metadata
    from ..project import _jsonable
    from ..xrf.pairing import footprint_matrix, load_element_intensity_maps

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
    _remove_part(store, part)
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
        g.attrs["nightwatch"] = _jsonable(attrs)
        store.mark_complete(part, encoder_id=bridge.encoder_id, image_model_id=bridge.image_model_id,
                            grid_id=bridge.grid_id, validation=validation)
    except BaseException:
        _remove_part(store, part)
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
    names = sorted(n for n, _ in store.root["predicted"].groups() if store.is_complete(f"predicted/{n}"))
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
