"""Small painted MA-XRF scenes with known element amounts (tests and benchmarks).

The scene is laid out so that every classic overlap is tested where one partner is
alone and where both are present: lead white (Pb-L + Pb-M) on the left half, an
arsenic pigment (As-K) on the top half, vermilion (HgS: Hg-L, Hg-M, S-K) in the
bottom-right quarter and gypsum (S-K without Hg) in a strip at the bottom left; iron,
calcium and copper vary smoothly everywhere. Counts follow the same forward model the
fit inverts (:func:`napari_nightwatch.xrf.model.simulate_spectra`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .lines import LineFamily, get_family
from .model import Detector, simulate_spectra

#: the scene's families in output order
SCENE_FAMILIES = ("Pb-L", "As-K", "Hg-L", "S-K", "Fe-K", "Ca-K", "Cu-K", "Pb-M", "Hg-M")


@dataclass
class Scene:
    """A simulated cube and the truth it was made from.

    Attributes
    ----------
    names
        Family names, same order as the last axis of ``truth``.
    families
        The :class:`LineFamily` objects.
    truth
        (ny, nx, F) expected counts per family.
    cube
        (ny, nx, E) float32 Poisson counts.
    energies_kev
        (E,) channel energies.
    detector
        The detector used.
    offset_kev, gain_kev
        Linear calibration of the cube.
    """

    names: list[str]
    families: list[LineFamily]
    truth: np.ndarray
    cube: np.ndarray
    energies_kev: np.ndarray
    detector: Detector
    offset_kev: float
    gain_kev: float


def painted_scene(
    n: int = 32,
    *,
    n_channels: int = 1024,
    gain_kev: float = 0.02,
    offset_kev: float = 0.01,
    seed: int = 0,
    counts_scale: float = 1.0,
    detector: Detector | None = None,
    nx: int | None = None,
) -> Scene:
    """Simulate an ``n x nx`` pixel scene (see the module docstring).

    Parameters
    ----------
    n, nx
        Height and width in pixels (``nx`` defaults to ``n``).
    n_channels, gain_kev, offset_kev
        Energy axis.
    seed
        Random seed of the amount fields and the Poisson noise.
    counts_scale
        Multiplies every expected count (longer dwell time).
    detector
        Peak model (default :class:`Detector`).
    """
    from scipy.ndimage import gaussian_filter

    det = detector or Detector()
    nx = n if nx is None else int(nx)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:n, 0:nx].astype(np.float64)
    yy /= n
    xx /= nx

    def texture() -> np.ndarray:
        # smooth, strongly varying amounts (brush strokes), between 0.3 and 1.3
        f = gaussian_filter(rng.normal(size=(n, nx)), 2.0, mode="wrap")
        f = (f - f.min()) / (np.ptp(f) + 1e-12)
        return 0.3 + f

    lead = xx < 0.5
    arsenic = yy < 0.5
    mercury = (xx >= 0.5) & (yy >= 0.5)
    gypsum = (xx < 0.25) & (yy >= 0.5)
    truth = {
        "Pb-L": 3000.0 * lead * texture(),
        "As-K": 1500.0 * arsenic * texture(),
        "Hg-L": 2500.0 * mercury * texture(),
        "S-K": 800.0 * (mercury | gypsum) * texture(),
        "Fe-K": 1500.0 * texture() * (0.4 + xx),
        "Ca-K": 1000.0 * texture() * (1.2 - yy),
        "Cu-K": 600.0 * texture() * (xx > 0.3),
    }
    # one element, one amount: the M lines follow the L lines
    truth["Pb-M"] = 0.5 * truth["Pb-L"]
    truth["Hg-M"] = 0.4 * truth["Hg-L"]
    names = list(SCENE_FAMILIES)
    fams = [get_family(k) for k in names]
    areas = np.stack([truth[k].ravel() for k in names], axis=1) * counts_scale
    matrix = texture().ravel()[:, None]
    scatter = np.array([[400.0, 80.0, 900.0, 160.0]]) * matrix * counts_scale
    cont = 2000.0 * texture().ravel() * counts_scale
    energies = offset_kev + gain_kev * np.arange(n_channels)
    counts = simulate_spectra(
        energies, fams, areas, detector=det, scatter_areas=scatter, continuum_areas=cont, rng=rng
    )
    return Scene(
        names, fams, areas.reshape(n, nx, -1), counts.reshape(n, nx, -1), energies, det, offset_kev, gain_kev
    )
