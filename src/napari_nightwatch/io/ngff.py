"""Minimal OME-Zarr (NGFF) metadata helpers shared by every writer and reader.

We write NGFF 0.5 (zarr v3, metadata under ``attrs["ome"]``) and read 0.4 and 0.5.
The metadata dictionaries are small and fully specified by the NGFF spec; the pixel
data are written chunk by chunk by our own streaming writers so that memory stays
bounded by the chunk size (ome-zarr-py's writers take whole arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

NGFF_VERSION = "0.5"

_AXIS_TYPES = {"c": "channel", "t": "time", "z": "space", "y": "space", "x": "space"}


def axes_metadata(axes: str, unit: str = "micrometer") -> list[dict[str, Any]]:
    out = []
    for a in axes:
        d: dict[str, Any] = {"name": a, "type": _AXIS_TYPES.get(a, "space")}
        if d["type"] == "space":
            d["unit"] = unit
        out.append(d)
    return out


def multiscales_metadata(
    axes: str,
    level_scales: Sequence[Sequence[float]],
    name: str = "",
    translation: Sequence[float] | None = None,
    unit: str = "micrometer",
) -> dict[str, Any]:
    """The ``multiscales`` entry for an image with one dataset per level ("0", "1", ...)."""
    datasets = []
    for i, scale in enumerate(level_scales):
        ct: list[dict[str, Any]] = [{"type": "scale", "scale": [float(s) for s in scale]}]
        if translation is not None:
            ct.append({"type": "translation", "translation": [float(t) for t in translation]})
        datasets.append({"path": str(i), "coordinateTransformations": ct})
    return {"name": name, "axes": axes_metadata(axes, unit), "datasets": datasets}


def write_image_metadata(
    group,
    axes: str,
    level_scales: Sequence[Sequence[float]],
    name: str = "",
    channel_names: Sequence[str] | None = None,
    channel_colors: Sequence[str] | None = None,
    translation: Sequence[float] | None = None,
    contrast_limits: Sequence[tuple[float, float]] | None = None,
) -> None:
    """Write NGFF 0.5 image metadata (multiscales and optional omero channels) on ``group``."""
    ome: dict[str, Any] = {
        "version": NGFF_VERSION,
        "multiscales": [multiscales_metadata(axes, level_scales, name, translation)],
    }
    if channel_names is not None:
        chans = []
        for i, cname in enumerate(channel_names):
            ch: dict[str, Any] = {"label": str(cname), "active": True}
            if channel_colors is not None:
                ch["color"] = channel_colors[i]
            if contrast_limits is not None:
                lo, hi = contrast_limits[i]
                ch["window"] = {"start": float(lo), "end": float(hi), "min": float(lo), "max": float(hi)}
            chans.append(ch)
        ome["omero"] = {"channels": chans}
    group.attrs["ome"] = ome


def read_multiscales(group) -> dict[str, Any]:
    """The first ``multiscales`` entry of an NGFF 0.4 or 0.5 image group."""
    attrs = dict(group.attrs)
    if "ome" in attrs and "multiscales" in attrs["ome"]:
        return attrs["ome"]["multiscales"][0]
    if "multiscales" in attrs:
        return attrs["multiscales"][0]
    raise KeyError("no NGFF multiscales metadata")


def multiscale_paths(group) -> list[str]:
    """Dataset paths of an NGFF image group, finest level first."""
    return [d["path"] for d in read_multiscales(group)["datasets"]]


def axes_names(group) -> str:
    """Axis names as one string, e.g. "cyx" (NGFF 0.3 lists plain strings)."""
    axes = read_multiscales(group).get("axes", [])
    return "".join(a["name"] if isinstance(a, dict) else str(a) for a in axes)


def level_scales(group) -> list[list[float]]:
    """Per-level scale vectors (physical size of a pixel along each axis)."""
    out = []
    for d in read_multiscales(group)["datasets"]:
        s = [1.0] * len(read_multiscales(group)["axes"])
        for t in d.get("coordinateTransformations", []):
            if t.get("type") == "scale":
                s = list(t["scale"])
        out.append(s)
    return out
