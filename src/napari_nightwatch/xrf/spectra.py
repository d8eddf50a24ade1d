"""Spectra for queries: from the cube (pixel, rectangle, mask) or from files.

Cube positions are XRF pixels ``(y, x)`` by default; with ``coords="mosaic"`` they are
level-0 mosaic pixels, mapped onto the XRF grid through the store's XRF->mosaic affine.
Spectra from files are brought onto the cube's energy axis by rebinning their
cumulative counts, so the counts in any energy interval are preserved.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..core.errors import NightwatchError
from ..core.spectra import EnergyCalibration


def _to_xrf(store, yx: np.ndarray, coords: str) -> np.ndarray:
    if coords == "xrf":
        return np.asarray(yx, dtype=np.float64)
    if coords != "mosaic":
        raise NightwatchError(f"coords={coords!r} must be 'xrf' or 'mosaic'.")
    from ..core.geometry import apply_affine

    inv = np.linalg.inv(store.xrf_affine)
    return apply_affine(inv, np.atleast_2d(yx))


def _check_box(y0: int, x0: int, y1: int, x1: int, shape: tuple[int, int]) -> None:
    ny, nx = shape
    if not (0 <= y0 < y1 <= ny and 0 <= x0 < x1 <= nx):
        raise NightwatchError(
            f"Region ({y0}, {x0}, {y1}, {x1}) is empty or outside the {ny} x {nx} XRF pixel grid "
            "(expected 0 <= y0 < y1 <= height and 0 <= x0 < x1 <= width)."
        )


def _mean_valid(block: np.ndarray, weights: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Mean spectrum of the pixels of a (..., E) block that hold valid counts."""
    b = np.asarray(block, dtype=np.float64).reshape(-1, block.shape[-1])
    with np.errstate(invalid="ignore"):
        ok = (b >= 0).all(axis=1) & np.isfinite(b).all(axis=1)
    if weights is not None:
        ok &= weights.reshape(-1)
    n = int(ok.sum())
    if n == 0:
        return np.full(b.shape[-1], np.nan), 0
    return b[ok].sum(axis=0) / n, n


def mean_spectrum(
    store,
    *,
    pixel: tuple[float, float] | None = None,
    region: tuple[float, float, float, float] | None = None,
    mask: np.ndarray | None = None,
    coords: str = "xrf",
) -> np.ndarray:
    """Mean spectrum (counts per pixel, (E,)) of one pixel, a rectangle or a mask.

    Parameters
    ----------
    store
        A painting store with an MA-XRF cube.
    pixel
        ``(y, x)``: the pixel containing that point.
    region
        ``(y0, x0, y1, x1)``: the pixels whose centres lie in the half-open box.
    mask
        Boolean ``(y, x)`` on the XRF grid (only with ``coords="xrf"``).
    coords
        ``"xrf"`` (XRF pixels) or ``"mosaic"`` (level-0 mosaic pixels).

    Returns
    -------
    np.ndarray
        (E,) float64; pixels with NaN or negative counts are left out.

    Raises
    ------
    NightwatchError
        When not exactly one of pixel/region/mask is given, it lies outside the cube,
        or it holds no valid pixel.
    """
    given = [v is not None for v in (pixel, region, mask)]
    if sum(given) != 1:
        raise NightwatchError("Give exactly one of pixel=(y, x), region=(y0, x0, y1, x1) or mask.")
    cube = store.xrf_cube()
    ny, nx = int(cube.shape[0]), int(cube.shape[1])
    if pixel is not None:
        p = _to_xrf(store, np.asarray(pixel, dtype=np.float64).reshape(1, 2), coords)[0]
        iy, ix = int(np.floor(p[0] + 0.5)), int(np.floor(p[1] + 0.5))
        _check_box(iy, ix, iy + 1, ix + 1, (ny, nx))
        spec, n = _mean_valid(np.asarray(cube[iy, ix].compute()))
    elif region is not None:
        y0, x0, y1, x1 = (float(v) for v in region)
        if coords == "mosaic":
            corners = _to_xrf(store, np.array([[y0, x0], [y0, x1], [y1, x0], [y1, x1]]), coords)
            y0, x0 = corners.min(axis=0)
            y1, x1 = corners.max(axis=0)
        # pixel i has its centre at i: it is inside [a, b) when a <= i < b
        iy0, ix0 = int(np.ceil(y0)), int(np.ceil(x0))
        iy1, ix1 = int(np.ceil(y1)), int(np.ceil(x1))
        _check_box(iy0, ix0, iy1, ix1, (ny, nx))
        spec, n = _mean_valid(np.asarray(cube[iy0:iy1, ix0:ix1].compute()))
    else:
        if coords != "xrf":
            raise NightwatchError("A mask must be given on the XRF pixel grid (coords='xrf').")
        m = np.asarray(mask, dtype=bool)
        if m.shape != (ny, nx):
            raise NightwatchError(f"The mask has shape {m.shape}; expected the XRF grid {(ny, nx)}.")
        if not m.any():
            raise NightwatchError("The mask selects no pixel.")
        rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        # read only the mask's bounding box, row band by row band, to bound memory
        zc = store.root["xrf/cube"]
        band = max(int(zc.chunks[0]), 1)
        total = np.zeros(cube.shape[-1])
        n = 0
        for a in range(y0, y1, band):
            b = min(a + band, y1)
            s, k = _mean_valid(np.asarray(zc[a:b, x0:x1]), m[a:b, x0:x1])
            if k:
                total += s * k
                n += k
        spec = total / n if n else np.full(cube.shape[-1], np.nan)
    if n == 0:
        raise NightwatchError("The selected pixels hold no valid counts (all NaN or negative).")
    return spec


