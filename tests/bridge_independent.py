"""An independent photograph + element-map generator for judging the XRF bridge.

``napari_nightwatch.synth`` paints layered pigment patches, renders their colours by its
own rules and fits its own cube. This generator shares nothing with it:

* **layout**: the independent XRF generator's smooth pigment mixtures
  (:func:`xrf_independent._pigment_fractions`, the same seeded draw as
  :func:`xrf_independent.make_cube`), so mixtures grade into each other instead of
  forming patches with edges;
* **element maps**: that generator's expected counts per family (thick-sample
  self-absorption in each pixel's own matrix, polychromatic tube, detector efficiency),
  with Poisson noise -- not concentrations;
* **photograph**: Kubelka-Munk single-constant mixing of each pigment's absorption /
  scattering ratio in three bands (not synth's linear RGB mixing), a rough surface
  (per-pigment particle grains of their own size and contrast: coarse smalt shards, fine
  lead white), a warm varnish and gamma, and sensor noise;
* **metamers by construction**: smalt and azurite, umber and bone black are given
  nearly the same K/S in the three bands (their mixtures differ only by their grains).

:func:`make_painting` returns the photograph (uint8 RGB), the element maps and the
mosaic px per map px. Importable from tests and benchmarks (``sys.path`` must hold the
``tests`` folder).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xrf_independent import FAMILIES, PIGMENTS, _pigment_fractions, make_cube

#: K/S of each pigment in three bands (R, G, B): single-constant Kubelka-Munk; smalt and
#: azurite (blue), umber and bone black (dark) are near-metamers in these bands
KS: dict[str, tuple[float, float, float]] = {
    "lead white": (0.02, 0.025, 0.035),
    "smalt": (2.2, 0.9, 0.12),
    "vermilion": (0.05, 3.5, 4.0),
    "gypsum": (0.03, 0.03, 0.04),
    "umber": (2.5, 3.0, 3.6),
    "azurite": (2.3, 0.85, 0.13),
    "lead-tin yellow": (0.04, 0.09, 2.8),
    "bone black": (2.6, 3.0, 3.4),
}
#: grain of each pigment: (grain size in photo px, contrast of the grains)
GRAIN: dict[str, tuple[float, float]] = {
    "lead white": (0.7, 0.15),
    "smalt": (3.0, 0.9),
    "vermilion": (0.8, 0.3),
    "gypsum": (1.5, 0.4),
    "umber": (1.2, 0.5),
    "azurite": (1.6, 0.6),
    "lead-tin yellow": (1.0, 0.3),
    "bone black": (2.2, 0.7),
}


@dataclass
class IndependentPainting:
    photo: np.ndarray  # (H, W, 3) uint8
    maps: dict[str, np.ndarray]  # family -> (ny, nx) float32 measured counts
    truth: dict[str, np.ndarray]  # family -> (ny, nx) expected counts (no noise)
    fractions: np.ndarray  # (ny, nx, n_pigments) pigment fractions
    px_per_map_px: int


def _km_reflectance(ks: np.ndarray) -> np.ndarray:
    """Kubelka-Munk reflectance of an opaque layer of absorption/scattering ratio ``ks``."""
    return 1.0 + ks - np.sqrt(ks * ks + 2.0 * ks)


def make_painting(seed: int = 0, size: int = 64, px: int = 8, counts: float = 2e3) -> IndependentPainting:
    """A seeded painting: ``size`` x ``size`` map pixels, ``px`` photo px per map px.

    ``counts`` sets the Poisson noise of the maps (about the counts of lead white's Pb-L
    in one map pixel).
    """
    from scipy.ndimage import gaussian_filter, zoom

    ic = make_cube(seed=seed, size=size, counts=counts)
    frac = _pigment_fractions(np.random.default_rng(seed), size, size)  # make_cube's first draw
    rng = np.random.default_rng(seed + 1000)
    truth = {f: ic.truth[..., i].astype(np.float64) for i, f in enumerate(FAMILIES)}
    maps = {f: rng.poisson(np.maximum(t, 0)).astype(np.float32) for f, t in truth.items()}
    # the photograph: fractions up-sampled (cubic), each pigment's grains, Kubelka-Munk
    h = size * px
    names = list(PIGMENTS)
    up = np.clip(np.stack([zoom(frac[..., i], px, order=3, mode="nearest") for i in range(len(names))], -1), 0, None)
    for i, name in enumerate(names):
        g_size, g_contrast = GRAIN[name]
        grains = gaussian_filter(rng.standard_normal((h, h)), g_size)
        grains /= grains.std() + 1e-12
        up[..., i] *= np.exp(g_contrast * grains - 0.5 * g_contrast**2)
    up /= up.sum(-1, keepdims=True)
    ks = np.einsum("hwp,pc->hwc", up, np.array([KS[n] for n in names]))
    refl = _km_reflectance(ks)
    varnish = np.array([1.0, 0.93, 0.78])  # a yellowed varnish
    light = 0.9 + 0.1 * gaussian_filter(rng.standard_normal((h, h)), h / 6)[..., None] / 0.05  # uneven light
    img = np.clip(refl * varnish * np.clip(light, 0.7, 1.1), 0, 1) ** (1 / 2.2)
    img = img + rng.normal(0, 0.01, img.shape)
    photo = np.clip(np.round(img * 255), 0, 255).astype(np.uint8)
    return IndependentPainting(photo, maps, {f: t.astype(np.float32) for f, t in truth.items()}, frac, px)


def painting_store(path, seed: int = 0, size: int = 64, px: int = 8, counts: float = 2e3,
                   pixel_size_um: float = 10.0):
    """A painting store of :func:`make_painting`: the photograph as the mosaic, the
    measured maps imported as the XRF modality with their exact placement."""
    import tempfile
    from pathlib import Path

    import tifffile

    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import import_element_maps, import_mosaic

    p = make_painting(seed, size, px, counts)
    with tempfile.TemporaryDirectory() as tmp:
        f = Path(tmp) / "photo.tif"
        tifffile.imwrite(f, p.photo)
        import_mosaic(f, path, pixel_size_um=pixel_size_um)
    store = PaintingStore.open(path, mode="r+")
    # map pixel (i, j) covers photo px [i*px, (i+1)*px): centres at i*px + (px-1)/2
    affine = np.array([[px, 0.0, (px - 1) / 2.0], [0.0, px, (px - 1) / 2.0], [0.0, 0.0, 1.0]])
    import_element_maps(store, p.maps, affine=affine)
    return PaintingStore.open(path, mode="r+"), p
