"""Continuum background of XRF spectra: SNIP, batched over many spectra.

SNIP (Ryan et al. 1988, Morhac 2009) clips every channel to the mean of its
neighbours at growing (here: shrinking) distances after a log-log-sqrt transform
that flattens Poisson peaks. Written by hand because no maintained library offers a
version vectorised over thousands of spectra at once: every step below is one numpy
operation on a (pixels, channels) array, with no Python loop per pixel.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import NightwatchError
from .model import Detector


def _lls(y: np.ndarray) -> np.ndarray:
    return np.log(np.log(np.sqrt(y + 1.0) + 1.0) + 1.0)


def _lls_inverse(v: np.ndarray) -> np.ndarray:
    return (np.exp(np.exp(v) - 1.0) - 1.0) ** 2 - 1.0


def snip(
    spectra: np.ndarray,
    width: int = 20,
    smooth: int = 3,
    decreasing: bool = True,
) -> np.ndarray:
    """SNIP background of one spectrum (E,) or many (..., E).

    Parameters
    ----------
    spectra
        Counts, last axis = channels. NaN is not allowed (mask such pixels first).
    width
        Largest clipping half-window in channels; about 2-3 peak FWHMs.
    smooth
        Half-width of a moving-average pre-smoothing (0 = none); stabilises SNIP on
        low-count pixels, where it would otherwise follow the noise minima.
    decreasing
        Clip with windows ``width .. 1`` (Morhac's order, gentler on peak shoulders)
        instead of ``1 .. width``.

    Returns
    -------
    np.ndarray
        Background with the input's shape, float64, never above the (smoothed) input.
    """
    y = np.asarray(spectra)
    if y.shape[-1] < 2 * width + 1:
        raise NightwatchError(
            f"SNIP width {width} channels needs spectra of at least {2 * width + 1} channels; got {y.shape[-1]}."
        )
    if width < 1:
        raise NightwatchError(f"SNIP width must be at least 1 channel; got {width}.")
    if not np.isfinite(y).all():
        raise NightwatchError("SNIP background: the spectra contain NaN or infinite counts; mask those pixels first.")
    # float32 for batches (half the memory traffic of this bandwidth-bound loop), float64
    # for single spectra where it costs nothing
    dtype = np.float64 if y.ndim == 1 or y.dtype == np.float64 and y.size < 1 << 16 else np.float32
    shape = y.shape
    y = y.reshape(-1, shape[-1]).astype(dtype, copy=False)
    if smooth > 0:
        # moving average by cumulative sums: O(E) per spectrum whatever the window
        k = 2 * smooth + 1
        pad = np.pad(y.astype(np.float64), ((0, 0), (smooth, smooth)), mode="edge")
        c = np.cumsum(pad, axis=1)
        c = np.concatenate([np.zeros((y.shape[0], 1)), c], axis=1)
        y = ((c[:, k:] - c[:, :-k]) / k).astype(dtype)
    v = _lls(np.clip(y, 0.0, None)).astype(dtype, copy=False)
    windows = range(width, 0, -1) if decreasing else range(1, width + 1)
    n = v.shape[1]
    buf = np.empty_like(v)
    for p in windows:
        mid = buf[:, : n - 2 * p]
        np.add(v[:, : n - 2 * p], v[:, 2 * p :], out=mid)
        mid *= 0.5
        np.minimum(v[:, p : n - p], mid, out=v[:, p : n - p])
    return _lls_inverse(v.astype(np.float64)).reshape(shape)


def snip_width_channels(energies_kev: np.ndarray, detector: Detector | None = None, fwhms: float = 2.5) -> int:
    """A SNIP width (channels) of ``fwhms`` peak widths at 10 keV on this energy axis."""
    det = detector or Detector()
    e = np.asarray(energies_kev, dtype=np.float64)
    gain = float(np.median(np.diff(e)))
    return max(int(round(fwhms * float(det.fwhm_kev(10.0)) / gain)), 1)
