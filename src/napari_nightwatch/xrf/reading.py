"""A spectrum read as pigments: which pigments explain the fitted composition of a pixel or region.

The fitted element maps (``xrf-maps``) already hold each pixel's family areas and
their standard uncertainties; a pixel or a rectangle of pixels is read from them
(areas averaged, uncertainties combined as for a mean of independent fits) and
handed to :func:`napari_nightwatch.xrf.pigments.read_composition`, which ranks the
library's pigments by how much of that composition they explain.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..core.errors import NightwatchError
from ..core.geometry import apply_affine
from .pigments import CompositionReading, read_composition


def _xrf_box(store, pixel, region, coords: str) -> tuple[int, int, int, int]:
    """Half-open XRF pixel box of a pixel (the one containing the point) or a region (pixel centres inside)."""
    if coords not in ("xrf", "mosaic"):
        raise NightwatchError(f"coords={coords!r} must be 'xrf' or 'mosaic'.")
    if (pixel is None) == (region is None):
        raise NightwatchError("Give exactly one of pixel=(y, x) or region=(y0, x0, y1, x1).")
    to_xrf = np.linalg.inv(store.xrf_affine) if coords == "mosaic" else None
    if pixel is not None:
        p = np.asarray(pixel, dtype=np.float64).reshape(1, 2)
        if not np.isfinite(p).all():
            raise NightwatchError(f"The pixel {tuple(pixel)} must be two finite numbers.")
        if to_xrf is not None:
            p = apply_affine(to_xrf, p)
        iy, ix = (int(np.floor(v + 0.5)) for v in p[0])
        return iy, ix, iy + 1, ix + 1
    r = np.asarray(region, dtype=np.float64).reshape(4)
    if not np.isfinite(r).all():
        raise NightwatchError(f"The region {tuple(region)} must be four finite numbers.")
    y0, x0, y1, x1 = r
    if to_xrf is not None:
        c = apply_affine(to_xrf, np.array([[y0, x0], [y0, x1], [y1, x0], [y1, x1]]))
        (y0, x0), (y1, x1) = c.min(axis=0), c.max(axis=0)
    # pixel i has its centre at i: inside [a, b) when a <= i < b
    return int(np.ceil(y0)), int(np.ceil(x0)), int(np.ceil(y1)), int(np.ceil(x1))


def fitted_composition(
    store,
    *,
    pixel: Sequence[float] | None = None,
    region: Sequence[float] | None = None,
    coords: str = "xrf",
) -> tuple[dict[str, float], dict[str, float], int]:
    """Fitted family areas of a pixel or region, with their standard uncertainties.

    Parameters
    ----------
    store
        A painting store with finished element maps (``xrf-maps``).
    pixel, region
        ``(y, x)`` or ``(y0, x0, y1, x1)``, in XRF pixels or level-0 mosaic pixels (``coords``).
    coords
        ``"xrf"`` or ``"mosaic"``.

    Returns
    -------
    areas, uncertainty, n_pixels
        Mean area per family (counts per pixel), the standard uncertainty of that mean
        (``sqrt(sum sigma_i**2) / n``, independent pixel fits), and how many pixels
        with finite areas were averaged.
    """
    from .maps import load_uncertainty

    names, unc_all, _ = load_uncertainty(store)
    ny, nx = unc_all.shape[1:]
    y0, x0, y1, x1 = _xrf_box(store, pixel, region, coords)
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise NightwatchError(
            f"The XRF pixels ({y0}, {x0}, {y1}, {x1}) are empty or outside the {ny} x {nx} element maps "
            "(expected 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width)."
        )
    g = store.root["xrf_maps"]
    areas = np.asarray(g["0"][:, y0:y1, x0:x1], np.float64).reshape(len(names), -1)
    sig = np.asarray(unc_all[:, y0:y1, x0:x1], np.float64).reshape(len(names), -1)
    ok = np.isfinite(areas).all(0) & np.isfinite(sig).all(0)
    n = int(ok.sum())
    if n == 0:
        raise NightwatchError("The selected XRF pixels have no fitted areas (not fitted yet, or no valid counts).")
    mean = areas[:, ok].mean(1)
    sd = np.sqrt((sig[:, ok] ** 2).sum(1)) / n
    return dict(zip(names, mean.tolist(), strict=True)), dict(zip(names, sd.tolist(), strict=True)), n


def read_pigments(
    store,
    *,
    pixel: Sequence[float] | None = None,
    region: Sequence[float] | None = None,
    coords: str = "xrf",
    top: int | None = 5,
) -> CompositionReading:
    """The pigments whose elements explain the fitted composition of a pixel or region, ranked.

    See :func:`fitted_composition` for the inputs and
    :func:`napari_nightwatch.xrf.pigments.read_composition` for the ranking.
    """
    areas, sd, _ = fitted_composition(store, pixel=pixel, region=region, coords=coords)
    return read_composition(areas, sd, top=top)


__all__ = ["fitted_composition", "read_pigments"]
