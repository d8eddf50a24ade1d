"""Element maps without a cube: exported per-element images as the XRF modality.

Many scientists only have the element maps their scanner software exported, one
image per element (PNG, TIFF, JPEG; often tinted in a colour).  They are imported
as the store's XRF part with ``kind: "maps"``::

    xrf/                   attrs["nightwatch"]: kind "maps", shape [ny, nx],
                           pixel_size_um, affine (XRF px -> level-0 mosaic px),
                           elements [names], sources {name: path}
      maps                 (c, y, x) float32 element intensities

Registration, pairing, the spectrum encoder, spectrum search and the inverse then
work on the per-tile vector of element intensities instead of a spectrum.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import NightwatchError


def read_element_map(path: str | Path) -> np.ndarray:
    """Read one exported element map as a float32 intensity image ``(y, x)``.

    A tinted colour map (the element drawn in one colour on black) becomes an
    intensity by the maximum over its colour channels, which undoes any single-hue
    tint without knowing the hue; an alpha channel is ignored.

    Parameters
    ----------
    path
        PNG, TIFF or JPEG file.
    """
    path = Path(path)
    if not path.is_file():
        raise NightwatchError(f"Element map {path} does not exist.")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            img = np.asarray(tifffile.imread(path))
        else:
            from PIL import Image

            with Image.open(path) as im:
                img = np.asarray(im)
    except Exception as exc:
        raise NightwatchError(f"Element map {path} could not be read as an image ({exc}).") from exc
    img = np.squeeze(img)
    if img.ndim == 3:
        if img.shape[-1] in (2, 4):  # grey+alpha, RGBA: drop alpha
            img = img[..., :-1]
        if img.shape[-1] > 4 and img.shape[0] <= 4:  # channel-first TIFF
            img = np.moveaxis(img, 0, -1)
        img = img.max(axis=-1)
    if img.ndim != 2 or min(img.shape) < 2:
        raise NightwatchError(f"Element map {path} has shape {img.shape}; expected a 2-D image (or a tinted RGB one).")
    if img.dtype.kind not in "uif":
        raise NightwatchError(f"Element map {path} has pixel type {img.dtype}; expected numbers.")
    out = img.astype(np.float32)
    if not np.isfinite(out).any():
        raise NightwatchError(f"Element map {path} holds no finite values.")
    return out


def parse_map_arguments(items: list[str]) -> dict[str, Path]:
    """``["Hg=Hg.png", "Pb-L=Pb.tif"]`` -> ``{"Hg": Path("Hg.png"), ...}`` (CLI ``--map``)."""
    out: dict[str, Path] = {}
    for it in items:
        name, sep, path = it.partition("=")
        if not sep or not name.strip() or not path.strip():
            raise NightwatchError(f"--map {it!r} must look like NAME=FILE, e.g. Pb-L=Pb.tif.")
        if name.strip() in out:
            raise NightwatchError(f"--map gives element {name.strip()!r} twice.")
        out[name.strip()] = Path(path.strip())
    return out
