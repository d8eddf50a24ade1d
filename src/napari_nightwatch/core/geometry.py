"""Affine transforms between XRF pixels and level-0 mosaic pixels.

Affines are 3x3 matrices acting on homogeneous ``(y, x, 1)`` column vectors, the
same (row, column) order napari uses for ``affine``. The XRF->mosaic affine maps
XRF pixel centres to level-0 mosaic pixel coordinates.
"""

from __future__ import annotations

import numpy as np

from .errors import NightwatchError


def as_affine(matrix) -> np.ndarray:
    """Validate and return a 3x3 float affine."""
    a = np.asarray(matrix, dtype=np.float64)
    if a.shape != (3, 3) or not np.allclose(a[2], [0, 0, 1]) or not np.isfinite(a).all():
        raise NightwatchError(f"Expected a 3x3 affine with last row (0, 0, 1); got {a.tolist()}.")
    if abs(np.linalg.det(a[:2, :2])) < 1e-12:
        raise NightwatchError("The affine is singular (it collapses the plane onto a line).")
    return a


def apply_affine(matrix: np.ndarray, yx: np.ndarray) -> np.ndarray:
    """Apply a 3x3 affine to (N, 2) ``y, x`` points."""
    yx = np.atleast_2d(np.asarray(yx, dtype=np.float64))
    return yx @ matrix[:2, :2].T + matrix[:2, 2]


def scale_translate_affine(scale: tuple[float, float], translate: tuple[float, float]) -> np.ndarray:
    """The affine ``p -> scale * p + translate``."""
    return np.array([[scale[0], 0, translate[0]], [0, scale[1], translate[1]], [0, 0, 1]], float)


def micrometre_affine(affine_to_level0: np.ndarray, pixel_size_um: float) -> np.ndarray:
    """Compose an affine into level-0 pixels with the mosaic's pixel size (-> micrometres)."""
    s = np.diag([pixel_size_um, pixel_size_um, 1.0])
    return s @ affine_to_level0
