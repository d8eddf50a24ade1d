"""napari writers: search hits to CSV / GeoJSON, element maps to OME-Zarr / TIFF.

npe2 single-layer writers take ``(path, data, meta)`` (``meta`` holds the layer's
attributes: name, scale, translate, affine, features, metadata) and return the list
of paths written. Positions are written in micrometres and in level-0 mosaic pixels,
so a hit list opens both in napari and in tools that work in image pixels (QuPath).
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError


def _world(data: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """Layer data coordinates -> world (micrometres) through the layer's scale and translate."""
    pts = np.asarray(data, dtype=np.float64).reshape(-1, np.asarray(data).shape[-1] if np.asarray(data).ndim else 2)
    scale = np.asarray(meta.get("scale", np.ones(pts.shape[1])), dtype=np.float64)[-pts.shape[1]:]
    translate = np.asarray(meta.get("translate", np.zeros(pts.shape[1])), dtype=np.float64)[-pts.shape[1]:]
    return pts * scale + translate


def hit_records(data: np.ndarray, meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One record per hit: rank, score, query, tile, centre (um and level-0 px) and box (level-0 px)."""
    yx_um = _world(data, meta)[:, -2:]
    md = meta.get("metadata", {}) or {}
    p = md.get("pixel_size_um")
    boxes = md.get("boxes_level0")
    feats = meta.get("features")
    cols = {}
    if feats is not None and len(feats):
        cols = {c: list(feats[c]) for c in feats.columns} if hasattr(feats, "columns") else dict(feats)
    out = []
    for i, (y_um, x_um) in enumerate(yx_um):
        rec: dict[str, Any] = {
            "rank": int(cols["rank"][i]) if "rank" in cols else i + 1,
            "score": float(cols["score"][i]) if "score" in cols else float("nan"),
            "query": str(cols["query"][i]) if "query" in cols else md.get("query", meta.get("name", "")),
            "y_um": float(y_um),
            "x_um": float(x_um),
        }
        if "tile" in cols:
            rec["tile"] = int(cols["tile"][i])
        if p:
            # napari world -> level-0 pixel-centre coordinates (layers.level0_to_um inverse)
            rec["y"] = float(y_um) / float(p)
            rec["x"] = float(x_um) / float(p)
        if boxes is not None and i < len(boxes):
            rec["y0"], rec["x0"], rec["y1"], rec["x1"] = (float(v) for v in boxes[i])
        out.append(rec)
    return out


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_hits_csv(path: str, data: Any, meta: dict) -> list[str]:
    """Write a hits Points layer as CSV: ``rank, score, query, tile, y_um, x_um, y, x, y0, x0, y1, x1``."""
    import io

    recs = hit_records(data, meta)
    fields = ["rank", "score", "query", "tile", "y_um", "x_um", "y", "x", "y0", "x0", "y1", "x1"]
    fields = [f for f in fields if any(f in r for r in recs)] or ["rank", "score", "query", "y_um", "x_um"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    w.writeheader()
    w.writerows(recs)
    p = Path(path)
    _atomic_text(p, buf.getvalue())
    return [str(p)]


def write_hits_geojson(path: str, data: Any, meta: dict) -> list[str]:
    """Write a hits Points layer as a GeoJSON FeatureCollection.

    Geometries are in level-0 mosaic pixels, ``[x, y]`` as GeoJSON and QuPath expect
    (the hit's rectangle where known, else its centre); micrometres are properties.
    """
    feats = []
    for r in hit_records(data, meta):
        if "y0" in r:
            y0, x0, y1, x1 = r["y0"], r["x0"], r["y1"], r["x1"]
            geom = {"type": "Polygon", "coordinates": [[[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]]}
        elif "y" in r:
            geom = {"type": "Point", "coordinates": [r["x"], r["y"]]}
        else:
            geom = {"type": "Point", "coordinates": [r["x_um"], r["y_um"]]}
        feats.append({"type": "Feature", "geometry": geom, "properties": r})
    doc = {"type": "FeatureCollection", "features": feats,
           "properties": {"coordinates": "level-0 mosaic pixels", "name": meta.get("name", "")}}
    p = Path(path)
    _atomic_text(p, json.dumps(doc, indent=1))
    return [str(p)]


def _map_arrays(data: Any) -> list[np.ndarray]:
    levels = list(data) if isinstance(data, (list, tuple)) else [data]
    out = [np.asarray(lv) for lv in levels]
    if out[0].ndim != 2:
        raise NightwatchError(f"Only single-channel 2-D images can be saved as element maps; this layer has shape {out[0].shape}.")
    return out


def _placement(meta: dict) -> dict[str, Any]:
    scale = [float(v) for v in np.asarray(meta.get("scale", (1.0, 1.0)))[-2:]]
    translate = [float(v) for v in np.asarray(meta.get("translate", (0.0, 0.0)))[-2:]]
    out: dict[str, Any] = {"scale_um": scale, "translate_um": translate}
    aff = meta.get("affine")
    if aff is not None:
        a = np.asarray(getattr(aff, "affine_matrix", aff), dtype=np.float64)
        if a.shape == (3, 3) and not np.allclose(a, np.eye(3)):
            out["affine_um"] = a.tolist()
    return out


def _jsonable_metadata(md: dict) -> dict:
    return json.loads(json.dumps(md or {}, default=lambda o: getattr(o, "tolist", lambda: str(o))()))


def write_map_ome_zarr(path: str, data: Any, meta: dict) -> list[str]:
    """Write an Image layer (an element map) as an NGFF 0.5 OME-Zarr image in micrometres."""
    import shutil

    import zarr

    from ..io.ngff import placement_from_affine, placement_note, write_image_metadata

    levels = _map_arrays(data)
    pl = _placement(meta)
    (sy, sx), (ty, tx) = pl["scale_um"], pl["translate_um"]
    # napari applies the layer's affine after its scale and translate
    full = np.asarray(pl.get("affine_um", np.eye(3)), dtype=np.float64) @ np.array([[sy, 0.0, ty], [0.0, sx, tx], [0.0, 0.0, 1.0]])
    placement = placement_from_affine(full, levels[0].shape)
    p = Path(path)
    tmp = p.with_name(p.name + ".part")
    shutil.rmtree(tmp, ignore_errors=True)
    root = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    scales = []
    for i, lv in enumerate(levels):
        f = [levels[0].shape[k] / lv.shape[k] for k in range(2)]
        scales.append([placement["scale"][0] * f[0], placement["scale"][1] * f[1]])
        root.create_array(str(i), data=np.asarray(lv, dtype=np.float32), chunks=(min(lv.shape[0], 1024), min(lv.shape[1], 1024)),
                          dimension_names=("y", "x"))
    write_image_metadata(root, "yx", scales, name=str(meta.get("name", "")), translation=placement["translation"])
    root.attrs["nightwatch"] = {"layer": str(meta.get("name", "")), **pl,
                                "placement": {"affine_um": placement["affine_um"], "ngff_exact": placement["exact"],
                                              "max_error_um": placement["max_error_um"], "note": placement_note(placement)},
                                "metadata": _jsonable_metadata(meta.get("metadata", {}))}
    if p.exists():
        shutil.rmtree(p)
    os.replace(tmp, p)
    return [str(p)]


def write_map_tiff(path: str, data: Any, meta: dict) -> list[str]:
    """Write an Image layer (an element map) as a float32 TIFF plus a JSON sidecar with its placement."""
    import tifffile

    lv = _map_arrays(data)[0]
    pl = _placement(meta)
    p = Path(path)
    tmp = p.with_name(p.name + ".part")
    sy, sx = pl["scale_um"]
    tifffile.imwrite(tmp, np.asarray(lv, dtype=np.float32), imagej=True, resolution=(1.0 / sx, 1.0 / sy),
                     metadata={"unit": "um", "axes": "YX"})
    os.replace(tmp, p)
    side = p.with_name(p.name + ".json")
    _atomic_text(side, json.dumps({"layer": str(meta.get("name", "")), **pl,
                                   "metadata": _jsonable_metadata(meta.get("metadata", {}))}, indent=1))
    return [str(p), str(side)]
