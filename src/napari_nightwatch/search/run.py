"""The one query runner: every search of the CLI, the napari panels and the demo.

Owns :class:`Query` (what the user asked, in their words), the rules for combining
query kinds, the choice of grid and image model, and :func:`run_query`, which turns a
query into ranked hits (and optionally the per-tile similarity map). Models are passed
in through an :class:`Encoders` object (see :func:`napari_nightwatch.ml.encoders.query_encoders`);
this module never builds one, so search stays free of torch.

Combining rules: text, exemplar regions and exemplar images may be combined, with
any number of "not like this" texts; an XRF query (spectrum file, XRF pixel or XRF
region) is answered in the space of the image model its spectrum encoder was trained
against and cannot be combined with other image or text queries. The pigment door
(a pigment name and/or a composition filter, :mod:`.composition`) is a query of its
own (tiles ranked by the element maps, no model at all) or restricts any other query
to the tiles whose composition passes ("like this region, where Hg is high").
An XRF pixel or region can also be matched by composition (``xrf_match``): the
tiles' element values (measured, or predicted from the photograph where the scan
never reached) against the query's, alone or fused with the joint-space ranking.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..core.errors import NightwatchError
from ..core.progress import ProgressCallback, report
from ..store import PaintingStore
from ..store.embeddings import open_embeddings, resolve_grid_model
from .composition import (
    COLOUR_WEIGHT,
    MAPS,
    PIGMENT_FILTER_MIN,
    XRF_MATCH,
    composition_hits,
    composition_match_scores,
    fuse_ranks,
    per_tile_map,
    pigment_tile_scores,
    query_composition,
    tile_composition,
    where_tiles,
)
from .query import (
    Hit,
    combine,
    hits_to_json,
    image_vector,
    region_box_px,
    region_vector,
    search,
    similarity_map,
    text_vector,
)


class Encoders(Protocol):
    """What :func:`run_query` needs from the models (implemented in ``ml/``)."""

    def image_text(self, signature: dict[str, Any]) -> Any:
        """The CLIP engine for embeddings with this signature (``encode_text``, ``encode_images``)."""

    def spectrum(self, store: PaintingStore, query: Query, grid_id: str | None, model_id: str | None) -> tuple[np.ndarray, str]:
        """The XRF door: (vector, image model id) for the query's spectrum, pixel or region."""


