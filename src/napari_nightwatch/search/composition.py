"""The pigment door: tiles ranked or filtered by what the element maps say they contain.

A tile's composition is the area-weighted mean of the element maps under its
footprint (the same footprint weights that pair tiles with XRF for the bridge):
measured maps (fitted with ``xrf-maps`` or imported with ``import-maps``) where the
scan covers the tile, and maps predicted from the photograph (``predict-xrf``)
elsewhere. Every tile keeps the source of its numbers, so every hit says whether it
rests on a measurement or on a prediction.

Two kinds of question are answered here, both without any CLIP model:

* ``--pigment smalt``: :func:`pigment_tile_scores` -- the library's element score
  (:func:`napari_nightwatch.xrf.pigments.pigment_score`) times a soft colour factor
  (the tile's membership of the pigment's colour family), because two pigments of one
  element (azurite and verdigris, red and yellow ochre) differ in colour, not in XRF;
* ``--where "Co-K > 0.3 and Pb-L < 0.5"``: :func:`where_tiles` -- a parsed, never
  evaluated, composition filter (:mod:`napari_nightwatch.xrf.composition`).

Either can also restrict any text, exemplar or spectrum query (see
:func:`napari_nightwatch.search.run.run_query`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.tiling import TileGrid
from ..store import PaintingStore, layout
from ..store.tiles import list_grids, load_grid, tile_mean_colour
from ..xrf.composition import Expression, MapStats, evaluate, map_stats, margin, parse_where
from ..xrf.pigments import colour_membership, find_pigment, pigment_score
from .query import Hit, merge_overlapping

#: how strongly the colour family weighs in a pigment score: the score is multiplied by
#: ``1 - w + w * membership``, so a tile of quite another colour keeps a quarter of its
#: element score (varnish, lighting and mixtures shift colours; the elements stay the
#: evidence) while a pigment's own colour counts fully
COLOUR_WEIGHT = 0.75

#: how much a strong signal of an element the pigment lacks lowers its score (see
#: :func:`napari_nightwatch.xrf.pigments.pigment_score`): half, so mixtures still show
EXCLUSIVE = 0.5

#: a pigment used as a filter of another query keeps the tiles scoring at least this
PIGMENT_FILTER_MIN = 0.5

#: a tile counts as measured when at least this fraction of its area lies in the scan
#: (the bridge's pairing rule)
MIN_COVERAGE = 0.9

MAPS = ("auto", "measured", "predicted")


@dataclass
class TileComposition:
    """Element values of the kept tiles of one grid, with where each number came from.

    Attributes
    ----------
    store
        The painting store.
    grid_id, grid
        The tile grid.
    tiles
        ``(n,)`` tile indices that have values.
    values
        Family -> ``(n,)`` float64 element intensity (NaN where unknown).
    source
        ``(n,)`` ``"measured"`` or ``"predicted"``.
    no_evidence
        Family -> ``(n,)`` bool: the prediction of this family carries no evidence in
        the photograph here (always False for measured tiles).
    stats
        Family -> robust scale shared by measured and predicted tiles (from the
        measured tiles when there are any, so one threshold means one thing).
    predicted_name
        Which ``predicted/<name>`` maps were used, if any.
    colour
        ``(n, 3)`` mean tile colour in [0, 1], read on first use.
    """

    store: PaintingStore
    grid_id: str
    grid: TileGrid
    tiles: np.ndarray
    values: dict[str, np.ndarray]
    source: np.ndarray
    no_evidence: dict[str, np.ndarray]
    stats: dict[str, MapStats]
    predicted_name: str | None = None
    _colour: np.ndarray | None = field(default=None, repr=False)

    @property
    def colour(self) -> np.ndarray:
        if self._colour is None:
            self._colour = tile_mean_colour(self.store, self.grid)[self.tiles]
        return self._colour

    @property
    def families(self) -> list[str]:
        return sorted(self.values)

    def describe(self) -> dict[str, Any]:
        """Counts of tiles by source, for reports."""
        return {"grid": self.grid_id, "families": self.families, "predicted": self.predicted_name,
                "tiles_measured": int((self.source == "measured").sum()),
                "tiles_predicted": int((self.source == "predicted").sum())}


def _predicted_sets(store: PaintingStore, grid_id: str | None) -> list[tuple[str, dict]]:
    """Complete predicted maps (name, attrs), newest last, optionally on one grid."""
    if not store.has(layout.PREDICTED):
        return []
    done = store.completed()
    out = []
    for name, g in store.root[layout.PREDICTED].groups():
        rec = done.get(layout.predicted(name))
        if rec is None:
            continue
        attrs = dict(g.attrs.get("nightwatch", {}))
        if grid_id is None or attrs.get("grid_id") == grid_id:
            out.append((str(rec.get("created", "")), name, attrs))
    return [(n, a) for _, n, a in sorted(out)]


def _choose_grid(store: PaintingStore, grid_id: str | None, maps: str) -> str:
    if grid_id is not None:
        return grid_id
    ids = list_grids(store)
    if len(ids) == 1:
        return ids[0]
    if not ids:
        raise NightwatchError(
            f"{store.path} has no tile grids yet; the pigment door ranks tiles, so embed the mosaic first "
            "(nightwatch embed) or make a grid."
        )
    if maps != "measured":
        pred = _predicted_sets(store, None)
        if pred:
            return str(pred[-1][1]["grid_id"])
    raise NightwatchError(f"{store.path} has tile grids {', '.join(ids)}; choose one with --grid.")


def tile_composition(
    store: PaintingStore | str,
    grid_id: str | None = None,
    *,
    maps: str = "auto",
    predicted: str | None = None,
) -> TileComposition:
    """Element values per tile: measured where the scan covers the tile, predicted elsewhere.

    Parameters
    ----------
    store
        Painting store (or path).
    grid_id
        Tile grid (default: the only one, or that of the newest predicted maps).
    maps
        ``"auto"`` (measured where scanned, predicted elsewhere), ``"measured"`` or
        ``"predicted"`` (the photograph's estimate everywhere, e.g. to see what it
        says where the XRF is known).
    predicted
        Name under ``predicted/`` (default: the newest on the grid).

    Returns
    -------
    TileComposition

    Raises
    ------
    NightwatchError
        When the store has neither measured nor predicted maps for the question, or
        the named predicted maps do not exist.
    """
    from ..xrf.pairing import footprint_matrix, load_element_intensity_maps

    if maps not in MAPS:
        raise NightwatchError(f"maps={maps!r} must be one of {', '.join(MAPS)}.")
    store = PaintingStore.coerce(store)
    gid = _choose_grid(store, grid_id, maps)
    grid = load_grid(store, gid)
    kept = grid.indices()
    n_all = grid.n_tiles
    values: dict[str, np.ndarray] = {}
    source = np.full(n_all, "", dtype="<U9")
    no_evidence: dict[str, np.ndarray] = {}
    measured_fams: set[str] = set()

    if maps != "predicted" and store.has_xrf:
        names, xmaps = load_element_intensity_maps(store, required=False)
        if names is not None:
            w, mtiles, _ = footprint_matrix(grid, store.xrf_affine, store.xrf_shape, index=kept,
                                            min_coverage=MIN_COVERAGE)
            if len(mtiles):
                flat = np.nan_to_num(np.asarray(xmaps, np.float64).reshape(len(names), -1).T)
                meas = np.asarray(w @ flat, np.float64)  # (n_measured, c)
                for i, fam in enumerate(names):
                    values.setdefault(fam, np.full(n_all, np.nan))[mtiles] = meas[:, i]
                    measured_fams.add(fam)
                source[mtiles] = "measured"
    pred_name = None
    if maps != "measured":
        sets = _predicted_sets(store, gid)
        if predicted is not None:
            sets = [(n, a) for n, a in sets if n == predicted]
            if not sets:
                raise NightwatchError(f"{store.path} has no complete predicted maps {predicted!r} on grid {gid}.")
        if sets:
            pred_name, attrs = sets[-1]
            store.check_fresh(layout.predicted(pred_name), "predict them again with `nightwatch predict-xrf`")
            g = store.root[layout.predicted(pred_name)]
            pv = np.asarray(g["0"][...], np.float64).reshape(len(attrs["elements"]), -1)
            flags = np.asarray(g["no_evidence"][...], bool).reshape(len(attrs["elements"]), -1)
            free = np.zeros(n_all, bool)
            free[kept] = source[kept] == ""
            has_pred = np.zeros(n_all, bool)
            for i, fam in enumerate(attrs["elements"]):
                take = free & np.isfinite(pv[i])
                values.setdefault(fam, np.full(n_all, np.nan))[take] = pv[i][take]
                no_evidence.setdefault(fam, np.zeros(n_all, bool))[take] = flags[i][take]
                has_pred |= take
            source[has_pred] = "predicted"
    if not values:
        what = {"auto": "measured or predicted", "measured": "measured", "predicted": "predicted"}[maps]
        raise NightwatchError(
            f"{store.path} has no {what} element maps on grid {gid}; fit them (nightwatch xrf-maps), import them "
            "(nightwatch import-maps) or predict them from the photograph (nightwatch predict-xrf)."
        )
    tiles = np.flatnonzero(source != "")
    tiles = tiles[np.isin(tiles, kept)]
    stats: dict[str, MapStats] = {}
    for fam, v in values.items():
        ref = v[tiles][source[tiles] == "measured"] if fam in measured_fams else v[tiles]
        stats[fam] = map_stats(ref)
    return TileComposition(
        store, gid, grid, tiles,
        {f: v[tiles] for f, v in values.items()},
        source[tiles],
        {f: no_evidence.get(f, np.zeros(n_all, bool))[tiles] for f in values},
        stats,
        pred_name,
    )


def pigment_tile_scores(
    comp: TileComposition, pigment: str, *, colour_weight: float = COLOUR_WEIGHT, exclusive: float = EXCLUSIVE
) -> np.ndarray:
    """How well each tile matches a pigment: element score times a soft colour factor.

    Parameters
    ----------
    comp
        Tile composition (:func:`tile_composition`).
    pigment
        Name or synonym from the pigment library.
    colour_weight
        0 scores elements only; see :data:`COLOUR_WEIGHT`.
    exclusive
        See :func:`napari_nightwatch.xrf.pigments.pigment_score`.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64 in [0, 1], NaN where a map the score reads is unknown.
    """
    if not (0.0 <= float(colour_weight) <= 1.0):
        raise NightwatchError(f"colour_weight={colour_weight!r} must lie between 0 and 1.")
    p = find_pigment(pigment)
    score = pigment_score(comp.values, p, "robust", exclusive=exclusive, stats=comp.stats)
    if colour_weight > 0:
        member = colour_membership(comp.colour)[p.colour]
        score = score * (1.0 - colour_weight + colour_weight * np.nan_to_num(member, nan=0.0))
    return score


def where_tiles(comp: TileComposition, expr: str | Expression) -> tuple[np.ndarray, np.ndarray]:
    """Which tiles pass a composition filter, and by how much.

    Returns
    -------
    passes, how_far
        ``(n,)`` bool and ``(n,)`` float64 margin (see :func:`napari_nightwatch.xrf.composition.margin`).
    """
    e = parse_where(expr) if isinstance(expr, str) else expr
    return evaluate(e, comp.values, stats=comp.stats), margin(e, comp.values, stats=comp.stats)


def composition_hits(
    comp: TileComposition,
    scores: np.ndarray,
    *,
    k: int,
    allowed: np.ndarray | None = None,
    merge: bool = True,
    iou_threshold: float = 0.3,
    families: list[str] | None = None,
    model_id: str = "",
) -> list[Hit]:
    """The ``k`` best tiles by ``scores`` (one per tile of ``comp``), as search hits.

    Each hit carries the source of its numbers (``measured``/``predicted``) and the
    values (fractions of each map's robust maximum) of ``families``.
    """
    s = np.asarray(scores, np.float64)
    ok = np.isfinite(s) if allowed is None else (np.isfinite(s) & allowed)
    order = np.flatnonzero(ok)
    order = order[np.argsort(-s[order], kind="stable")]
    boxes = comp.grid.boxes(comp.tiles[order])
    keep = merge_overlapping(boxes, s[order], iou_threshold) if merge else np.arange(order.size)
    px = comp.store.mosaic_pixel_size_um
    fams = families if families is not None else comp.families
    hits = []
    for rank, j in enumerate(keep[:k], start=1):
        i = order[j]
        y0, x0, y1, x1 = (int(v) for v in boxes[j])
        values = {}
        for f in fams:
            st = comp.stats[f]
            v = comp.values[f][i]
            values[f] = round(float(v / st.robust_max), 4) if st.robust_max > 0 and np.isfinite(v) else None
        weak = [f for f in fams if comp.no_evidence.get(f) is not None and comp.no_evidence[f][i]]
        hits.append(Hit(rank, float(s[i]), str(comp.store.path), int(comp.tiles[i]), (y0, x0, y1, x1),
                        (y0 + y1) / 2.0, (x0 + x1) / 2.0, (y0 + y1) / 2.0 * px, (x0 + x1) / 2.0 * px,
                        (y0 * px, x0 * px, y1 * px, x1 * px), comp.grid_id, model_id,
                        source=str(comp.source[i]), composition=values, no_evidence=weak))
    return hits


#: how an XRF query (pixel or region of the scan) ranks tiles: through the joint
#: embedding space only, by the distance of the tiles' composition (measured, or
#: predicted from the photograph) to the query's, or by both ranks fused
XRF_MATCH = ("joint", "composition", "both")

#: reciprocal-rank fusion constant (Cormack, Clarke & Buettcher 2009): a tile's fused
#: score is the sum over rankings of 1 / (RRF_K + rank), so a tile near the top of
#: both rankings beats one at the very top of one only; 60 is the value of the paper
RRF_K = 60


def query_composition(store: PaintingStore, box: tuple[int, int, int, int]) -> dict[str, float]:
    """The element values of an XRF query: the mean of each element map over an XRF box.

    ``box`` is ``(y0, x0, y1, x1)`` in XRF pixels (see
    :func:`napari_nightwatch.xrf.pairing.xrf_query_box`). The maps are the ones tiles
    are paired with (fitted from the cube, or imported), so the query's numbers are in
    the units of the tiles' measured and predicted composition.
    """
    from ..xrf.pairing import load_element_intensity_maps

    names, maps = load_element_intensity_maps(store)
    y0, x0, y1, x1 = box
    block = np.asarray(maps[:, y0:y1, x0:x1], np.float64).reshape(len(names), -1)
    finite = np.isfinite(block)
    n = finite.sum(1)
    vals = np.where(finite, block, 0.0).sum(1) / np.maximum(n, 1)
    return {name: float(v) for name, v, k in zip(names, vals, n, strict=True) if k > 0}


def composition_match_scores(comp: TileComposition, query: dict[str, float]) -> np.ndarray:
    """How close each tile's composition is to the query's.

    Minus the root-mean-square difference over the families both have, each in units
    of its map's robust maximum (so every element weighs the same whatever its count
    rate). A family the photograph carries no evidence of (flagged on every predicted
    tile) is left out of the predicted tiles' mean. Flags of single tiles are not: a
    tile whose mean ran over the few families left to it would look close to anything.

    Returns
    -------
    numpy.ndarray
        ``(n,)`` float64, at most 0 (0: the same composition); NaN where a tile has no
        value of any family of the query.
    """
    fams = [f for f in query if f in comp.values and comp.stats[f].robust_max > 0]
    if not fams:
        raise NightwatchError(
            f"The query's element maps ({', '.join(sorted(query)) or 'none'}) share no family with the tiles' "
            f"({', '.join(comp.families)}); fit or predict the same elements."
        )
    d2 = np.zeros(comp.tiles.size)
    n = np.zeros(comp.tiles.size)
    predicted = comp.source == "predicted"
    for f in fams:
        v = (comp.values[f] - query[f]) / comp.stats[f].robust_max
        ok = np.isfinite(v)
        if predicted.any() and comp.no_evidence[f][predicted].all():
            ok &= ~predicted
        d2[ok] += v[ok] ** 2
        n[ok] += 1
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n > 0, -np.sqrt(d2 / np.maximum(n, 1)), np.nan)


def fuse_ranks(*scores: np.ndarray) -> np.ndarray:
    """Reciprocal-rank fusion of several scores of the same tiles (higher is better).

    Each ranking adds ``1 / (RRF_K + rank)`` (rank 1 = best; ties share the best rank
    of their group, so the fusion does not depend on the order of tiles); a NaN score
    adds nothing. Scale-free: a cosine and a composition distance need no common units.
    """
    from scipy.stats import rankdata

    out = np.zeros(len(scores[0]))
    for s in scores:
        s = np.asarray(s, np.float64)
        ok = np.isfinite(s)
        rank = rankdata(-s[ok], method="min")
        out[ok] += 1.0 / (RRF_K + rank)
    return out


def per_tile_map(comp: TileComposition, values: np.ndarray) -> tuple[np.ndarray, tuple, tuple]:
    """Per-tile values as an image aligned with the mosaic (NaN where a tile has none)."""
    m = comp.grid.to_map(np.asarray(values, np.float32), index=comp.tiles)
    scale, translate = comp.grid.map_transform()
    return m, scale, translate


__all__ = [
    "COLOUR_WEIGHT",
    "EXCLUSIVE",
    "MAPS",
    "PIGMENT_FILTER_MIN",
    "RRF_K",
    "XRF_MATCH",
    "TileComposition",
    "composition_hits",
    "composition_match_scores",
    "fuse_ranks",
    "per_tile_map",
    "pigment_tile_scores",
    "query_composition",
    "tile_composition",
    "where_tiles",
]
