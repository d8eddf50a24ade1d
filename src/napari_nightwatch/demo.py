"""The demo: the whole workflow on the synthetic painting, headless, then napari.

``run_pipeline`` is pure library code (no napari): synthesise the painting, fit the
element maps, register the XRF onto the mosaic, embed the tiles with CLIP, build the
index, run a text search, train the spectrum encoder and predict element maps from
the photograph. ``napari_nightwatch._napari.demo_viewer.run_demo`` adds the viewer.
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
            "weights: searches run end to end but their results carry no meaning, and every result layer is "
            "named '(random weights)'. !!!\n"
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
    from .ml.bridge import predict_xrf_maps, train_xrf_bridge
    from .ml.embed import embed_store
    from .search.index import build_index
    from .search.query import hits_to_json
    from .search.run import Query, run_query
    from .store.tiles import make_grid
    from .synth import synthesize_painting
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
    found = run_query(store, Query(text=query, grid_id=grid.grid_id, model_id=engine.model_id, k=10, with_map=True),
                      _DemoEncoders(engine))
    hits, sim = found.hits, found.similarity
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
        "hits": hits_to_json(hits),
        "similarity": sim.tolist(),
        "encoder_id": train.get("encoder_id"),
        "predicted": pred.get("name"),
        "validation": pred.get("validation"),
        "timings_s": {k: round(v, 2) for k, v in timings.items()},
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