@dataclass
class Query:
    """One search, in the user's words.

    Attributes
    ----------
    text
        Words to look for ("craquelure").
    region
        Exemplar box ``y0, x0, y1, x1`` on the (first) painting, level-0 px or µm (``units``).
    image
        Exemplar image file (e.g. a detail of another painting).
    spectrum_file, xrf_pixel, xrf_region
        The XRF door: a spectrum file, an XRF pixel ``(y, x)`` or an XRF box.
    negative
        "Not like this" texts.
    templates
        Prompt templates for the texts (``{}`` is replaced by the text).
    grid_id, model_id
        Which embeddings; default: the only ones, or those of the query's model.
    k, merge, iou_threshold
        Number of hits, and whether overlapping hits merge (IoU above the threshold).
    with_map
        Also compute the per-tile similarity map of the first painting.
    pigment
        A pigment of the library ("smalt", "loodwit"): the pigment door.
    where
        A composition filter, e.g. ``"Co-K > 0.3 and Pb-L < 0.5"`` (fractions of each
        map's robust maximum; ``z(Hg-L) > 3`` for robust z-scores).
    maps
        Which element maps the pigment door and the composition match read: ``"auto"``
        (measured where the scan covers a tile, predicted from the photograph
        elsewhere), ``"measured"`` or ``"predicted"``.
    xrf_match
        How an XRF pixel or region ranks tiles: ``"joint"`` (the spectrum encoder's
        vector in the image model's space), ``"composition"`` (closeness of the tiles'
        element values to the query's, see
        :func:`~napari_nightwatch.search.composition.composition_match_scores`) or
        ``"both"`` (the two rankings fused, :func:`~napari_nightwatch.search.composition.fuse_ranks`).
    colour_weight
        Weight of the colour family in a pigment score (0: elements only).
    """

    text: str | None = None
    region: tuple[float, float, float, float] | None = None
    units: str = "px"
    image: str | Path | None = None
    spectrum_file: str | Path | None = None
    xrf_pixel: tuple[int, int] | None = None
    xrf_region: tuple[int, int, int, int] | None = None
    negative: Sequence[str] = ()
    templates: Sequence[str] | None = None
    grid_id: str | None = None
    model_id: str | None = None
    k: int = 20
    merge: bool = True
    iou_threshold: float = 0.3
    with_map: bool = False
    pigment: str | None = None
    where: str | None = None
    maps: str = "auto"
    colour_weight: float = COLOUR_WEIGHT
    xrf_match: str = "joint"

    @property
    def is_xrf(self) -> bool:
        return any(v is not None for v in (self.spectrum_file, self.xrf_pixel, self.xrf_region))

    @property
    def is_composition(self) -> bool:
        """The pigment door is asked (alone or as a filter)."""
        return self.pigment is not None or self.where is not None

    @property
    def composition_match(self) -> bool:
        """An XRF query ranked (also) by the composition of the tiles."""
        return self.is_xrf and self.xrf_match != "joint"

    @property
    def needs_embeddings(self) -> bool:
        """Anything beyond the pigment door (text, exemplar, XRF)."""
        return self.is_xrf or bool(self.negative) or any(
            v is not None for v in (self.text, self.region, self.image))

    def check(self) -> None:
        """Refuse an empty or contradictory query with one sentence."""
        positives = [v for v in (self.text, self.region, self.image) if v is not None]
        if not positives and not self.is_xrf and not self.is_composition:
            raise NightwatchError(
                "Say what to look for: --text, --region, --image, --spectrum, --xrf-pixel, --xrf-region, "
                "--pigment or --where."
            )
        from .query import check_templates, check_text

        for t in ([self.text] if self.text is not None else []) + list(self.negative):
            check_text(t)
        if self.templates:
            check_templates(self.templates)
        if self.negative and not positives:
            raise NightwatchError("--not needs something to look for: give --text, --region or --image too.")
        if self.pigment is not None:
            from ..xrf.pigments import find_pigment

            p = find_pigment(self.pigment)  # unknown names: one sentence with the nearest names
            if not p.xrf_visible:
                raise NightwatchError(
                    f"{p.name} cannot be found in element maps because none of its elements is visible to XRF; "
                    "search for it with a text or exemplar query instead."
                )
        if self.where is not None:
            from ..xrf.composition import parse_where

            parse_where(self.where)  # a syntax error is one sentence, before anything is read
        if self.maps not in MAPS:
            raise NightwatchError(f"maps={self.maps!r} must be one of {', '.join(MAPS)}.")
        if self.xrf_match not in XRF_MATCH:
            raise NightwatchError(f"xrf_match={self.xrf_match!r} must be one of {', '.join(XRF_MATCH)}.")
        if self.xrf_match != "joint" and (self.xrf_pixel is None and self.xrf_region is None):
            raise NightwatchError(
                f"Matching by composition (xrf_match={self.xrf_match!r}) needs an XRF pixel or region of the scan, whose "
                "element maps give the query's composition; a spectrum file is matched in the joint space only."
            )
        if not (isinstance(self.colour_weight, (int, float)) and 0.0 <= float(self.colour_weight) <= 1.0):
            raise NightwatchError(f"colour_weight={self.colour_weight!r} must be a number from 0 to 1.")
        if self.is_xrf and (positives or self.negative or sum(
                v is not None for v in (self.spectrum_file, self.xrf_pixel, self.xrf_region)) > 1):
            raise NightwatchError(
                "An XRF query (--spectrum, --xrf-pixel, --xrf-region) cannot be combined with other queries."
            )
        if self.units not in ("px", "um"):
            raise NightwatchError(f"units={self.units!r} must be 'px' (level-0 pixels) or 'um' (micrometres).")
        if not (isinstance(self.k, (int, np.integer)) and self.k >= 1):
            raise NightwatchError(f"k={self.k!r} must be a positive number of hits.")

    def describe(self) -> dict[str, Any]:
        """The query as JSON (what ``--json`` and the result layers report)."""
        out: dict[str, Any] = {}
        if self.text is not None:
            out["text"] = self.text
        if self.region is not None:
            out["region"] = [float(v) for v in self.region]
            out["units"] = self.units
        if self.image is not None:
            out["image"] = str(self.image)
        if self.is_xrf:
            out.update(spectrum=str(self.spectrum_file) if self.spectrum_file else None,
                       xrf_pixel=self.xrf_pixel, xrf_region=self.xrf_region)
        if self.negative:
            out["not"] = list(self.negative)
        if self.pigment is not None:
            out["pigment"] = self.pigment
        if self.where is not None:
            out["where"] = self.where
        if self.is_composition or self.composition_match:
            out["maps"] = self.maps
        if self.is_xrf:
            out["xrf_match"] = self.xrf_match
        return out

    def label(self) -> str:
        """A short name for result layers ("craquelure", "exemplar 10,20-74,84", "XRF pixel 3,4")."""
        parts = []
        if self.text is not None:
            parts.append(self.text)
        if self.region is not None:
            y0, x0, y1, x1 = (int(round(v)) for v in self.region)
            parts.append(f"exemplar {y0},{x0}-{y1},{x1}")
        if self.image is not None:
            parts.append(f"image {Path(self.image).name}")
        if self.xrf_pixel is not None:
            parts.append(f"XRF pixel {self.xrf_pixel[0]},{self.xrf_pixel[1]}")
        if self.xrf_region is not None:
            y0, x0, y1, x1 = (int(round(v)) for v in self.xrf_region)
            parts.append(f"XRF region {y0},{x0}-{y1},{x1}")
        if self.spectrum_file is not None:
            parts.append(f"spectrum {Path(self.spectrum_file).name}")
        if self.pigment is not None:
            parts.append(f"pigment {self.pigment}")
        label = " + ".join(parts)
        for t in self.negative:
            label += f" not {t}"
        if self.where is not None:
            label = f"{label} where {self.where}" if label else f"where {self.where}"
        return label


