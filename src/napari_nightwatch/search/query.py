"""Queries: every kind of question becomes one unit vector, then one search.

Text, an exemplar region of the painting, an exemplar image file and (elsewhere) an
XRF spectrum each reduce to a ``(dim,)`` vector in the model's embedding space;
:func:`combine` mixes them with weights and negatives ("like A, not like B"). The
vector is then looked up in one or several painting stores (:func:`search`) or
scored against every tile of a grid (:func:`similarity_map`). Neither of those two
knows which model made the vector: they only need its dimension to match.

A "model" here is any object with ``model_id``, ``dim``, ``signature``,
``encode_text(list[str])`` and ``encode_images(uint8 (n, h, w, 3))`` returning
L2-normalised float32 rows (:class:`napari_nightwatch.ml.clip.ClipEngine`); it is
passed in, never built here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.progress import ProgressCallback, report
from ..store import PaintingStore
from ..store.embeddings import open_embeddings, resolve_grid_model, unit_rows
from .index import VectorIndex, load_index

#: prompt templates for short texts (CLIP was trained on captions, not single words)
PAINTING_TEMPLATES = (
    "a close-up photo of {} on a painting",
    "a microscope image of {} in paint",
    "a detail of an old master painting showing {}",
)
#: exemplar images are shrunk to this longest side before encoding; CLIP sees 224 px anyway
_IMAGE_MAX_SIDE = 1024


# ------------------------------------------------------------------------------- vectors
def _unit(v: np.ndarray, what: str) -> np.ndarray:
    v = np.asarray(v, dtype=np.float64).reshape(-1)
    n = float(np.linalg.norm(v))
    if not np.isfinite(v).all() or n < 1e-8:
        raise NightwatchError(f"The {what} is zero or not finite, so it points nowhere in the embedding space.")
    return (v / n).astype(np.float32)


def check_text(text: str) -> str:
    """The query text stripped; a sentence when it is empty."""
    if not isinstance(text, str) or not text.strip():
        raise NightwatchError("The text query is empty; give the words to look for (e.g. --text craquelure).")
    return text.strip()


def check_templates(templates: Sequence[str]) -> list[str]:
    """Prompt templates that hold exactly one ``{}`` and nothing else for ``str.format``; a sentence otherwise."""
    out = []
    for t in templates:
        try:
            ok = "{}" in t and t.format("x") == t.replace("{}", "x", 1).replace("{{", "{").replace("}}", "}")
        except (IndexError, KeyError, ValueError):
            ok = False
        if not ok:
            raise NightwatchError(
                f"Prompt template {t!r} must hold one '{{}}' where the text goes and no other braces "
                "(write '{{' or '}}' for a literal brace)."
            )
        out.append(t)
    return out


def text_vector(model, text: str, *, templates: Sequence[str] | None = None) -> np.ndarray:
    """Embed a text query, averaging over prompt templates.

    Parameters
    ----------
    model
        Object with ``encode_text(list[str]) -> (n, dim)`` (e.g. a ClipEngine).
    text
        What to look for, e.g. ``"craquelure"``.
    templates
        Strings with one ``{}`` each, e.g. :data:`PAINTING_TEMPLATES`; the text's
        embeddings through all templates are averaged. None: the text alone.

    Returns
    -------
    np.ndarray
        float32 ``(dim,)`` unit vector.
    """
    text = check_text(text)
    prompts = [t.format(text) for t in check_templates(templates)] if templates else [text]
    vecs = np.asarray(model.encode_text(prompts), dtype=np.float32)
    return _unit(vecs.mean(axis=0), f"embedding of the text {text!r}")


def _as_rgb8(a: np.ndarray) -> np.ndarray:
    """(h, w[, c]) pixels of any integer/float type -> uint8 RGB, as the models expect."""
    a = np.asarray(a)
    if a.ndim == 2:
        a = a[..., None]
    if a.shape[-1] == 1:
        a = np.repeat(a, 3, axis=-1)
    elif a.shape[-1] >= 4:
        a = a[..., :3]  # alpha does not reach the model
    elif a.shape[-1] == 2:
        a = np.repeat(a[..., :1], 3, axis=-1)  # grey + alpha
    if a.dtype == np.uint8:
        return np.ascontiguousarray(a)
    if np.issubdtype(a.dtype, np.integer):
        top = float(np.iinfo(a.dtype).max) if a.dtype.itemsize > 1 else 255.0
        return np.clip(a.astype(np.float64) * (255.0 / top), 0, 255).round().astype(np.uint8)
    top = 1.0 if a.size and float(np.nanmax(a)) <= 1.0 else 255.0
    return np.clip(np.nan_to_num(a.astype(np.float64)) * (255.0 / top), 0, 255).round().astype(np.uint8)


def _read_image(path: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im.draft("RGB", (_IMAGE_MAX_SIDE, _IMAGE_MAX_SIDE))  # JPEG: decode at reduced size
            if im.mode not in ("RGB", "RGBA", "L", "LA", "I;16", "I", "F"):
                im = im.convert("RGB")
            if max(im.size) > _IMAGE_MAX_SIDE:
                im.thumbnail((_IMAGE_MAX_SIDE, _IMAGE_MAX_SIDE), Image.Resampling.LANCZOS)
            return np.asarray(im)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        pil_error = exc
    # 16-bit RGB and multi-page scientific TIFFs that PIL cannot read
    try:
        import tifffile

        a = np.asarray(tifffile.imread(path))
        while a.ndim > 3 or (a.ndim == 3 and a.shape[-1] not in (1, 2, 3, 4) and a.shape[0] in (1, 3, 4)):
            a = np.moveaxis(a, 0, -1) if a.ndim == 3 else a[0]
        if a.ndim in (2, 3):
            return a
    except Exception:
        pass
    raise NightwatchError(
        f"{path} is not an image file that can be read (PNG, JPEG, TIFF, ...): {type(pil_error).__name__}."
    )


def image_vector(model, path: str | Path) -> np.ndarray:
    """Embed an exemplar image file (e.g. a detail of another painting).

    Parameters
    ----------
    model
        Object with ``encode_images(uint8 (n, h, w, 3)) -> (n, dim)``.
    path
        PNG, JPEG, TIFF, ... file; shrunk to a longest side of 1024 px first.

    Returns
    -------
    np.ndarray
        float32 ``(dim,)`` unit vector.
    """
    p = Path(path)
    if not p.is_file():
        raise NightwatchError(f"Exemplar image {p} does not exist.")
    rgb = np.array(_as_rgb8(_read_image(p)))  # writable: torch warns on read-only buffers
    if rgb.ndim != 3 or min(rgb.shape[:2]) < 1:
        raise NightwatchError(f"Exemplar image {p} has no pixels (shape {rgb.shape}).")
    return _unit(np.asarray(model.encode_images(rgb[None]), dtype=np.float32)[0], f"embedding of {p.name}")


def region_box_px(store: PaintingStore, box: Sequence[float], units: str = "px") -> tuple[float, float, float, float]:
    """Validate a region ``(y0, x0, y1, x1)`` and return it in level-0 pixels, clipped to the mosaic.

    Raises
    ------
    NightwatchError
        Units other than "px"/"um", a region smaller than one pixel, or one that lies
        wholly outside the painting.
    """
    if units not in ("px", "um"):
        raise NightwatchError(f"units={units!r} must be 'px' (level-0 pixels) or 'um' (micrometres).")
    b = [float(v) for v in box]
    if len(b) != 4 or not all(math.isfinite(v) for v in b):
        raise NightwatchError(f"Region {box!r} must be four finite numbers y0, x0, y1, x1.")
    if units == "um":
        px = store.mosaic_pixel_size_um
        b = [v / px for v in b]
    y0, x0, y1, x1 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    unit_text = "micrometres" if units == "um" else "pixels"
    if y1 - y0 < 1 or x1 - x0 < 1:
        raise NightwatchError(
            f"Region {tuple(box)} ({unit_text}) is smaller than one mosaic pixel; give a box at least 1 px on each side."
        )
    h, w = store.mosaic_shape
    cy0, cx0, cy1, cx1 = max(y0, 0.0), max(x0, 0.0), min(y1, float(h)), min(x1, float(w))
    if cy1 - cy0 < 1 or cx1 - cx0 < 1:
        raise NightwatchError(
            f"Region {tuple(box)} ({unit_text}) lies outside the painting, whose mosaic is {h} x {w} px "
            f"({h * store.mosaic_pixel_size_um:g} x {w * store.mosaic_pixel_size_um:g} um)."
        )
    return cy0, cx0, cy1, cx1


def _read_crop(store: PaintingStore, level: int, box: tuple[float, float, float, float]) -> np.ndarray:
    levels = store.mosaic_levels()
    d = store.mosaic_downsamples[level] if level < len(store.mosaic_downsamples) else 2**level
    y0, x0, y1, x1 = box
    # a crop under one pixel of the grid's level is read from full resolution instead
    if (y1 - y0) / d < 1 or (x1 - x0) / d < 1:
        level, d = 0, 1
    arr = levels[level]
    ys, xs = int(math.floor(y0 / d)), int(math.floor(x0 / d))
    ye, xe = max(ys + 1, int(math.ceil(y1 / d))), max(xs + 1, int(math.ceil(x1 / d)))
    return _as_rgb8(np.asarray(arr[ys:ye, xs:xe]))


def region_vector(
    store: PaintingStore | str | Path,
    model,
    grid: str | None,
    box: Sequence[float],
    *,
    units: str = "px",
    model_id: str | None = None,
) -> np.ndarray:
    """Embed an exemplar region of this painting.

    Parameters
    ----------
    store
        The painting store.
    model
        The model whose embeddings are used (its ``model_id``); needed to embed the crop
        when the region is smaller than a tile. May be None when ``model_id`` is given
        and the region covers whole embedded tiles.
    grid
        Grid id (default: the only one with embeddings).
    box
        ``(y0, x0, y1, x1)`` in level-0 pixels (``units="px"``) or micrometres (``"um"``).
    units
        "px" or "um".
    model_id
        Embeddings to use when ``model`` is None.

    Returns
    -------
    np.ndarray
        float32 ``(dim,)`` unit vector: the mean of the stored embeddings of the kept,
        embedded tiles lying wholly inside the region; if there are none, the model's
        embedding of the region's pixels (read at the grid's pyramid level).
    """
    store = PaintingStore.coerce(store)
    mid = model.model_id if model is not None else model_id
    emb = open_embeddings(store, grid, mid)
    if model is not None:
        emb.check_model(dict(model.signature), f"model {model.model_id}")
    b = region_box_px(store, box, units)
    g = emb.grid
    inside = np.intersect1d(g.tiles_in_box(b, fully=True), emb.available)
    if inside.size:
        return _unit(emb.read(inside).mean(axis=0), f"mean embedding of the tiles in region {tuple(box)}")
    if model is None:
        raise NightwatchError(
            f"Region {tuple(box)} holds no whole embedded tile of grid {emb.grid_id}; a model is needed to embed it."
        )
    crop = _read_crop(store, g.level, b)
    return _unit(np.asarray(model.encode_images(crop[None]), dtype=np.float32)[0], f"embedding of region {tuple(box)}")


def combine(
    positives: Sequence[tuple[np.ndarray, float] | np.ndarray],
    negatives: Sequence[tuple[np.ndarray, float] | np.ndarray] = (),
) -> np.ndarray:
    """Mix query vectors: ``sum(w * positive) - sum(w * negative)``, normalised.

    Parameters
    ----------
    positives
        ``(vector, weight)`` pairs (a bare vector has weight 1): what to look for.
    negatives
        ``(vector, weight)`` pairs: what the results should not look like.

    Returns
    -------
    np.ndarray
        float32 ``(dim,)`` unit vector.
    """
    if not positives:
        raise NightwatchError("A combined query needs at least one positive vector (what to look for).")
    total = None
    for sign, group in ((1.0, positives), (-1.0, negatives)):
        for item in group:
            vec, w = (item, 1.0) if isinstance(item, np.ndarray) else item
            v = np.asarray(vec, dtype=np.float64).reshape(-1)
            if not math.isfinite(float(w)) or float(w) < 0:
                raise NightwatchError(f"Query weight {w!r} must be a finite number >= 0 (negatives use the negatives list).")
            if total is None:
                total = np.zeros_like(v)
            if v.shape != total.shape:
                raise NightwatchError(f"Query vectors of dimensions {total.size} and {v.size} cannot be combined.")
            total += sign * float(w) * _unit(v, "query vector")
    return _unit(total, "combined query (the negatives cancel the positives)")


# ------------------------------------------------------------------------------- results
@dataclass
class Hit:
    """One search result: a tile of one painting.

    Attributes
    ----------
    rank
        1 = best, over all searched stores.
    score
        Cosine similarity to the query.
    store
        Path of the painting store.
    tile
        Tile index in the grid.
    box
        ``(y0, x0, y1, x1)`` in level-0 pixels.
    y, x
        Tile centre in level-0 pixels.
    y_um, x_um, box_um
        The same in micrometres.
    grid_id, model_id
        Which grid and embeddings were searched.
    source
        For the pigment door: ``"measured"`` or ``"predicted"`` element maps.
    composition
        For the pigment door: the tile's element values as fractions of each map's
        robust maximum.
    no_evidence
        For the pigment door: families whose predicted value has no evidence in the
        photograph at this tile.
    """

    rank: int
    score: float
    store: str
    tile: int
    box: tuple[int, int, int, int]
    y: float
    x: float
    y_um: float
    x_um: float
    box_um: tuple[float, float, float, float]
    grid_id: str = ""
    model_id: str = ""
    source: str = ""
    composition: dict[str, float | None] | None = None
    no_evidence: list[str] = field(default_factory=list)


def hits_to_json(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    """Hits as JSON-able dicts (rank, score, tile, y, x, y_um, x_um, store, box, box_um, ...)."""
    out = []
    for h in hits:
        d = asdict(h)
        # the pigment door's fields only where they say something
        for key, empty in (("source", ""), ("composition", None), ("no_evidence", [])):
            if d[key] == empty:
                del d[key]
        d["box"] = [int(v) for v in h.box]
        d["box_um"] = [float(v) for v in h.box_um]
        out.append(d)
    return out


def box_iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Intersection over union of one ``(4,)`` box with ``(n, 4)`` boxes (y0, x0, y1, x1)."""
    iy = np.clip(np.minimum(box[2], boxes[:, 2]) - np.maximum(box[0], boxes[:, 0]), 0, None)
    ix = np.clip(np.minimum(box[3], boxes[:, 3]) - np.maximum(box[1], boxes[:, 1]), 0, None)
    inter = iy * ix
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return inter / np.maximum(area + areas - inter, 1e-12)


