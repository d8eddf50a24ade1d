"""The demo: the whole workflow on the synthetic painting, headless, then napari.

``run_pipeline`` is pure library code (no napari): synthesise the painting, fit the
element maps, register the XRF onto the mosaic, embed the tiles with CLIP, build the
index, search, train the spectrum encoder and predict element maps from the
photograph. ``napari_nightwatch._napari.demo_viewer.run_demo`` adds the viewer.

The searches shown are the ones that mean something on this machine: a pigment
search through the element maps (no model needed) and an exemplar search ("more
like this tile"), each scored against the painting's ground truth; a text search
only when the pretrained CLIP weights could be loaded (at random weights a text
query returns noise, so it is not shown at all).
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path
from typing import Any

from .core.errors import NightwatchError
from .core.progress import ProgressCallback, report

DEMO_MODEL = "ViT-B-32"
DEMO_PRETRAINED = "laion2b_s34b_b79k"
DEMO_QUERY = "blue pigment particles"
#: the pigment door's demo query (the same blue the text query asks for, found through its elements)
DEMO_PIGMENT = "smalt"
#: how to get real text search, said once and loudly when the weights cannot be had
HOW_TO_GET_WEIGHTS = (
    "To search by text, give the demo real CLIP weights: on a machine with internet run it once to fill "
    "the Hugging Face cache (~/.cache/huggingface), or copy an open_clip checkpoint here and pass its path "
    "(nightwatch embed --pretrained /path/to/open_clip_model.safetensors)."
)
DEMO_TILE = 64
DEMO_STRIDE = 32


def load_demo_engine(model: str = DEMO_MODEL, pretrained: str = DEMO_PRETRAINED, *, log=print):
    """The demo's CLIP engine; when the pretrained weights cannot be fetched, the same
    architecture at random weights, said loudly.

    Returns
    -------
    (engine, suffix)
        ``suffix`` is ``" (random weights)"`` when the weights are random, so every
        result layer says so in its name.
    """
    from .ml.clip import load_clip

    try:
        engine = load_clip(model, pretrained)
    except NightwatchError as exc:
        log(
            f"\n!!! PRETRAINED CLIP WEIGHTS UNAVAILABLE: {exc} The demo continues with {model} at RANDOM "
            "weights: text search is left out (its hits would be noise); the pigment search (element maps) and "
            "the exemplar search are shown, scored against the painting's ground truth, and every layer made "
            f"with the random model is named '(random weights)'. {HOW_TO_GET_WEIGHTS} !!!\n"
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            engine = load_clip(model, "none")
    suffix = " (random weights)" if getattr(engine, "random_weights", False) else ""
    return engine, suffix


def run_pipeline(
    out: str | Path = "demo_out",
    *,
    size: int = 1024,
    seed: int = 0,
    model: str = DEMO_MODEL,
    pretrained: str = DEMO_PRETRAINED,
    query: str = DEMO_QUERY,
    tile: int = DEMO_TILE,
    stride: int = DEMO_STRIDE,
    epochs: int = 150,
    progress: ProgressCallback | None = None,
    log=print,
) -> dict[str, Any]:
    """Run the whole workflow headless on the synthetic painting.

    Returns a JSON-able summary with the store path, timings, the search hits and the
    held-out agreement of the predicted element maps.
    """
    import numpy as np

    from .ml.bridge import predict_xrf_maps, train_xrf_bridge
    from .ml.embed import embed_store
    from .search.index import build_index
    from .search.run import Query, run_query
    from .store.tiles import make_grid
    from .synth import PIGMENT_NAMES, load_ground_truth, synthesize_painting
    from .xrf.maps import fit_store
    from .xrf.registration import register_store

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "synthetic.nightwatch.zarr"
    timings: dict[str, float] = {}
    steps = 8

    def step(i: int, name: str):
        report(progress, i, steps, name)
        log(f"[{i + 1}/{steps}] {name}")
        return time.perf_counter()

    t = step(0, "synthesising the painting")
    store = synthesize_painting(path, size=size, seed=seed, overwrite=True)
    timings["synth"] = time.perf_counter() - t

    t = step(1, "fitting MA-XRF element maps")
    maps = fit_store(store)
    timings["xrf_maps"] = time.perf_counter() - t

    t = step(2, "registering the XRF cube onto the mosaic")
    reg = register_store(store, auto=True)
    timings["register"] = time.perf_counter() - t

    t = step(3, f"loading CLIP {model}")
    engine, suffix = load_demo_engine(model, pretrained, log=log)
    timings["load_model"] = time.perf_counter() - t

    t = step(4, "embedding the tiles")
    grid = make_grid(store, tile=tile, stride=stride, overwrite=True)
    emb = embed_store(store, engine, grid, batch_size=32, overwrite=True)
    timings["embed"] = time.perf_counter() - t

    t = step(5, "building the index and searching")
    idx = build_index(store, grid.grid_id, engine.model_id)
    truth = load_ground_truth(store)
    encoders = _DemoEncoders(engine)
    searches = []
    if not suffix:  # real weights: the text door means something
        found = run_query(store, Query(text=query, grid_id=grid.grid_id, model_id=engine.model_id, k=10,
                                       with_map=True), encoders)
        # "blue pigment particles" asks for the painting's blue glass; another text has no scored target
        searches.append(_search_summary(found, "text", truth, DEMO_PIGMENT if query == DEMO_QUERY else None))
    pigment = run_query(store, Query(pigment=DEMO_PIGMENT, grid_id=grid.grid_id, k=10, with_map=True), None)
    # "more like this": the best pigment hit as the exemplar, judged by the exemplar tile's own pigment
    box = tuple(float(v) for v in pigment.hits[0].box)
    exemplar_label = PIGMENT_NAMES[int(truth.tile_labels(np.asarray([box], int))[0][0])]
    exemplar = run_query(store, Query(region=box, grid_id=grid.grid_id, model_id=engine.model_id, k=10,
                                      with_map=True), encoders)
    searches.append(_search_summary(exemplar, "exemplar", truth, exemplar_label, suffix))
    searches.append(_search_summary(pigment, "pigment", truth, DEMO_PIGMENT))
    for srch in (s for s in searches if s["precision_at_10"] is not None):
        log(f"    {srch['kind']} search '{srch['label']}': precision@10 by the painting's true surface pigment "
            f"{srch['precision_at_10']:.2f} (a random tile: {srch['chance']:.2f})")
    timings["search"] = time.perf_counter() - t

    t = step(6, "training the spectrum encoder (XRF third door)")
    train = train_xrf_bridge(store, grid_id=grid.grid_id, image_model_id=engine.model_id, epochs=epochs)
    timings["train_xrf"] = time.perf_counter() - t

    t = step(7, "predicting element maps from the photograph")
    pred = predict_xrf_maps(store, encoder_id=train.get("encoder_id"), grid_id=grid.grid_id)
    timings["predict_xrf"] = time.perf_counter() - t
    report(progress, steps, steps, "done")

    return {
        "store": str(path),
        "model_id": engine.model_id,
        "random_weights": bool(suffix),
        "suffix": suffix,
        "grid_id": grid.grid_id,
        "query": query,
        "elements": maps.get("elements"),
        "registration": {k: v for k, v in _summary(reg).items() if k in ("residual_um", "rms_um", "method", "shift_px")},
        "embed": {k: emb.get(k) for k in ("n_tiles", "tiles_per_second", "timings") if k in emb},
        "index": {k: idx.get(k) for k in ("index_type", "recall_at_10", "n_vectors") if k in idx},
        "searches": searches,
        "encoder_id": train.get("encoder_id"),
        "predicted": pred.get("name"),
        "validation": pred.get("validation"),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
    }


def _search_summary(result, kind: str, truth, target: str | None, suffix: str = "") -> dict[str, Any]:
    """A search of the demo as JSON, with its precision@10 against the painting's ground truth."""
    import numpy as np

    from .search.query import hits_to_json
    from .synth import PIGMENT_NAMES

    boxes = np.asarray([h.box for h in result.hits], int).reshape(-1, 4)
    labels = truth.tile_labels(boxes)[0] if len(boxes) else np.zeros(0, int)
    hit_names = [PIGMENT_NAMES[int(v)] if int(v) < len(PIGMENT_NAMES) else "" for v in labels]
    scored = target is not None
    return {
        "kind": kind,
        "label": result.label + (suffix if kind != "pigment" else ""),
        "query": result.query.describe(),
        "hits": hits_to_json(result.hits),
        "similarity": np.asarray(result.similarity, np.float32).tolist(),
        "target_pigment": target,
        "hit_pigments": hit_names,
        "precision_at_10": float(np.mean([n == target for n in hit_names])) if scored and hit_names else None,
        "chance": float(np.mean(truth.surface_labels == PIGMENT_NAMES.index(target))) if scored else None,
        "random_weights": bool(result.random_weights),
    }


class _DemoEncoders:
    """The demo's own engine (possibly random weights, said loudly) for the one query runner."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def image_text(self, signature: dict[str, Any]):
        return self.engine

    def spectrum(self, store, query, grid_id, model_id):
        from .ml.encoders import query_encoders

        return query_encoders().spectrum(store, query, grid_id, model_id)


def _summary(obj) -> dict:
    if isinstance(obj, dict):
        return obj
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(getattr(obj, "__dict__", {}))