@dataclass
class Result:
    """What :func:`run_query` returns."""

    query: Query
    grid_id: str
    model_id: str
    vector: np.ndarray
    hits: list[Hit]
    similarity: np.ndarray | None = None
    map_transform: tuple | None = None
    random_weights: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.query.label()

    def to_json(self) -> dict[str, Any]:
        """``{"query", "grid", "model_id", "results"}`` as the CLI prints it."""
        return {"query": self.query.describe(), "grid": self.grid_id, "model_id": self.model_id,
                "results": hits_to_json(self.hits), "random_weights": self.random_weights}


def run_query(
    stores: PaintingStore | str | Path | Sequence[PaintingStore | str | Path],
    query: Query,
    encoders: Encoders,
    *,
    progress: ProgressCallback | None = None,
    indexes: dict | None = None,
) -> Result:
    """Answer a query over one or several painting stores.

    Parameters
    ----------
    stores
        Painting stores (or paths); regions and XRF queries refer to the first one.
    query
        What to look for.
    encoders
        The models (see :class:`Encoders`).
    progress
        ``progress(done, total, stage)``.
    indexes
        Cache of loaded vector indexes, kept by the caller between queries.

    Returns
    -------
    Result
    """
    query.check()
    many = list(stores) if isinstance(stores, (list, tuple)) else [stores]
    if not many:
        raise NightwatchError("Give at least one painting store to search.")
    opened = [PaintingStore.coerce(s) for s in many]
    first = opened[0]
    report(progress, 0, 3, "query")
    if not query.needs_embeddings:
        return _run_composition(opened, query, progress)
    engine = None
    if query.is_xrf:
        # the spectrum encoder decides the image model; hits come from that model's embeddings
        vec, mid = encoders.spectrum(first, query, query.grid_id, query.model_id)
        gid, mid = resolve_grid_model(first, query.grid_id, mid)
        sig = open_embeddings(first, gid, mid).signature
    else:
        gid, mid = resolve_grid_model(first, query.grid_id, query.model_id)
        emb = open_embeddings(first, gid, mid)
        need_model = query.text is not None or query.image is not None or bool(query.negative)
        if query.region is not None:
            inside = emb.grid.tiles_in_box(region_box_px(first, query.region, query.units))
            need_model = need_model or inside.size == 0  # a region smaller than a tile is embedded by the model
        if need_model:
            engine = encoders.image_text(emb.signature)
            if engine.model_id != mid:
                gid, mid = resolve_grid_model(first, gid, engine.model_id)
                emb = open_embeddings(first, gid, mid)
            emb.check_model(dict(engine.signature), f"model {engine.model_id}")
        templates = list(query.templates) if query.templates else None
        positives = []
        if query.text is not None:
            positives.append(text_vector(engine, query.text, templates=templates))
        if query.region is not None:
            positives.append(region_vector(first, engine, gid, query.region, units=query.units, model_id=mid))
        if query.image is not None:
            positives.append(image_vector(engine, query.image))
        negatives = [text_vector(engine, t, templates=templates) for t in query.negative]
        vec = combine(positives, negatives)
        sig = emb.signature
    report(progress, 1, 3, "search")
    extra: dict[str, Any] = {}
    allowed_first = None
    if query.is_composition or query.composition_match:
        # the pigment door as a filter, and/or the composition match of an XRF query: exact
        # scores over the tiles with element values (those whose composition passes)
        hits = []
        target = None
        if query.composition_match:
            from ..xrf.pairing import xrf_query_box

            target = query_composition(first, xrf_query_box(first, query.xrf_pixel, query.xrf_region)[0])
            extra["query_composition"] = {f: round(v, 6) for f, v in target.items()}
        for store in opened:
            g_here = gid if store is first else (query.grid_id or gid)
            comp = tile_composition(store, g_here, maps=query.maps)
            allowed = np.ones(comp.tiles.size, bool)
            if query.is_composition:
                _, allowed = _composition_scores(comp, query, as_filter=True)
            emb = open_embeddings(store, comp.grid_id, mid)
            ok = emb.done_tiles[comp.tiles] & emb.keep[comp.tiles]
            scores = np.full(comp.tiles.size, np.nan)
            if ok.any():
                # Embeddings.read returns unit rows already
                scores[ok] = emb.read(comp.tiles[ok]).astype(np.float64) @ np.asarray(vec, np.float64)
            fams = _families_of(query, comp)
            if target is not None:
                close = composition_match_scores(comp, target)
                scores = close if query.xrf_match == "composition" else fuse_ranks(scores, close)
                fams += [f for f in sorted(target) if f in comp.values and f not in fams]
            hits += composition_hits(comp, scores, k=query.k, allowed=allowed, merge=query.merge,
                                     iou_threshold=query.iou_threshold, model_id=mid, families=fams)
            if store is first:
                allowed_first = (comp, allowed, scores if target is not None else None)
                extra["composition"] = comp.describe()
        hits = _rerank(hits, query.k)
    else:
        hits = list(search(opened, vec, grid_id=query.grid_id if len(opened) > 1 else gid, model_id=mid,
                           k=query.k, merge=query.merge, iou_threshold=query.iou_threshold, indexes=indexes))
    sim = transform = None
    if query.with_map:
        report(progress, 2, 3, "similarity map")
        if allowed_first is not None and allowed_first[2] is not None:
            # ranked by composition (or fused ranks): the map shows the scores that ranked
            comp, allowed, scores = allowed_first
            sim, scale, translate = per_tile_map(comp, np.where(allowed, scores, np.nan))
        else:
            sim, scale, translate = similarity_map(first, vec, grid_id=gid, model_id=mid)
        if allowed_first is not None:
            comp, allowed, _ = allowed_first
            passing = np.zeros(comp.grid.n_tiles, bool)
            passing[comp.tiles[allowed]] = True
            sim = np.where(passing.reshape(sim.shape), sim, np.nan).astype(np.float32)
        transform = (scale, translate)
    report(progress, 3, 3, "done")
    random = str(sig.get("pretrained", "")).lower() == "none" or bool(getattr(engine, "random_weights", False))
    return Result(query, gid, mid, vec, hits, sim, transform, random, extra)


