"""Minimal OME-Zarr (NGFF) metadata helpers shared by every writer and reader.

We write NGFF 0.5 (zarr v3, metadata under ``attrs["ome"]``) and read 0.4 and 0.5.
The metadata dictionaries are small and fully specified by the NGFF spec; the pixel
data are written chunk by chunk by our own streaming writers so that memory stays
bounded by the chunk size (ome-zarr-py's writers take whole arrays).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

NGFF_VERSION = "0.5"
#: a placement whose rotation/shear moves no pixel corner by more than this fraction of a pixel is
#: written as exact (float64 round-off of a registered scale-only affine is ~1e-12)
_EXACT_TOLERANCE_PX = 1e-6

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


def placement_from_affine(affine_um, shape: Sequence[int] | None = None) -> dict[str, Any]:
    """The NGFF scale + translation that place an image given by a 2-D affine, and what they leave out.

    NGFF 0.5 places an image with one scale and one translation per axis; a registration
    may also rotate or shear. For such an affine the axis-aligned placement keeps the length
    of each pixel axis and puts the image's centre where the affine puts it, and
    ``max_error_um`` says how far any corner then lies from its registered place.

    Parameters
    ----------
    affine_um
        3x3 affine, image pixel ``(y, x, 1)`` -> micrometres (pixel centres at integers).
    shape
        ``(height, width)`` of the image; needed to place the centre and bound the error
        of a rotated affine (ignored when the affine has no rotation or shear).

    Returns
    -------
    dict
        ``scale`` and ``translation`` (y, x) for ``coordinateTransformations``; ``exact``
        (True when they reproduce the affine); ``max_error_um``; ``affine_um`` (the full
        affine as given, for our own metadata).
    """
    a = np.asarray(affine_um, dtype=np.float64)
    if a.shape != (3, 3):
        raise ValueError(f"expected a 3x3 affine, got shape {a.shape}")
    lin = a[:2, :2]
    diag_only = abs(lin[0, 1]) <= _EXACT_TOLERANCE_PX * abs(lin[0, 0]) and abs(lin[1, 0]) <= _EXACT_TOLERANCE_PX * abs(lin[1, 1])
    if diag_only and lin[0, 0] > 0 and lin[1, 1] > 0:
        return {"scale": [float(lin[0, 0]), float(lin[1, 1])], "translation": [float(a[0, 2]), float(a[1, 2])],
                "exact": True, "max_error_um": 0.0, "affine_um": a.tolist()}
    scale = np.linalg.norm(lin, axis=0)  # length of one pixel step along y and along x
    h, w = (int(shape[0]), int(shape[1])) if shape is not None else (1, 1)
    centre = np.array([(h - 1) / 2.0, (w - 1) / 2.0])
    translation = lin @ centre + a[:2, 2] - scale * centre
    corners = np.array([[-0.5, -0.5], [-0.5, w - 0.5], [h - 0.5, -0.5], [h - 0.5, w - 0.5]])
    err = np.linalg.norm(corners @ lin.T + a[:2, 2] - (corners * scale + translation), axis=1).max()
    return {"scale": [float(v) for v in scale], "translation": [float(v) for v in translation], "exact": False,
            "max_error_um": float(err), "affine_um": a.tolist()}


def placement_note(placement: dict[str, Any]) -> str | None:
    """One sentence for metadata and logs when an NGFF placement leaves out a rotation or shear."""
    if placement.get("exact", True):
        return None
    return (
        "NGFF 0.5 has no rotation or shear, so coordinateTransformations hold the closest axis-aligned placement "
        f"(corners within {placement['max_error_um']:.3g} um of the registration); the full affine is in "
        "attrs['nightwatch']['placement']['affine_um']."
    )


def write_image_metadata(
    group,
    axes: str,
    level_scales: Sequence[Sequence[float]],
    name: str = "",
    channel_names: Sequence[str] | None = None,
    channel_colors: Sequence[str] | None = None,
    translation: Sequence[float] | None = None,
    contrast_limits: Sequence[tuple[float, float]] | None = None,
    rgb: bool = False,
) -> None:
    """Write NGFF 0.5 image metadata (multiscales and optional omero channels) on ``group``.

    ``translation`` is the physical position of the centre of pixel 0 (NGFF's pixel-centre
    convention), the same for every level of a pyramid whose level ``k`` pixel ``i`` covers
    level-0 pixels ``[2^k i, 2^k (i + 1))``, up to the half-pixel shift written per level here.
    ``rgb`` writes omero rendering hints (``rdefs.model = "color"``, additive red/green/blue
    channels) so viewers that read omero blend the three channels back into the colour image.
    """
    if translation is not None and len(level_scales) > 1:
        # coarser pixel centres sit half a (coarse - fine) pixel further in: level k's pixel 0
        # is the mean of level-0 pixels 0 .. 2^k - 1, whose centre is at (2^k - 1) / 2 level-0 pixels
        base = [float(v) for v in level_scales[0]]
        per_level = [[float(t) + (float(s) - b) / 2.0 for t, s, b in zip(translation, sc, base, strict=True)]
                     for sc in level_scales]
    else:
        per_level = None
    ms = multiscales_metadata(axes, level_scales, name, translation)
    if per_level is not None:
        for ds, t in zip(ms["datasets"], per_level, strict=True):
            ds["coordinateTransformations"][1]["translation"] = t
    ome: dict[str, Any] = {"version": NGFF_VERSION, "multiscales": [ms]}
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
        if rgb and len(chans) == 4:
            chans[3]["active"] = False  # alpha blended additively would wash the colours out
        ome["omero"] = {"channels": chans}
        if rgb:
            ome["omero"]["rdefs"] = {"model": "color", "defaultT": 0, "defaultZ": 0}
            ome["omero"]["name"] = name
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


def level_translations(group) -> list[list[float] | None]:
    """Per-level translation vectors, None for a level that has none."""
    out: list[list[float] | None] = []
    for d in read_multiscales(group)["datasets"]:
        t = None
        for tr in d.get("coordinateTransformations", []):
            if tr.get("type") == "translation":
                t = [float(v) for v in tr["translation"]]
        out.append(t)
    return out


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
