"""Every path inside a painting store (``NAME.nightwatch.zarr``), in one place.

::

    zarr.json                 attrs["nightwatch"]: schema_version, name, created,
                              package_version, complete: {part: provenance}
    .lock                     advisory lock file of the one writer (filelock)
    mosaic/                   NGFF 0.5 multiscale image (c, y, x), datasets "0", "1", ...
                              (factor-2 pyramid), scale in micrometres; or, for an
                              OME-Zarr used in place, attrs["nightwatch"]["reference"]
    xrf/                      MA-XRF modality: calibration, pixel size, affine (XRF px ->
                              level-0 mosaic px), source, kind ("cube" | "maps")
      cube                    (y, x, energy) counts, one chunk holds whole spectra
      sum_spectrum            (energy,) float64
      max_spectrum            (energy,) float64
      total/                  NGFF image (y, x): total counts per pixel
      maps/                   imported element maps (kind "maps")
    xrf_maps/                 NGFF image (c, y, x) float32: fitted element maps (+ sigma, chi2)
    grids/<grid_id>/          tile grid: attrs (tile, stride, level), keep (n_tiles,) bool
      embeddings/<model_id>/  vectors (n_tiles, dim) float16, done (n_chunks,) bool
      index/<model_id>/       faiss bytes, tile_ids, rerank vectors
    models/<model_id>/        trained spectrum encoders (safetensors bytes + config)
    predicted/<name>/         element maps predicted from the photograph
    ground_truth/             synthetic paintings only: labels, concentrations, affine
    staging/<id>/             parts being written (swapped in when complete)

Part names (the keys of ``complete``) are these paths.
"""

from __future__ import annotations

STORE_SUFFIX = ".nightwatch.zarr"
LOCK_FILE = ".lock"

MOSAIC = "mosaic"
XRF = "xrf"
XRF_CUBE = "xrf/cube"
XRF_SUM_SPECTRUM = "xrf/sum_spectrum"
XRF_MAX_SPECTRUM = "xrf/max_spectrum"
XRF_TOTAL = "xrf/total"
XRF_IMPORTED_MAPS = "xrf/maps"
XRF_MAPS = "xrf_maps"
GRIDS = "grids"
MODELS = "models"
PREDICTED = "predicted"
GROUND_TRUTH = "ground_truth"
STAGING = "staging"
#: pseudo-part whose completion record changes with every registration (set_xrf_affine)
REGISTRATION = "xrf/registration"


def grid(grid_id: str) -> str:
    """Path of a tile grid."""
    return f"{GRIDS}/{grid_id}"


def grid_keep(grid_id: str) -> str:
    """Path of a tile grid's keep-mask."""
    return f"{GRIDS}/{grid_id}/keep"


def embeddings(grid_id: str, model_id: str) -> str:
    """Path of a grid's embeddings by one image model."""
    return f"{GRIDS}/{grid_id}/embeddings/{model_id}"


def index(grid_id: str, model_id: str) -> str:
    """Path of the vector index over a grid's embeddings by one image model."""
    return f"{GRIDS}/{grid_id}/index/{model_id}"


def model(model_id: str) -> str:
    """Path of a trained spectrum encoder."""
    return f"{MODELS}/{model_id}"


def predicted(name: str) -> str:
    """Path of a set of predicted element maps."""
    return f"{PREDICTED}/{name}"


def inputs_of(part: str, record: dict) -> list[str]:
    """The parts a part may be made from (its edges in the dependency graph).

    mosaic -> grid -> embeddings -> index; xrf -> xrf_maps; registration, xrf (and
    xrf_maps) and embeddings -> trained model -> predicted maps. ``record`` is the
    part's completion record (models and predictions name their grid, image model
    and encoder there). Candidates that are not complete when the part is finished
    are not inputs of it.
    """
    bits = part.split("/")
    if part == XRF_MAPS:
        return [XRF]
    if bits[0] == GRIDS and len(bits) == 2:
        return [MOSAIC]
    if bits[0] == GRIDS and len(bits) == 4 and bits[2] == "embeddings":
        return [grid(bits[1])]
    if bits[0] == GRIDS and len(bits) == 4 and bits[2] == "index":
        return [embeddings(bits[1], bits[3])]
    if bits[0] == MODELS and len(bits) == 2:
        out = [XRF, XRF_MAPS, REGISTRATION]
        if record.get("grid_id") and record.get("image_model_id"):
            out.append(embeddings(str(record["grid_id"]), str(record["image_model_id"])))
        return out
    if bits[0] == PREDICTED and len(bits) == 2:
        out = [XRF, XRF_MAPS, REGISTRATION]
        if record.get("encoder_id"):
            out.append(model(str(record["encoder_id"])))
        return out
    return []
