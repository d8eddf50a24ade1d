"""Scan artefacts of MA-XRF: the odd/even-row shift of bidirectional (serpentine) scans.

A scanner that sweeps alternate rows in opposite directions, with a small lag
between position read-out and detector dwell, places odd rows a fraction of a pixel
(or more) off the even ones: vertical edges become a one-pixel comb. The shift is
estimated by sub-pixel phase correlation (scikit-image) between the odd rows and the
even rows interpolated to the same heights, and undone by shifting the odd rows.
"""

from __future__ import annotations

import numpy as np

from ..core.errors import NightwatchError


def estimate_row_shift(image: np.ndarray, upsample: int = 20) -> float:
    """Horizontal shift (pixels) of the odd rows relative to the even rows.

    Parameters
    ----------
    image
        (y, x) image with structure, e.g. total counts or an element map; NaN allowed.
    upsample
        Sub-pixel precision of the phase correlation (1/upsample pixel).

    Returns
    -------
    float
        Positive when odd rows are displaced towards larger x.
    """
    from skimage.registration import phase_cross_correlation

    img = np.asarray(image, dtype=np.float64)
    if img.ndim != 2 or img.shape[0] < 4 or img.shape[1] < 8:
        raise NightwatchError(f"Row-shift estimation needs a 2-D image of at least 4 x 8 pixels; got {img.shape}.")
    finite = np.isfinite(img)
    if not finite.any():
        raise NightwatchError("Row-shift estimation: the image has no finite pixel.")
    img = np.where(finite, img, np.nanmean(img))
    n_pairs = (img.shape[0] - 1) // 2
    odd = img[1 : 2 * n_pairs : 2]
    # even rows at the odd rows' heights: the mean of the rows above and below
    even = 0.5 * (img[0 : 2 * n_pairs - 1 : 2] + img[2 : 2 * n_pairs + 1 : 2])
    # edges carry the shift; a window against wrap-around at the image borders
    win = np.hanning(img.shape[1])[None, :]
    shift, _, _ = phase_cross_correlation(even * win, odd * win, upsample_factor=int(upsample), normalization=None)
    return float(-shift[1])


def correct_row_shift(data: np.ndarray, shift: float, axis_y: int = 0, axis_x: int = 1) -> np.ndarray:
    """Shift the odd rows of an image or cube back by ``shift`` pixels along x.

    Parameters
    ----------
    data
        (y, x) image, (y, x, E) cube or (c, y, x) maps (set ``axis_y``/``axis_x``).
    shift
        As returned by :func:`estimate_row_shift`.
    axis_y, axis_x
        Row and column axes of ``data``.

    Returns
    -------
    np.ndarray
        A corrected float copy (linear interpolation; edge pixels repeat).
    """
    from scipy.ndimage import shift as nd_shift

    a = np.moveaxis(np.asarray(data, dtype=np.float64), (axis_y, axis_x), (0, 1)).copy()
    if not np.isfinite(shift):
        raise NightwatchError(f"Row shift {shift!r} is not a finite number of pixels.")
    odd = a[1::2]
    vec = [0.0] * odd.ndim
    vec[1] = -float(shift)
    a[1::2] = nd_shift(odd, vec, order=1, mode="nearest")
    return np.moveaxis(a, (0, 1), (axis_y, axis_x))


def comb_strength(image: np.ndarray) -> float:
    """How much odd rows differ from their even neighbours, relative to the image contrast."""
    img = np.nan_to_num(np.asarray(image, dtype=np.float64))
    n_pairs = (img.shape[0] - 1) // 2
    odd = img[1 : 2 * n_pairs : 2]
    even = 0.5 * (img[0 : 2 * n_pairs - 1 : 2] + img[2 : 2 * n_pairs + 1 : 2])
    return float(np.abs(odd - even).mean() / (img.std() + 1e-12))
