"""Shared helpers of the bridge tests (issue 5): an informative image encoder and a
synthetic painting made ready for the bridge (fitted maps, grid, embeddings).

The pretrained CLIP weights cannot be reached here, so the machinery is proven with
embeddings that carry known information: colour and texture statistics of each tile,
lifted to 512 dimensions by seeded random Fourier features (so that the cosine
between two tiles is a Gaussian kernel of their statistics, as a good image model's
similarity would be), written through the real embedding pipeline.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

TILE = 16  # mosaic px: 2 x 2 XRF pixels of the synthetic painting (8 px each)


class ColourTextureEngine:
    """A deterministic image "model" with the interface ``embed_store`` needs.

    Features per tile: median R, G, B, their interquartile ranges and the mean
    gradient magnitude (texture), each divided by a bandwidth; embedded by
    ``cos(W f + b)`` with seeded Gaussian ``W`` and L2-normalised.
    """

    # median colour dominates (robust to particles and cracks); spread and texture weigh less
    BANDWIDTH = np.array([0.15] * 3 + [0.5] * 3 + [0.5], np.float32)

    def __init__(self, dim: int = 512, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.dim = dim
        self.w = rng.standard_normal((len(self.BANDWIDTH), dim)).astype(np.float32)
        self.b = rng.uniform(0, 2 * np.pi, dim).astype(np.float32)
        digest = hashlib.sha256(self.w.tobytes() + self.b.tobytes()).hexdigest()[:16]
        self.model_id = f"colour-texture-{dim}__seed{seed}"
        self.model_hash = digest
        self.random_weights = False
        self.signature = {
            "model": "colour-texture",
            "pretrained": f"seed:{seed}",
            "model_hash": digest,
            "dim": dim,
            "preprocessing": {"features": "rgb median, rgb interquartile range, gradient", "bandwidth": self.BANDWIDTH.tolist()},
            "package_version": "test",
        }
        self.spec = {"kind": "colour-texture", "dim": dim, "seed": seed}

    def preprocess(self, tiles: np.ndarray) -> np.ndarray:
        t = np.asarray(tiles, np.float32) / 255.0
        n = t.shape[0]
        flat = t.reshape(n, -1, 3)
        q25, q50, q75 = np.quantile(flat, [0.25, 0.5, 0.75], axis=1)
        grey = t.mean(-1)
        grad = (np.abs(np.diff(grey, axis=1)).reshape(n, -1).mean(1) + np.abs(np.diff(grey, axis=2)).reshape(n, -1).mean(1)) / 2
        f = np.concatenate([q50, q75 - q25, grad[:, None]], 1)
        return (f / self.BANDWIDTH).astype(np.float32)

    def encode_preprocessed(self, feats: np.ndarray) -> np.ndarray:
        z = np.cos(feats @ self.w + self.b)
        return (z / np.linalg.norm(z, axis=1, keepdims=True)).astype(np.float32)

    def encode_images(self, tiles: np.ndarray) -> np.ndarray:
        return self.encode_preprocessed(self.preprocess(tiles))


def bridge_ready_store(path: Path, *, size: int = 512, seed: int = 0, tile: int = TILE, register: bool = True,
                       metamers: bool = False, engine=None):
    """Synthetic painting -> registered -> fitted element maps -> grid -> embeddings.

    ``metamers`` paints the metamer painting; ``engine`` replaces the informative
    colour/texture encoder (e.g. CLIP at random weights)."""
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store.tiles import make_grid
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting
    from napari_nightwatch.xrf.maps import fit_store

    store = synthesize_painting(path, size=size, seed=seed, metamers=metamers)
    gt = load_ground_truth(store)
    fit_store(store, elements=list(gt.families), refine=False)
    if register:
        from napari_nightwatch.xrf.registration import register_store

        register_store(store, auto=True)
    grid = make_grid(store, tile=tile, mask="none")
    engine = engine if engine is not None else ColourTextureEngine()
    embed_store(store, engine, grid, batch_size=256, num_workers=1)
    return store, gt, engine


def hidden_lead(store, name: str, gt) -> dict[str, float]:
    """How a prediction treats the lead of a hidden ground, on held-out tiles whose surface is not lead paint.

    Returns the number of such tiles, the fraction flagged "no evidence", and the
    fraction confidently wrong (not flagged, yet more than 3 sigma from the measurement).
    """
    from napari_nightwatch.core.tiling import TileGrid
    from napari_nightwatch.synth import pigment_index

    g = store.root[f"predicted/{name}"]
    a = dict(g.attrs["nightwatch"])
    i = a["elements"].index("Pb-L")
    pred, unc = np.asarray(g["0"][i]).ravel(), np.asarray(g["uncertainty"][i]).ravel()
    flag, meas = np.asarray(g["no_evidence"][i]).ravel(), np.asarray(g["measured"][i]).ravel()
    split = np.asarray(g["split"]).ravel()
    lab, _ = gt.tile_labels(TileGrid.from_attrs(a["grid"]).boxes())
    lead = [pigment_index(n) for n in ("lead white", "lead-tin yellow")]
    sel = (split == 2) & ~np.isin(lab, lead) & np.isfinite(meas)
    wrong = (flag[sel] == 0) & (np.abs(pred[sel] - meas[sel]) > 3 * unc[sel])
    return {"n_tiles": int(sel.sum()), "flagged": float(flag[sel].mean()), "confidently_wrong": float(wrong.mean())}