def merge_overlapping(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float = 0.3) -> np.ndarray:
    """Greedy non-maximum suppression: indices (best first) of boxes kept.

    A box is dropped when it overlaps an already kept, better-scoring box with IoU
    above ``iou_threshold``. Written here (a few lines) because torchvision's ``nms``
    would pull torch into the search layer.
    """
    order = np.argsort(-np.asarray(scores), kind="stable")
    b = np.asarray(boxes, dtype=np.float64)
    kept: list[int] = []
    for i in order:
        if kept and np.any(box_iou(b[i], b[kept]) > iou_threshold):
            continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


def _stores(stores) -> list[PaintingStore]:
    if isinstance(stores, (PaintingStore, str, Path)):
        stores = [stores]
    out = [PaintingStore.coerce(s) for s in stores]
    if not out:
        raise NightwatchError("Give at least one painting store to search.")
    return out


def _query(query_vector: np.ndarray, dim: int, where: str) -> np.ndarray:
    q = np.asarray(query_vector, dtype=np.float32)
    if q.ndim != 1 or q.shape[0] != dim:
        raise NightwatchError(
            f"The query vector has shape {q.shape}, but the embeddings of {where} have dimension {dim}; "
            "use the model that made them."
        )
    return _unit(q, "query vector")


def search(
    stores: PaintingStore | str | Path | Sequence[PaintingStore | str | Path],
    query_vector: np.ndarray,
    *,
    grid_id: str | None = None,
    model_id: str | None = None,
    k: int = 20,
    merge: bool = True,
    iou_threshold: float = 0.3,
    indexes: dict[str, VectorIndex] | None = None,
) -> list[Hit]:
    """Find the tiles most similar to a query vector in one or several painting stores.

    Parameters
    ----------
    stores
        One store or a list: searched as one collection, results ranked by score.
    query_vector
        ``(dim,)`` vector from :func:`text_vector`, :func:`region_vector`,
        :func:`image_vector`, :func:`combine` or any other encoder of the same space.
    grid_id, model_id
        Which embeddings (default: each store's only ones). Every store must hold
        embeddings of the same ``model_id``.
    k
        Number of results.
    merge
        Merge overlapping hits (overlapping grids, ``stride < tile``): of tiles whose
        boxes overlap with IoU > ``iou_threshold``, only the best is returned.
    iou_threshold
        Overlap above which two hits count as the same place.
    indexes
        Optional cache ``{store path: VectorIndex}`` filled and reused across calls.

    Returns
    -------
    list[Hit]
        Best first, at most ``k``.
    """
    if int(k) < 1:
        raise NightwatchError(f"k={k} must be at least 1.")
    if not 0.0 <= float(iou_threshold) <= 1.0:
        raise NightwatchError(f"iou_threshold={iou_threshold} must lie between 0 and 1.")
    k = int(k)
    found: list[Hit] = []
    used_model = None
    for store in _stores(stores):
        gid, mid = resolve_grid_model(store, grid_id, model_id)
        if used_model is not None and mid != used_model:
            raise NightwatchError(
                f"{store.path} has embeddings of {mid}, the other stores of {used_model}; "
                "stores searched together must share one model (give --model-id)."
            )
        used_model = mid
        # the index's completion record changes when it is rebuilt or extended: a stale cache entry misses
        made = store.completed().get(f"grids/{gid}/index/{mid}", {})
        key = f"{store.path}::{gid}::{mid}::{made.get('created')}::{made.get('n_vectors')}"
        vi = indexes.get(key) if indexes is not None else None
        if vi is None:
            vi = load_index(store, gid, mid)
            if indexes is not None:
                indexes[key] = vi
        q = _query(query_vector, vi.dim, f"{store.path} ({gid}/{mid})")
        g, px = vi.grid, vi.pixel_size_um
        # overlapping tiles compete for the same place: fetch enough to keep k after merging
        per_place = math.ceil(g.tile / g.stride) ** 2 if merge else 1
        fetch = min(vi.n_vectors, k * per_place + 8)
        while True:
            scores, tiles = vi.search(q[None], fetch)
            scores, tiles = scores[0], tiles[0]
            ok = tiles >= 0
            scores, tiles = scores[ok], tiles[ok]
            boxes = g.boxes(tiles)
            keep = merge_overlapping(boxes, scores, iou_threshold) if merge else np.arange(tiles.size)
            if keep.size >= k or fetch >= vi.n_vectors:
                break
            fetch = min(vi.n_vectors, fetch * 4)
        for i in keep[:k]:
            y0, x0, y1, x1 = (int(v) for v in boxes[i])
            found.append(
                Hit(0, float(scores[i]), str(store.path), int(tiles[i]), (y0, x0, y1, x1),
                    (y0 + y1) / 2.0, (x0 + x1) / 2.0, (y0 + y1) / 2.0 * px, (x0 + x1) / 2.0 * px,
                    (y0 * px, x0 * px, y1 * px, x1 * px), gid, mid)
            )
    found.sort(key=lambda h: -h.score)
    hits = found[:k]
    for r, h in enumerate(hits, start=1):
        h.rank = r
    return hits


