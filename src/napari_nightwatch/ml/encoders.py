"""The models behind a search: CLIP for words and exemplars, the spectrum encoder for XRF.

Owns :func:`query_encoders`, the one answer to "which CLIP model made these
embeddings" (the model and weights recorded in their signature, or the ones the user
names) and the XRF door, for :func:`napari_nightwatch.search.run.run_query`. Engines come
from the one cache (:func:`.clip.cached_engine`) and trained bridges from theirs, so the
CLI, the panels and the demo share them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..core.errors import NightwatchError


class QueryEncoders:
    """The encoders of one session (see :func:`query_encoders`)."""

    def __init__(self, model: str | None = None, pretrained: str | None = None, device: str = "auto") -> None:
        self.model = model
        self.pretrained = pretrained
        self.device = device

    def image_text(self, signature: dict[str, Any]):
        """The CLIP engine for embeddings with ``signature`` (or the model and weights given)."""
        from .clip import cached_engine

        name = self.model or signature.get("model")
        tag = self.pretrained or signature.get("pretrained")
        if not name:
            raise NightwatchError("The embeddings record no model name; give the model with --model NAME --pretrained TAG.")
        if self.pretrained is None and str(tag).startswith("checkpoint:"):
            raise NightwatchError(
                f"The embeddings were made with {name} from a local checkpoint ({tag}); give it with --pretrained PATH."
            )
        return cached_engine({"model": str(name), "pretrained": str(tag if tag is not None else "none"),
                              "device": self.device})

    def spectrum(self, store, query, grid_id: str | None, model_id: str | None) -> tuple[np.ndarray, str]:
        """The XRF door: the query's spectrum file, XRF pixel or region as a vector in the image space."""
        from .bridge import spectrum_query_vector

        return spectrum_query_vector(store, spectrum_file=query.spectrum_file, xrf_pixel=query.xrf_pixel,
                                     xrf_region=query.xrf_region, grid_id=grid_id, model_id=model_id)


def query_encoders(model: str | None = None, pretrained: str | None = None, device: str = "auto") -> QueryEncoders:
    """Encoders for :func:`~napari_nightwatch.search.run.run_query`.

    Parameters
    ----------
    model, pretrained
        Force a CLIP model and weights (``--model`` / ``--pretrained``); by default the
        ones recorded with the embeddings searched.
    device
        Torch device for the CLIP engine ("auto", "cpu", "cuda").
    """
    return QueryEncoders(model, pretrained, device)