def _families_of(query: Query, comp) -> list[str]:
    """The families a hit of this query reports: the pigment's and the filter's."""
    from ..xrf.composition import parse_where
    from ..xrf.pigments import find_pigment, match_families

    fams: list[str] = []
    if query.pigment is not None:
        fams += [f for f in match_families(find_pigment(query.pigment), comp.values).values() if f is not None]
    if query.where is not None:
        fams += [f for f in parse_where(query.where).families if f in comp.values]
    return list(dict.fromkeys(fams))


def _composition_scores(comp, query: Query, *, as_filter: bool) -> tuple[np.ndarray, np.ndarray]:
    """Scores and the allowed tiles of the pigment door for one store.

    Alone, a pigment ranks by its score and a filter by its margin; together the
    filter restricts and the pigment ranks. As a filter of another query, tiles
    pass when the filter holds and the pigment scores at least
    :data:`.composition.PIGMENT_FILTER_MIN`.
    """
    n = comp.tiles.size
    allowed = np.ones(n, bool)
    scores = np.zeros(n)
    if query.where is not None:
        passes, how_far = where_tiles(comp, query.where)
        allowed &= passes
        scores = how_far
    if query.pigment is not None:
        ps = pigment_tile_scores(comp, query.pigment, colour_weight=float(query.colour_weight))
        scores = ps
        if as_filter:
            allowed &= np.nan_to_num(ps, nan=0.0) >= PIGMENT_FILTER_MIN
        else:
            allowed &= ps > 0
    return scores, allowed