def similarity_map(
    store: PaintingStore | str | Path,
    query_vector: np.ndarray,
    *,
    grid_id: str | None = None,
    model_id: str | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Score every tile of a grid against a query: an image aligned with the mosaic.

    Parameters
    ----------
    store
        The painting store.
    query_vector
        ``(dim,)`` query vector.
    grid_id, model_id
        Which embeddings (default: the only ones).
    progress
        ``progress(done, total, "similarity")``.

    Returns
    -------
    map : np.ndarray
        float32 ``(rows, cols)`` cosine similarity per tile; NaN for skipped
        (background) and not yet embedded tiles.
    scale, translate : tuple
        Level-0 pixels per map pixel and offset, placing map pixel (r, c) on the
        centre of tile (r, c) (:meth:`TileGrid.map_transform`).

    Notes
    -----
    Exact: computed from the stored embeddings chunk by chunk, not from the index.
    """
    store = PaintingStore.coerce(store)
    emb = open_embeddings(store, grid_id, model_id)
    q = _query(query_vector, emb.dim, f"{store.path} ({emb.grid_id}/{emb.model_id})")
    g = emb.grid
    n = int(emb.vectors.shape[0])
    step = int(emb.vectors.chunks[0]) * max(1, 65_536 // int(emb.vectors.chunks[0]))
    scores = np.full(n, np.nan, np.float32)
    valid = emb.keep & emb.done_tiles
    for i in range(0, n, step):
        block = unit_rows(np.asarray(emb.vectors[i : i + step], dtype=np.float32))
        s = block @ q
        scores[i : i + step] = np.where(valid[i : i + step], s, np.nan)
        report(progress, min(n, i + step), n, "similarity")
    m = g.to_map(scores, index=np.arange(n))
    scale, translate = g.map_transform()
    return m, scale, translate