def rebin_spectrum(
    counts: np.ndarray, source_energies_kev: np.ndarray, target_energies_kev: np.ndarray
) -> np.ndarray:
    """Bring a spectrum onto another energy axis, preserving counts per energy interval.

    The cumulative counts at the source channel edges are interpolated at the target
    channel edges and differenced; counts outside the target axis are dropped.

    Parameters
    ----------
    counts
        (N,) counts per source channel.
    source_energies_kev, target_energies_kev
        Channel centre energies (strictly increasing) of both axes.

    Returns
    -------
    np.ndarray
        (M,) counts per target channel.
    """
    from .model import channel_edges, check_axis

    c = np.asarray(counts, dtype=np.float64)
    es = check_axis(source_energies_kev)
    et = check_axis(target_energies_kev)
    if c.shape != es.shape:
        raise NightwatchError(f"The spectrum has {c.size} channels but its energy axis has {es.size}.")
    if not np.isfinite(c).all():
        raise NightwatchError("The spectrum contains NaN or infinite counts.")
    cum = np.concatenate([[0.0], np.cumsum(c)])
    edges_s = channel_edges(es)
    edges_t = channel_edges(et)
    at = np.interp(edges_t, edges_s, cum, left=0.0, right=cum[-1])
    return np.diff(at)


def spectrum_from_file(
    path: str | Path,
    target: EnergyCalibration | np.ndarray,
    n_channels: int | None = None,
    *,
    calibration: EnergyCalibration | None = None,
) -> np.ndarray:
    """Read one spectrum file and bring it onto a cube's energy axis.

    Parameters
    ----------
    path
        ``.spx``, ``.mca``, ``.msa``/``.emsa``/EMSA ``.txt``, ``.spe``, or two-column
        CSV/TXT (energy keV, counts); read by :func:`napari_nightwatch.io.xrf_files.read_spectrum`.
    target
        The cube's calibration (with ``n_channels``) or its channel energies.
    n_channels
        Number of cube channels when ``target`` is a calibration.
    calibration
        The file's calibration when it has none (or to override it).

    Returns
    -------
    np.ndarray
        Counts per cube channel (float64).
    """
    from ..io.xrf_files import read_spectrum

    if isinstance(target, EnergyCalibration):
        if n_channels is None:
            raise NightwatchError("n_channels is needed with a calibration target.")
        et = target.energies(int(n_channels))
    else:
        et = np.asarray(target, dtype=np.float64)
    spec = read_spectrum(path, calibration=calibration)
    if spec.calibration is None:
        raise NightwatchError(
            f"Spectrum file {path} has no energy calibration; give one (calibration=..., offset and gain in keV)."
        )
    counts = np.asarray(spec.counts, dtype=np.float64)
    if (counts < 0).any() or not np.isfinite(counts).all():
        raise NightwatchError(f"Spectrum file {path} holds NaN or negative counts.")
    return rebin_spectrum(counts, spec.energies(), et)


def write_spectrum_csv(path: str | Path, energies_kev: np.ndarray, counts: np.ndarray) -> Path:
    """Write a two-column CSV (``energy_kev,counts``) that :func:`spectrum_from_file` reads back."""
    e = np.asarray(energies_kev, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if e.shape != c.shape:
        raise NightwatchError(f"energies {e.shape} and counts {c.shape} differ in length.")
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    np.savetxt(p, np.column_stack([e, c]), delimiter=",", header="energy_kev,counts", comments="# ", fmt="%.6g")
    return p
