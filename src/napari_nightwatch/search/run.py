"""The one query runner: every search of the CLI, the napari panels and the demo.

Owns :class:`Query` (what the user asked, in their words), the rules for combining
query kinds, the choice of grid and image model, and :func:`run_query`, which turns a
query into ranked hits (and optionally the per-tile similarity map). Models are passed
in through an :class:`Encoders` object (see :func:`napari_nightwatch.ml.encoders.query_encoders`);
this module never builds one, so search stays free of torch.

Combining rules: text, exemplar regions and exemplar images may be combined, with
any number of "not like this" texts; an XRF query (spectrum file, XRF pixel or XRF
region) is answered in the space of the image model its spectrum encoder was trained
against and cannot be combined with other queries.
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

    @property
    def is_xrf(self) -> bool:
        return any(v is not None for v in (self.spectrum_file, self.xrf_pixel, self.xrf_region))

    def check(self) -> None:
        """Refuse an empty or contradictory query with one sentence."""
        positives = [v for v in (self.text, self.region, self.image) if v is not None]
        if not positives and not self.is_xrf:
            raise NightwatchError(
                "Say what to look for: --text, --region, --image, --spectrum, --xrf-pixel or --xrf-region."
            )
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
        label = " + ".join(parts)
        for t in self.negative:
            label += f" not {t}"
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
    hits = list(search(opened, vec, grid_id=query.grid_id if len(opened) > 1 else gid, model_id=mid, k=query.k,
                       merge=query.merge, iou_threshold=query.iou_threshold, indexes=indexes))
    sim = transform = None
    if query.with_map:
        report(progress, 2, 3, "similarity map")
        sim, scale, translate = similarity_map(first, vec, grid_id=gid, model_id=mid)
        transform = (scale, translate)
    report(progress, 3, 3, "done")
    random = str(sig.get("pretrained", "")).lower() == "none" or bool(getattr(engine, "random_weights", False))
    return Result(query, gid, mid, vec, hits, sim, transform, random)


__all__ = ["Encoders", "Query", "Result", "run_query"]
