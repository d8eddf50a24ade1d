"""Test support for the search tests: a deterministic numpy encoder and embedded stores.

The encoder has the model interface the search layer expects (model_id, dim,
signature, encode_text, encode_images) and embeds colour and texture statistics,
so tiles of the same pigment land near each other and retrieval has ground truth.
"""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np

from napari_nightwatch.core.jsonutil import jsonable
from napari_nightwatch.core.tiling import TileGrid
from napari_nightwatch.store import PaintingStore


class ColourTextureEncoder:
    """Colour and texture statistics of an image, projected to ``dim`` by a fixed random matrix.

    Random projections keep cosine similarities between feature vectors (Johnson-
    Lindenstrauss), so "same colour and texture" becomes "close in the embedding".
    Text is embedded as the features of a flat patch when it names a colour, else
    from a hash of the words (deterministic, meaningless).
    """

    COLOURS = {"red": (190, 40, 30), "blue": (40, 70, 170), "yellow": (220, 180, 60), "green": (40, 140, 100),
               "black": (30, 30, 30), "brown": (100, 60, 40), "white": (235, 230, 220)}

    def __init__(self, dim: int = 64, seed: int = 7, name: str = "colourtex") -> None:
        self.dim = dim
        self.model_id = f"{name}__test"
        self.random_weights = False
        self._proj = np.random.default_rng(seed).standard_normal((dim, 12)) / np.sqrt(dim)
        self.signature = {
            "model": name, "pretrained": "none", "model_hash": f"proj-seed-{seed}", "dim": dim,
            "preprocessing": {"input": "RGB uint8", "features": "colour+texture"},
        }

    def _features(self, img: np.ndarray) -> np.ndarray:
        a = img.astype(np.float64) / 255.0
        mean = a.mean(axis=(0, 1))
        std = a.std(axis=(0, 1))
        gy = np.abs(np.diff(a.mean(axis=2), axis=0)).mean() if a.shape[0] > 1 else 0.0
        gx = np.abs(np.diff(a.mean(axis=2), axis=1)).mean() if a.shape[1] > 1 else 0.0
        dark = float((a.mean(axis=2) < 0.25).mean())
        chroma = [mean[0] - mean[1], mean[1] - mean[2], mean[0] - mean[2]]
        # centred so that cosine compares colours, not their common offset
        f = np.concatenate([2 * (mean - 0.45), 4 * std, [8 * gy, 8 * gx, dark], 3 * np.asarray(chroma)])
        return f

    def encode_images(self, images: np.ndarray) -> np.ndarray:
        imgs = np.asarray(images)
        if imgs.ndim == 3:
            imgs = imgs[None]
        f = np.stack([self._features(im[..., :3]) for im in imgs])
        v = f @ self._proj.T
        return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)

    def encode_text(self, texts) -> np.ndarray:
        out = []
        for t in texts:
            words = t.lower().split()
            rgb = next((self.COLOURS[w] for w in words if w in self.COLOURS), None)
            if rgb is not None:
                patch = np.broadcast_to(np.asarray(rgb, np.uint8), (16, 16, 3))
                out.append(self.encode_images(patch[None])[0])
            else:
                seed = int(hashlib.sha1(t.encode()).hexdigest()[:8], 16)
                v = np.random.default_rng(seed).standard_normal(self.dim)
                out.append((v / np.linalg.norm(v)).astype(np.float32))
        return np.stack(out).astype(np.float32)


def write_embeddings(store: PaintingStore, encoder, *, tile: int = 32, stride: int | None = None,
                     chunk_tiles: int = 64, chunks_done: list[int] | None = None, fresh: bool = True) -> TileGrid:
    """Embed every kept tile of a level-0 grid with ``encoder``, in the agreed store layout.

    ``chunks_done`` writes only those chunks (the others stay 0 and not done), to
    mimic a partial run; ``fresh=False`` writes them into the existing arrays (the
    run continued) and marks the embeddings complete once every chunk is done.
    """
    from napari_nightwatch.store.embeddings import embedding_signature
    from napari_nightwatch.store.tiles import make_grid

    grid = make_grid(store, level=0, tile=tile, stride=stride or tile, mask="none")
    mosaic = np.asarray(store.mosaic_levels()[0])
    boxes = grid.boxes()
    n = grid.n_tiles
    n_chunks = -(-n // chunk_tiles)
    path = f"grids/{grid.grid_id}/embeddings/{encoder.model_id}"
    if fresh and store.has(path):
        del store.root[path]
    if fresh:
        g = store.group(path, create=True)
        vec = g.create_array("vectors", shape=(n, encoder.dim), dtype=np.float16, chunks=(chunk_tiles, encoder.dim),
                             fill_value=0)
        done = g.create_array("done", shape=(n_chunks,), dtype=bool, chunks=(n_chunks,), fill_value=False)
    else:
        g = store.group(path)
        vec, done = g["vectors"], g["done"]
    todo = range(n_chunks) if chunks_done is None else chunks_done
    for c in todo:
        idx = np.arange(c * chunk_tiles, min(n, (c + 1) * chunk_tiles))
        crops = np.stack([mosaic[b[0] : b[2], b[1] : b[3]] for b in boxes[idx]])
        vec[idx[0] : idx[-1] + 1] = encoder.encode_images(crops).astype(np.float16)
        done[c] = True
    g.attrs["nightwatch"] = jsonable(
        {"signature": embedding_signature(store, encoder, grid), "dim": encoder.dim, "chunk_tiles": chunk_tiles}
    )
    if np.asarray(done[...]).all():
        store.mark_complete(path, model_id=encoder.model_id)
    return grid


def copy_store(src: PaintingStore, dst: Path) -> PaintingStore:
    shutil.copytree(src.path, dst)
    return PaintingStore.open(dst, mode="r+")


_BASE: dict[str, PaintingStore] = {}


def base_store(tmp_path_factory, synthetic_store: PaintingStore) -> PaintingStore:
    """The shared synthetic painting (conftest's ``synthetic_store``, 512 px) embedded with the
    test encoder on a 32 px grid; built once per session, opened read-only.

    Tests that write copy it first (:func:`copy_store`).
    """
    if "base" not in _BASE:
        store = copy_store(synthetic_store, tmp_path_factory.mktemp("search_base") / "painting.nightwatch.zarr")
        write_embeddings(store, ColourTextureEncoder())
        _BASE["base"] = PaintingStore.open(store.path, mode="r")
    return _BASE["base"]