def _rerank(hits: list[Hit], k: int) -> list[Hit]:
    hits = sorted(hits, key=lambda h: -h.score)[:k]
    for r, h in enumerate(hits, start=1):
        h.rank = r
    return hits


def _run_composition(opened: list[PaintingStore], query: Query, progress: ProgressCallback | None) -> Result:
    """The pigment door on its own: tiles ranked by element maps (and colour), no model."""
    hits: list[Hit] = []
    sim = transform = None
    gid = ""
    extra: dict[str, Any] = {}
    for store in opened:
        comp = tile_composition(store, query.grid_id, maps=query.maps)
        scores, allowed = _composition_scores(comp, query, as_filter=False)
        hits += composition_hits(comp, scores, k=query.k, allowed=allowed, merge=query.merge,
                                 iou_threshold=query.iou_threshold, families=_families_of(query, comp))
        if store is opened[0]:
            gid = comp.grid_id
            extra["composition"] = comp.describe()
            if query.with_map:
                report(progress, 2, 3, "score map")
                sim, scale, translate = per_tile_map(comp, np.where(allowed, scores, np.nan))
                transform = (scale, translate)
    report(progress, 3, 3, "done")
    return Result(query, gid, "", np.zeros(0, np.float32), _rerank(hits, query.k), sim, transform, False, extra)


__all__ = ["Encoders", "Query", "Result", "run_query"]
