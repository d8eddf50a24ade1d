"""The synthetic painting: a seeded test bed, sample data and demo with ground truth.

A painting detail under a microscope at 5 um per pixel is built from a pigment
library (:data:`PIGMENTS`: elemental composition, colour and microstructure), in
three paint layers (ground, underpaint, surface), with brushwork, impasto,
craquelure and a yellowed varnish. The photograph shows only the surface layer; the
MA-XRF cube sees every layer, attenuated by the paint above it, so the ground's lead
is everywhere in the XRF but nowhere in the photograph.

The cube is simulated with the XRF engine's forward model
(:mod:`napari_nightwatch.xrf.model`): per XRF pixel, ``Poisson(counts_scale *
sum_f c_el(f) * K_f * template_f + scatter + continuum)`` with xraydb line energies
and intensities, energy-dependent peak widths, Si escape peaks, Rh-K tube scatter
and a bremsstrahlung continuum. The XRF pixels are sampled through a *true* affine
(a few mosaic pixels of translation and ~0.3 deg of rotation away from the nominal
one) while the store records the nominal affine, so registration has something to
recover.

Ground truth (``ground_truth/`` in the store, read with :func:`load_ground_truth`):
pigment labels per layer at mosaic resolution, the majority surface pigment and
the element concentrations on the XRF grid, the true and nominal affines.

Everything is vectorised numpy/scipy (FFT-filtered noise fields, warped Voronoi
cells, FFT convolution of particle impulses); nothing loops over pixels.
"""

from __future__ import annotations

import functools
import json
import math
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .core.errors import NightwatchError
from .core.progress import ProgressCallback, report
from .core.spectra import EnergyCalibration

#: mosaic pixel size of the synthetic photograph (micrometres)
MOSAIC_PIXEL_UM = 5.0
#: MA-XRF energy axis: 1024 channels over 0-40 keV, like a Bruker M6 export
N_CHANNELS = 1024
CALIBRATION = EnergyCalibration(offset_kev=-0.01, gain_kev=40.0 / 1024)
#: Rh tube voltage (keV)
EXCITATION_KEV = 50.0
#: expected counts per XRF pixel of a pure-element layer of unit thickness and unit sensitivity
COUNTS_SCALE = 6000.0
#: largest mosaic edge: the painting is built in memory (~1.5 GB at 4096 px)
MAX_SIZE = 4096
#: label value for "no pigment in this layer here"
NO_PIGMENT = 255
LAYERS = ("ground", "underpaint", "surface")
# main line below this energy is lost in the air path of an MA-XRF scanner
_MIN_LINE_KEV = 1.7


@dataclass(frozen=True)
class Pigment:
    """One pigment of the library: what the XRF sees and what the microscope sees.

    Attributes
    ----------
    name
        Common name, e.g. ``"vermilion"``.
    composition
        Element -> weight fraction in the dry paint (pigment plus binder).
    rgb
        Body colour of the paint (sRGB, 0-255).
    particle_rgb
        Colour of the visible particles (coarse crystals, lumps, glass shards).
    particle_size_px
        Typical particle diameter in mosaic pixels (5 um each).
    particle_cover
        Fraction of the area covered by visible particles.
    particle_shape
        ``"round"`` (lumps), ``"angular"`` (crushed crystals), ``"shard"`` (elongated
        glass splinters) or ``"flake"`` (thin plates along the brush direction).
    grain
        Amplitude of pixel-scale colour speckle (fine pigment grain).
    colour_variation
        Amplitude of low-frequency lightness variation (uneven mixing).
    streak
        Strength of brushwork streaks in the colour.
    impasto
        Relief of the paint (height amplitude, drives the raking-light shading).
    density
        Layer density (g/cm^3) used for the X-ray attenuation of the paint above a line.
    roles
        Layers this pigment is used in: ``"ground"``, ``"underpaint"``, ``"surface"``.
    """

    name: str
    composition: dict[str, float]
    rgb: tuple[int, int, int]
    particle_rgb: tuple[int, int, int]
    particle_size_px: float
    particle_cover: float
    particle_shape: str
    grain: float
    colour_variation: float
    streak: float
    impasto: float
    density: float
    roles: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "composition": dict(self.composition),
            "rgb": list(self.rgb),
            "particle_size_px": self.particle_size_px,
            "particle_shape": self.particle_shape,
            "roles": list(self.roles),
        }


# Weight fractions are those of the pigment in a linseed-oil paint (~70-85 % pigment by
# weight); minor elements follow the usual historical recipes (ochres are iron oxides in
# clay with calcite; smalt is a potassium cobalt glass with arsenic from the cobalt ore).
PIGMENTS: tuple[Pigment, ...] = (
    Pigment("lead white", {"Pb": 0.66}, (232, 228, 214), (250, 248, 240), 5.0, 0.10, "round",
            0.020, 0.04, 0.45, 1.00, 3.2, ("ground", "surface")),
    Pigment("chalk", {"Ca": 0.32}, (226, 220, 200), (240, 236, 222), 2.0, 0.10, "angular",
            0.030, 0.04, 0.30, 0.30, 1.6, ("ground", "underpaint")),
    # vermilion: finely ground, dense and glassy (fine speckle, no coarse grains)
    Pigment("vermilion", {"Hg": 0.70, "S": 0.11}, (182, 48, 34), (226, 84, 60), 1.0, 0.12, "round",
            0.085, 0.04, 0.25, 0.40, 3.6, ("surface",)),
    Pigment("yellow ochre", {"Fe": 0.22, "Si": 0.10, "Ca": 0.05, "K": 0.02}, (190, 146, 62), (120, 84, 32),
            2.4, 0.22, "angular", 0.050, 0.10, 0.40, 0.50, 1.9, ("surface",)),
    # red ochre: earthy, coarse dark clay and haematite grains, uneven
    Pigment("red ochre", {"Fe": 0.38, "Si": 0.06}, (152, 60, 40), (84, 30, 22), 3.6, 0.30, "angular",
            0.030, 0.12, 0.40, 0.50, 2.0, ("surface", "underpaint")),
    Pigment("umber", {"Fe": 0.24, "Mn": 0.09, "Si": 0.07}, (92, 68, 46), (48, 34, 24), 3.0, 0.25, "angular",
            0.045, 0.08, 0.35, 0.35, 1.9, ("surface", "underpaint")),
    Pigment("azurite", {"Cu": 0.44}, (46, 82, 150), (28, 68, 196), 8.0, 0.50, "angular",
            0.050, 0.12, 0.20, 0.70, 2.2, ("surface",)),
    Pigment("verdigris", {"Cu": 0.26}, (46, 124, 98), (30, 100, 80), 1.5, 0.10, "round",
            0.020, 0.08, 0.75, 0.25, 1.5, ("surface",)),
    Pigment("smalt", {"Co": 0.05, "As": 0.02, "K": 0.08, "Si": 0.25}, (118, 124, 156), (52, 72, 190),
            10.0, 0.35, "shard", 0.030, 0.06, 0.30, 0.60, 1.7, ("surface",)),
    # lead-tin yellow: stiff impasto with round lumps (unground pigment, lead soaps)
    Pigment("lead-tin yellow", {"Pb": 0.55, "Sn": 0.16}, (228, 198, 78), (248, 232, 150), 6.0, 0.25, "round",
            0.025, 0.06, 0.30, 0.95, 3.0, ("surface",)),
    Pigment("bone black", {"Ca": 0.26, "P": 0.12}, (38, 35, 33), (14, 13, 13), 2.0, 0.20, "angular",
            0.030, 0.05, 0.35, 0.30, 1.5, ("surface", "underpaint")),
    # orpiment: micaceous, glittering flakes lying along the brush
    Pigment("orpiment", {"As": 0.50, "S": 0.31}, (222, 172, 44), (255, 226, 120), 8.0, 0.40, "flake",
            0.040, 0.06, 0.20, 0.55, 2.4, ("surface",)),
)

#: pigment names in library order (the label value is the index)
PIGMENT_NAMES: tuple[str, ...] = tuple(p.name for p in PIGMENTS)

#: pigments only the metamer painting uses (label values after the library's)
METAMER_EXTRA: tuple[Pigment, ...] = (
    Pigment("red lead", {"Pb": 0.76}, (182, 48, 34), (226, 84, 60), 1.0, 0.12, "round",
            0.085, 0.04, 0.25, 0.40, 4.0, ("surface",)),
)

#: groups of the metamer painting: one body and particle colour per group, so colour
#: statistics cannot tell the members apart; each member keeps its own microstructure
#: (particle size and shape), the only visible difference
METAMER_GROUPS: dict[str, tuple[tuple[str, ...], tuple[int, int, int], tuple[int, int, int]]] = {
    "red": (("vermilion", "red lead", "red ochre"), (170, 58, 40), (240, 130, 100)),
    "white": (("lead white", "chalk"), (228, 224, 208), (150, 146, 132)),
    "blue": (("azurite", "smalt"), (62, 86, 152), (150, 180, 240)),
}

#: microstructure per metamer member: (particle size px, particle shape); grain, cover,
#: colour variation, streak and relief are shared within a group so that the colour
#: distribution of a tile (mean, spread, percentiles) does not depend on the member
_METAMER_MICRO: dict[str, tuple[float, str]] = {
    "vermilion": (4.0, "round"), "red lead": (4.0, "flake"), "red ochre": (4.0, "shard"),
    "lead white": (4.0, "round"), "chalk": (4.0, "flake"),
    "azurite": (5.0, "round"), "smalt": (5.0, "flake"),
}


@functools.lru_cache(maxsize=1)
def metamer_pigments() -> tuple[Pigment, ...]:
    """The pigment table of the metamer painting (``synthesize_painting(metamers=True)``).

    The library (same label values) plus red lead; within each of
    :data:`METAMER_GROUPS` the members share body colour, particle colour, grain,
    particle cover, colour variation, streak and relief, and differ only in particle
    size and shape, and in composition (vermilion Hg, red lead Pb, red ochre Fe; lead
    white Pb, chalk Ca; azurite Cu, smalt Co/As).
    """
    import dataclasses

    table = list(PIGMENTS) + list(METAMER_EXTRA)
    names = [p.name for p in table]
    for members, rgb, prgb in METAMER_GROUPS.values():
        for m in members:
            i = names.index(m)
            size, shape = _METAMER_MICRO[m]
            roles = tuple(sorted(set(table[i].roles) | {"surface"}))
            table[i] = dataclasses.replace(table[i], rgb=rgb, particle_rgb=prgb, particle_size_px=size,
                                           particle_shape=shape, particle_cover=0.30, grain=0.03,
                                           colour_variation=0.05, streak=0.3, impasto=0.5, roles=roles)
    return tuple(table)


def pigment_index(name: str) -> int:
    """Label value of a pigment, by name (``"vermilion"`` -> 2)."""
    names = PIGMENT_NAMES + tuple(p.name for p in METAMER_EXTRA)
    try:
        return names.index(name)
    except ValueError:
        raise NightwatchError(f"Unknown pigment {name!r}; expected one of {', '.join(names)}.") from None


def library_elements() -> list[str]:
    """Every element of the pigment library, by atomic number."""
    import xraydb

    els = {el for p in PIGMENTS for el in p.composition}
    return sorted(els, key=xraydb.atomic_number)


# ---------------------------------------------------------------------------------- noise
def _oriented_noise(rng: np.random.Generator, shape: tuple[int, int], along: float, across: float,
                    angle: float = 0.0) -> np.ndarray:
    """Gaussian noise low-passed by an oriented Gaussian (std 1, float32).

    ``along``/``across`` are the filter's standard deviations (pixels) along and across
    the direction ``angle`` (radians from the x axis, y down): long thin streaks when
    ``along >> across``, isotropic blobs when equal.
    """
    from scipy import fft as sfft

    white = rng.standard_normal(shape, dtype=np.float32)
    spec = sfft.rfft2(white)
    fy = sfft.fftfreq(shape[0]).astype(np.float32)[:, None]
    fx = sfft.rfftfreq(shape[1]).astype(np.float32)[None, :]
    c, s = np.float32(math.cos(angle)), np.float32(math.sin(angle))
    u = fx * c + fy * s  # frequency along the direction
    v = -fx * s + fy * c
    spec *= np.exp(-2.0 * np.pi**2 * ((u * along) ** 2 + (v * across) ** 2))
    out = sfft.irfft2(spec, s=shape).astype(np.float32)
    out -= out.mean()
    sd = out.std()
    return out / sd if sd > 0 else out


def _warped_voronoi(seeds: np.ndarray, shape: tuple[int, int], warp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Voronoi cells of ``seeds`` in domain-warped coordinates.

    Returns the cell index per pixel and the half-gap ``(d2 - d1) / 2`` between the
    nearest and second-nearest seed, i.e. about the distance to the cell boundary
    (used to draw cracks). Rows are processed in chunks to bound memory.
    """
    h, w = shape
    labels = np.empty(shape, np.int32)
    gap = np.empty(shape, np.float32)
    sy = seeds[:, 0].astype(np.float32)[:, None, None]
    sx = seeds[:, 1].astype(np.float32)[:, None, None]
    xs = np.arange(w, dtype=np.float32)[None, :]
    # about 16 M distances (64 MB) per chunk of rows, whatever the size and seed count
    rows_per_chunk = max(1, int(16e6 // (len(seeds) * w)))
    for r0 in range(0, h, rows_per_chunk):
        r1 = min(h, r0 + rows_per_chunk)
        yy = np.arange(r0, r1, dtype=np.float32)[:, None] + warp[0, r0:r1]
        xx = xs + warp[1, r0:r1]
        d = (yy[None] - sy) ** 2 + (xx[None] - sx) ** 2
        labels[r0:r1] = np.argmin(d, axis=0)
        if len(seeds) > 1:
            two = np.partition(d, 1, axis=0)[:2]
            gap[r0:r1] = 0.5 * (np.sqrt(two[1]) - np.sqrt(two[0]))
        else:
            gap[r0:r1] = np.inf
    return labels, gap


def _jittered_seeds(rng: np.random.Generator, shape: tuple[int, int], n: int, jitter: float = 0.38) -> np.ndarray:
    """About ``n`` seeds on a jittered grid: cells of even size, no slivers."""
    h, w = shape
    gy = max(1, round(math.sqrt(n * h / w)))
    gx = max(1, math.ceil(n / gy))
    cy, cx = h / gy, w / gx
    iy, ix = np.meshgrid(np.arange(gy), np.arange(gx), indexing="ij")
    y = (iy.ravel() + 0.5 + rng.uniform(-jitter, jitter, gy * gx)) * cy
    x = (ix.ravel() + 0.5 + rng.uniform(-jitter, jitter, gy * gx)) * cx
    return np.stack([y, x], axis=1)


def _domain_warp(rng: np.random.Generator, shape: tuple[int, int], large: float, large_amp: float,
                 small_along: float, small_amp: float) -> np.ndarray:
    """(2, H, W) displacement: a large smooth bend plus brush-scale jaggedness."""
    warp = np.empty((2,) + shape, np.float32)
    angle = rng.uniform(0, np.pi)
    for k in range(2):
        warp[k] = large_amp * _oriented_noise(rng, shape, large, large)
        warp[k] += small_amp * _oriented_noise(rng, shape, small_along, small_along / 3.0, angle)
    return warp


# ------------------------------------------------------------------------------ layout
@dataclass
class _Layout:
    surface_cell: np.ndarray  # (H, W) int32 surface region index
    surface_pigment: np.ndarray  # (n_regions,) pigment index per region
    surface_angle: np.ndarray  # (n_regions,) brush angle per region (radians)
    surface_thickness: np.ndarray  # (n_regions,) nominal layer thickness
    under_label: np.ndarray  # (H, W) uint8 pigment index or NO_PIGMENT
    ground_pigment: int


def _neighbours(cells: np.ndarray, n: int) -> list[set[int]]:
    """Which cells touch which (4-connectivity)."""
    nb: list[set[int]] = [set() for _ in range(n)]
    for a, b in ((cells[1:], cells[:-1]), (cells[:, 1:], cells[:, :-1])):
        diff = a != b
        pairs = np.unique(np.stack([a[diff], b[diff]], axis=1), axis=0)
        for i, j in pairs:
            nb[int(i)].add(int(j))
            nb[int(j)].add(int(i))
    return nb


def _assign_pigments(rng: np.random.Generator, cells: np.ndarray, n: int, pool: list[int]) -> np.ndarray:
    """Greedy colouring: each region takes the least-used pool pigment its neighbours lack.

    Keeps neighbouring regions distinct (a boundary is always a pigment change) and
    spreads the pool evenly, so every pigment appears as soon as there are enough regions.
    """
    nb = _neighbours(cells, n)
    used = dict.fromkeys(pool, 0)
    out = np.full(n, -1, np.int64)
    # non-empty cells first (a domain warp can swallow a cell), so the first len(pool)
    # visible regions take distinct pigments
    sizes = np.bincount(cells.ravel(), minlength=n)
    perm = rng.permutation(n)
    order = np.concatenate([perm[sizes[perm] > 0], perm[sizes[perm] == 0]])
    tiebreak = {p: rng.random() for p in pool}
    for r in order:
        taken = {int(out[j]) for j in nb[r] if out[j] >= 0}
        cand = [p for p in pool if p not in taken] or list(pool)
        p = min(cand, key=lambda q: (used[q], tiebreak[q]))
        out[r] = p
        used[p] += 1
    return out


def _layout(rng: np.random.Generator, size: int, ground: str, pigments: tuple[Pigment, ...] = PIGMENTS,
            metamers: bool = False) -> _Layout:
    shape = (size, size)
    area = (size / 1024.0) ** 2
    # the metamer painting also paints its ground pigment on the surface (lead white
    # beside chalk of the same colour), and each pigment in about two places
    surface_pool = [i for i, p in enumerate(pigments) if "surface" in p.roles and (metamers or p.name != ground)]
    # ~14 regions at 1024 px (~1.4 mm each): 64 px tiles mostly fall inside one pigment;
    # never fewer than the pool, so every surface pigment is painted at any size
    n_regions = int(np.clip(round(14 * area), (2 if metamers else 1) * len(surface_pool), 400))
    seeds = _jittered_seeds(rng, shape, n_regions)
    warp = _domain_warp(rng, shape, large=size / 7.0, large_amp=size / 14.0, small_along=24.0, small_amp=4.5)
    cells, _ = _warped_voronoi(seeds, shape, warp)
    n = len(seeds)
    pig = _assign_pigments(rng, cells, n, surface_pool)
    angle = rng.uniform(0, np.pi, n)
    thick = rng.uniform(0.7, 1.3, n)

    # underpaint: fewer, larger patches, a third left bare (surface directly on the ground)
    n_under = int(np.clip(round(6 * area), 3, 200))
    useeds = _jittered_seeds(rng, shape, n_under, jitter=0.45)
    uwarp = _domain_warp(rng, shape, large=size / 5.0, large_amp=size / 10.0, small_along=14.0, small_amp=4.0)
    ucells, _ = _warped_voronoi(useeds, shape, uwarp)
    under_pool = [i for i, p in enumerate(pigments) if "underpaint" in p.roles and p.name != ground]
    upig = rng.choice(under_pool, size=len(useeds))
    bare = rng.random(len(useeds)) < 0.33
    bare[0], bare[-1] = True, False  # always some of each case
    upig = np.where(bare, NO_PIGMENT, upig).astype(np.uint8)
    return _Layout(cells, pig, angle, thick, upig[ucells], pigment_index(ground))


# ----------------------------------------------------------------------------- textures
def _particle_kernels(rng: np.random.Generator, pig: Pigment, angle: float) -> list[np.ndarray]:
    """Particle shapes of the pigment's kind from 0.6x to 1.6x its size, varied orientations."""
    from skimage.draw import ellipse, polygon

    out = []
    factors = (0.6, 1.0, 1.6) if pig.particle_shape == "round" else (0.6, 0.8, 1.0, 1.0, 1.3, 1.6)
    for f in factors:
        d = max(1.0, pig.particle_size_px * f)
        r = d / 2.0
        half = int(math.ceil(r * (2.2 if pig.particle_shape in ("shard", "flake") else 1.2))) + 1
        k = np.zeros((2 * half + 1, 2 * half + 1), np.float32)
        c = float(half)
        if pig.particle_shape == "round" or d < 2.5:
            yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
            k = np.clip(r + 0.5 - np.hypot(yy, xx), 0, 1).astype(np.float32)
        elif pig.particle_shape == "angular":
            nv = int(rng.integers(4, 7))
            t = np.sort(rng.uniform(0, 2 * np.pi, nv))
            rad = r * rng.uniform(0.7, 1.15, nv)
            rr, cc = polygon(c + rad * np.sin(t), c + rad * np.cos(t), k.shape)
            k[rr, cc] = 1.0
        else:  # shard / flake: elongated, shards at random angles, flakes along the brush
            a = rng.uniform(0, np.pi) if pig.particle_shape == "shard" else angle + rng.normal(0, 0.2)
            rr, cc = ellipse(c, c, max(r * 0.45, 0.8), r * 2.0, k.shape, rotation=-a)
            k[rr, cc] = 1.0
            if pig.particle_shape == "shard":  # a broken end: cut one side straight
                yy, xx = np.mgrid[-half : half + 1, -half : half + 1]
                k[(xx * math.cos(a) + yy * math.sin(a)) > r * rng.uniform(0.9, 1.6)] = 0.0
        out.append(k)
    return out


def _particles(rng: np.random.Generator, pig: Pigment, shape: tuple[int, int], angle: float) -> np.ndarray:
    """Particle field in [0, 1]: random impulses convolved with particle shapes.

    Rendering a particle by convolution costs one FFT per shape instead of a Python
    loop over thousands of particles. The convolution is circular (scipy.fft, not
    scipy.signal, whose import alone costs seconds): impulses are uniform, so a particle
    wrapping to the far edge is just another particle.
    """
    from scipy import fft as sfft

    h, w = shape
    kernels = _particle_kernels(rng, pig, angle)
    spec = np.zeros((h, w // 2 + 1), np.complex64)
    for k in kernels:
        n = int(pig.particle_cover * h * w / max(k.sum(), 1.0) / len(kernels))
        if n == 0:
            continue
        imp = np.zeros(shape, np.float32)
        ys = rng.integers(0, h, n)
        xs = rng.integers(0, w, n)
        np.add.at(imp, (ys, xs), rng.uniform(0.6, 1.0, n).astype(np.float32))
        # kernel centred on pixel (0, 0) so the particles stay where their impulses are
        kp = np.zeros(shape, np.float32)
        kh, kw = min(k.shape[0], h), min(k.shape[1], w)
        kp[:kh, :kw] = k[:kh, :kw]
        kp = np.roll(kp, (-(k.shape[0] // 2), -(k.shape[1] // 2)), axis=(0, 1))
        spec += sfft.rfft2(imp) * sfft.rfft2(kp)
    field = sfft.irfft2(spec, s=shape).astype(np.float32)
    return np.clip(field, 0.0, 1.0)


@dataclass
class _Surface:
    rgb: np.ndarray  # (H, W, 3) float32 0-1, before shading/cracks/varnish
    height: np.ndarray  # (H, W) float32 relief
    thickness: np.ndarray  # (H, W) float32 surface layer thickness (for the XRF)


def _paint_surface(rng: np.random.Generator, lay: _Layout, size: int,
                   progress: ProgressCallback | None, table: tuple[Pigment, ...] = PIGMENTS) -> _Surface:
    shape = (size, size)
    cells = lay.surface_cell
    # brush directions quantised to 12 so each streak field is computed once and shared
    qangle = np.round(lay.surface_angle / (np.pi / 12)).astype(int) % 12
    ribbon = np.zeros(shape, np.float32)  # stroke ribbons (a brush load wide)
    bristle = np.zeros(shape, np.float32)  # bristle marks inside a stroke
    for q in np.unique(qangle):
        a = q * np.pi / 12
        sel = np.isin(cells, np.flatnonzero(qangle == q))
        ribbon[sel] = _oriented_noise(rng, shape, 60.0, 5.0, a)[sel]
        bristle[sel] = _oriented_noise(rng, shape, 22.0, 0.9, a)[sel]
    low = _oriented_noise(rng, shape, 40.0, 40.0)  # uneven mixing
    hue = _oriented_noise(rng, shape, 70.0, 70.0)
    grain = rng.standard_normal(shape, dtype=np.float32)
    from scipy.ndimage import gaussian_filter

    grain = gaussian_filter(grain, 0.6)
    grain /= grain.std()

    rgb = np.zeros(shape + (3,), np.float32)
    height = np.zeros(shape, np.float32)
    thickness = np.zeros(shape, np.float32)
    pigments = np.unique(lay.surface_pigment)
    for done, p in enumerate(pigments):
        pig = table[int(p)]
        regions = np.flatnonzero(lay.surface_pigment == p)
        mask = np.isin(cells, regions)
        ys, xs = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
        pad = int(pig.particle_size_px * 3) + 4
        y0, y1 = max(0, ys[0] - pad), min(size, ys[-1] + 1 + pad)
        x0, x1 = max(0, xs[0] - pad), min(size, xs[-1] + 1 + pad)
        box = (slice(y0, y1), slice(x0, x1))
        m = mask[box]
        part = _particles(rng, pig, (y1 - y0, x1 - x0), float(lay.surface_angle[regions[0]]))
        stroke = 0.65 * ribbon[box] + 0.35 * bristle[box]
        light = 1.0 + pig.colour_variation * low[box] + 0.12 * pig.streak * stroke + pig.grain * grain[box]
        base = np.asarray(pig.rgb, np.float32) / 255.0
        # a slight shift of hue along the low-frequency field: real mixing is never uniform
        shift = np.asarray([0.04, -0.01, -0.04], np.float32) * pig.colour_variation * 4
        col = base[None, None] * light[..., None] + shift[None, None] * hue[box][..., None]
        prt = np.asarray(pig.particle_rgb, np.float32) / 255.0
        pv = part[..., None] * (0.85 + 0.3 * grain[box][..., None] * pig.colour_variation * 3)
        col = col * (1.0 - part[..., None]) + prt[None, None] * pv
        rgb[box][m] = col[m]
        relief = pig.impasto * (0.8 * ribbon[box] + 0.35 * bristle[box]) + 0.6 * pig.impasto * part
        height[box][m] = relief[m]
        region_thick = lay.surface_thickness[cells[box]]
        # thicker paint where the relief is high: the XRF of a surface pigment follows impasto
        thickness[box][m] = (region_thick * np.clip(1.0 + 0.25 * relief, 0.3, None))[m]
        report(progress, done + 1, len(pigments), "painting")
    # wet-in-wet: neighbouring strokes drag into each other over a few pixels
    from scipy.ndimage import binary_dilation

    edge = np.zeros(shape, bool)
    edge[1:] |= cells[1:] != cells[:-1]
    edge[:, 1:] |= cells[:, 1:] != cells[:, :-1]
    edge = binary_dilation(edge, iterations=2)
    soft = gaussian_filter(rgb, (1.3, 1.3, 0.0))
    rgb[edge] = soft[edge]
    return _Surface(np.clip(rgb, 0, 1), height, thickness)


def _finish_photograph(rng: np.random.Generator, surf: _Surface, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Craquelure, raking-light shading, varnish, optics: the uint8 photograph and crack mask."""
    from scipy.ndimage import gaussian_filter

    shape = (size, size)
    # craquelure islands of ~1-2 mm (200-400 px); the network is the cells' boundaries
    n_cells = int(np.clip(round(22 * (size / 1024.0) ** 2), 4, 800))
    seeds = _jittered_seeds(rng, shape, n_cells, jitter=0.45)
    warp = _domain_warp(rng, shape, large=size / 10.0, large_amp=size / 25.0, small_along=12.0, small_amp=1.5)
    _, gap = _warped_voronoi(seeds, shape, warp)
    width = np.clip(1.3 + 0.8 * _oriented_noise(rng, shape, 30.0, 30.0), 0.0, None)
    crack = np.clip(width - gap, 0.0, 1.0)
    # islands cup upwards at their edges
    height = surf.height + 1.2 * np.exp(-gap / 12.0) - 2.0 * crack
    height = gaussian_filter(height, 1.0)
    gy, gx = np.gradient(height)
    shade = 1.0 + 0.22 * (-(gy * 0.6 + gx * 0.8))  # light from the upper left
    rgb = surf.rgb * np.clip(shade, 0.5, 1.5)[..., None]
    # gloss of the varnish on ridges facing the light
    spec = np.clip(shade - 1.12, 0.0, None) ** 1.5 * 1.5
    rgb = rgb + spec[..., None] * np.asarray([0.9, 0.88, 0.8], np.float32)
    crack_rgb = np.asarray([0.16, 0.12, 0.08], np.float32)
    rgb = rgb * (1.0 - crack[..., None]) + crack_rgb * crack[..., None]
    # yellowed varnish, thicker in places
    varnish = np.clip(0.75 + 0.15 * _oriented_noise(rng, shape, 120.0, 120.0), 0.4, 1.0)[..., None]
    tint = np.asarray([1.0, 0.91, 0.70], np.float32)
    rgb = rgb * (1.0 - varnish * (1.0 - tint)) + varnish * 0.03 * np.asarray([0.6, 0.5, 0.3], np.float32)
    # microscope optics and sensor
    rgb = gaussian_filter(rgb, (0.6, 0.6, 0.0))
    rgb += rng.normal(0.0, 0.006, rgb.shape).astype(np.float32)
    img = np.clip(np.round(rgb * 255.0), 0, 255).astype(np.uint8)
    return img, crack > 0.5


# ---------------------------------------------------------------------------------- XRF
@dataclass(frozen=True)
class _XrfPhysics:
    elements: list[str]
    families: list[Any]  # LineFamily, one row of the template matrix each
    family_element: np.ndarray  # (F,) element index of each family
    sensitivity: np.ndarray  # (F,) counts per unit concentration, relative
    mu: np.ndarray  # (P, E) attenuation of element E's main line per unit thickness of pigment P


def _excitation_spectrum() -> tuple[np.ndarray, np.ndarray]:
    """Energies (keV) and weights of the exciting beam of a 50 kV Rh tube."""
    e = np.arange(3.0, EXCITATION_KEV, 1.0)
    brems = (EXCITATION_KEV - e) / e * np.exp(-((3.0 / e) ** 3))
    brems = brems / brems.sum() * 0.65
    return np.concatenate([e, [20.216, 22.724]]), np.concatenate([brems, [0.29, 0.06]])


def _mu_elam(element: str, energies_kev, kind: str = "total") -> np.ndarray:
    """xraydb mass attenuation (cm^2/g), one vectorised call per element."""
    import xraydb

    return np.atleast_1d(np.asarray(xraydb.mu_elam(element, np.asarray(energies_kev, float) * 1000.0, kind=kind)))


def _family_sensitivity(fam) -> float:
    """Relative counts per unit concentration of one line family.

    Photo-absorption of the tube spectrum in the family's shells (jump-ratio rule),
    fluorescence yield, then air (1 cm) and Be window (12 um) transmission and Si
    (450 um) detection efficiency at the main line. Written here rather than taken
    from the XRF engine because the engine's fitter must not know it.
    """
    import xraydb

    shells = {"K": ("K",), "L": ("L1", "L2", "L3"), "M": ("M1", "M2", "M3", "M4", "M5")}[fam.family]
    edges = xraydb.xray_edges(fam.element)
    e_exc, w_exc = _excitation_spectrum()
    taus = _mu_elam(fam.element, e_exc, kind="photo")
    total = 0.0
    for e, w, tau in zip(e_exc, w_exc, taus, strict=True):
        passing = 1.0
        # shells deeper than the family (K for an L family) take their share first
        for deeper in ("K", "L1", "L2", "L3")[: {"K": 0, "L": 1, "M": 4}[fam.family]]:
            if deeper in edges and edges[deeper].energy / 1000.0 < e:
                passing /= max(float(edges[deeper].jump_ratio), 1.0 + 1e-6)
        for s in shells:
            if s in edges and edges[s].energy / 1000.0 < e:
                j = max(float(edges[s].jump_ratio), 1.0 + 1e-6)
                total += w * tau * passing * (j - 1.0) / j * max(float(edges[s].fyield), 1e-4)
                passing /= j
    el = fam.main_energy_kev * 1000.0
    air = math.exp(-float(xraydb.material_mu("air", el, density=0.0012)) * 1.0)
    be = math.exp(-float(xraydb.material_mu("Be", el, density=1.85)) * 12e-4)
    si = 1.0 - math.exp(-float(xraydb.material_mu("Si", el, density=2.33)) * 450e-4)
    return total * air * be * si


@functools.lru_cache(maxsize=4)
def _xrf_physics_cached(elements: tuple[str, ...], metamers: bool = False) -> _XrfPhysics:
    return _xrf_physics(list(elements), metamer_pigments() if metamers else PIGMENTS)


def _xrf_physics(elements: list[str], pigments: tuple[Pigment, ...] = PIGMENTS) -> _XrfPhysics:
    import xraydb

    from .xrf.lines import line_families

    fams = line_families(elements, excitation_kev=EXCITATION_KEV, min_kev=_MIN_LINE_KEV,
                         max_kev=float(CALIBRATION.energies(N_CHANNELS)[-1]) - 0.5)
    fam_el = np.asarray([elements.index(f.element) for f in fams])
    sens = np.asarray([_family_sensitivity(f) for f in fams])
    # normalise so that Fe-K (a typical mid-range line) has sensitivity 1
    ref = next((f for f in fams if f.name == "Fe-K"), None)
    sens = sens / (_family_sensitivity(ref) if ref is not None else sens.max())
    # light elements are barely seen in air; keep them above the fitter's noise floor so
    # the test bed can still check S, P, K and Si, as an M6 under helium flush would see them
    sens = np.maximum(sens, 0.08)
    # attenuation of each element's main line (the strongest of its families) in each pigment,
    # per unit layer thickness (~30 um of paint at the pigment's layer density)
    main_e = np.zeros(len(elements))
    for i in range(len(elements)):
        fi = [k for k in range(len(fams)) if fam_el[k] == i]
        best = max(fi, key=lambda k: sens[k])
        main_e[i] = fams[best].main_energy_kev
    mu = np.zeros((len(pigments), len(elements)))
    thick_cm = 30e-4
    el_mu = {el: _mu_elam(el, main_e) for el in elements}
    # binder and the pigment's light elements: an oil-like C/H/O matrix
    oil_mu = np.asarray(xraydb.material_mu("C18H32O2", main_e * 1000.0, density=1.0), float)
    for p, pig in enumerate(pigments):
        w_light = max(0.0, 1.0 - sum(pig.composition.values()))
        mass_mu = sum(w * el_mu[el] for el, w in pig.composition.items()) + w_light * oil_mu
        mu[p] = mass_mu * pig.density * thick_cm
    # keep deep layers visible at least faintly (a scanner integrates a finite depth; the
    # painting's lowest layer must stay detectable for the "hidden ground" case)
    mu = np.minimum(mu, 2.0)
    return _XrfPhysics(list(elements), fams, fam_el, sens, mu)


def _layer_concentrations(lay: _Layout, surf: _Surface, phys: _XrfPhysics, rng: np.random.Generator,
                          size: int, pigments: tuple[Pigment, ...] = PIGMENTS) -> tuple[np.ndarray, np.ndarray]:
    """(E, H, W) effective concentrations seen by the XRF, all layers and surface only.

    Effective concentration = weight fraction x layer thickness x transmission of the
    element's main line through the layers above. Energy-independent per element, so
    every family of an element scales with this one number and the model stays linear.
    """
    shape = (size, size)
    n_el = len(phys.elements)
    comp = np.zeros((len(pigments) + 1, n_el), np.float32)  # last row: no pigment
    for p, pig in enumerate(pigments):
        for el, w in pig.composition.items():
            comp[p, phys.elements.index(el)] = w
    mu = np.concatenate([phys.mu, np.zeros((1, n_el))]).astype(np.float32)
    s_lab = lay.surface_pigment[lay.surface_cell].astype(np.int64)
    u_lab = lay.under_label.astype(np.int64)
    u_lab = np.where(u_lab == NO_PIGMENT, len(pigments), u_lab)
    t_s = surf.thickness
    t_u = 0.8 * (1.0 + 0.12 * _oriented_noise(rng, shape, 50.0, 50.0))
    t_g = 1.6 * (1.0 + 0.08 * _oriented_noise(rng, shape, 80.0, 80.0))
    total = np.empty((n_el,) + shape, np.float32)
    surface = np.empty((n_el,) + shape, np.float32)
    g = lay.ground_pigment
    for i in range(n_el):
        a_s = mu[s_lab, i] * t_s
        a_u = mu[u_lab, i] * t_u
        surface[i] = comp[s_lab, i] * t_s
        total[i] = surface[i] + comp[u_lab, i] * t_u * np.exp(-a_s) + comp[g, i] * t_g * np.exp(-(a_s + a_u))
    return total, surface


def _sample_on_xrf_grid(maps: np.ndarray, affine: np.ndarray, n: int, footprint: int) -> np.ndarray:
    """Mean of each (C, H, W) map over the XRF beam footprint at the affine's pixel centres."""
    from scipy.ndimage import map_coordinates, uniform_filter

    iy, ix = np.meshgrid(np.arange(n, dtype=np.float64), np.arange(n, dtype=np.float64), indexing="ij")
    pts = np.stack([iy.ravel(), ix.ravel(), np.ones(n * n)])
    my, mx = (affine @ pts)[:2]
    out = np.empty((maps.shape[0], n, n), np.float32)
    for c in range(maps.shape[0]):
        box = uniform_filter(maps[c].astype(np.float32), size=footprint, mode="nearest")
        out[c] = map_coordinates(box, [my, mx], order=1, mode="nearest").reshape(n, n)
    return out


def _affines(rng: np.random.Generator, xrf_pixel: int) -> tuple[np.ndarray, np.ndarray, dict]:
    """Nominal (scale only) and true (small rotation + translation) XRF -> mosaic affines."""
    r = float(xrf_pixel)
    t = (r - 1.0) / 2.0  # XRF pixel centre over the centre of its r x r mosaic block
    nominal = np.array([[r, 0.0, t], [0.0, r, t], [0.0, 0.0, 1.0]])
    angle = rng.choice([-1.0, 1.0]) * rng.uniform(0.2, 0.4)
    shift = rng.choice([-1.0, 1.0], 2) * rng.uniform(2.0, 6.0, 2)
    a = np.deg2rad(angle)
    rot = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    move = np.array([[1.0, 0.0, shift[0]], [0.0, 1.0, shift[1]], [0.0, 0.0, 1.0]])
    true = move @ rot @ nominal
    return nominal, true, {"rotation_deg": float(angle), "translation_px": [float(v) for v in shift]}


def _simulate_cube(conc_xrf: np.ndarray, phys: _XrfPhysics, rng: np.random.Generator) -> tuple[np.ndarray, dict]:
    """Poisson counts (y, x, E) from the concentrations through the XRF forward model."""
    from .xrf.model import Detector, continuum, family_template, scatter_templates

    det = Detector()
    energies = CALIBRATION.energies(N_CHANNELS)
    templates = np.stack([family_template(f, energies, det) for f in phys.families])  # (F, E)
    scat = scatter_templates(energies, det)  # Rayleigh Ka, Kb, Compton Ka, Kb
    cont = continuum(energies, EXCITATION_KEV)
    n_el, ny, nx = conc_xrf.shape
    c = conc_xrf.reshape(n_el, -1).T.astype(np.float64)  # (N, E_el)
    amp = COUNTS_SCALE * c[:, phys.family_element] * phys.sensitivity[None, :]  # (N, F) counts per family
    # scatter follows the matrix: light (organic, chalk) paint scatters more, Compton most
    heavy = np.clip(conc_xrf.sum(axis=0).reshape(-1), 0.0, None)
    light = 1.0 / (1.0 + 1.5 * heavy)
    rayleigh = COUNTS_SCALE * 0.05 * (0.6 + 0.4 * light)
    compton = COUNTS_SCALE * 0.12 * light
    scat_amp = np.stack([rayleigh, 0.18 * rayleigh, compton, 0.18 * compton], axis=1)
    cont_amp = COUNTS_SCALE * 0.25 * (0.5 + 0.5 * light)
    counts = np.empty((ny * nx, N_CHANNELS), np.uint32)
    step = 4096  # pixels per block: the float64 expectation stays at 32 MB
    for i0 in range(0, ny * nx, step):
        sl = slice(i0, i0 + step)
        expected = amp[sl] @ templates + scat_amp[sl] @ scat + cont_amp[sl, None] * cont[None, :]
        counts[sl] = rng.poisson(expected)
    dtype = np.uint16 if counts.max() < 65535 else np.uint32
    info = {
        "family_names": [f.name for f in phys.families],
        "family_sensitivity": {f.name: float(s) for f, s in zip(phys.families, phys.sensitivity, strict=True)},
        "family_counts_mean": {f.name: float(amp[:, k].mean()) for k, f in enumerate(phys.families)},
        "scatter_counts_mean": float(scat_amp.sum(axis=1).mean()),
        "continuum_counts_mean": float(cont_amp.mean()),
        "detector": {"fwhm_mn_ka_ev": det.fwhm_mn_ka_ev, "fano": det.fano, "escape": det.escape},
    }
    return counts.reshape(ny, nx, N_CHANNELS).astype(dtype), info


# ----------------------------------------------------------------------------- public
@dataclass
class GroundTruth:
    """What the synthetic painting is made of (see :func:`load_ground_truth`).

    Attributes
    ----------
    labels
        (3, H, W) uint8 pigment index per layer at mosaic resolution (0 ground,
        1 underpaint, 2 surface); :data:`NO_PIGMENT` (255) where a layer is absent.
    cracks
        (H, W) bool craquelure mask at mosaic resolution (dark crack lines in the photograph).
    surface_labels_xrf
        (h, w) uint8 majority surface pigment under each XRF pixel's footprint.
    surface_purity_xrf
        (h, w) float32 fraction of the footprint covered by that majority pigment.
    concentrations
        (n_elements, h, w) float32 effective concentration of each element on the XRF
        grid (all layers, attenuated): what a fitter should recover, up to a per-family
        scale ``counts_scale * family_sensitivity`` (see :meth:`family_counts`). Every
        ``*_xrf`` array and these maps are indexed like the cube's pixels, i.e. sampled
        through ``true_affine``, not the nominal affine the store records.
    surface_concentrations
        Same, from the surface layer alone (what the photograph can show).
    elements
        Element symbols, in the order of the first axis of ``concentrations``.
    families
        Line family names simulated in the cube (``"Pb-L"``, ...).
    family_sensitivity
        Family name -> relative counts per unit concentration.
    pigments
        Library table: one dict per pigment index (name, composition, rgb, ...).
    true_affine, nominal_affine
        3x3 XRF pixel (y, x, 1) -> level-0 mosaic pixel: what the cube was sampled
        through, and what the store records until registration.
    calibration
        Energy calibration of the cube.
    counts_scale
        Counts per unit concentration and unit sensitivity.
    ground_pigment
        Name of the ground layer's pigment (under everything, never in the photograph).
    hidden_elements
        Elements whose XRF signal comes mostly (over half of it) from below the surface,
        e.g. the lead of a lead white ground: the photograph carries little evidence of them.
    seed, size, xrf_pixel
        How the painting was made.
    """

    labels: np.ndarray
    cracks: np.ndarray
    surface_labels_xrf: np.ndarray
    surface_purity_xrf: np.ndarray
    concentrations: np.ndarray
    surface_concentrations: np.ndarray
    elements: list[str]
    families: list[str]
    family_sensitivity: dict[str, float]
    pigments: list[dict]
    true_affine: np.ndarray
    nominal_affine: np.ndarray
    calibration: EnergyCalibration
    counts_scale: float
    ground_pigment: str
    hidden_elements: list[str]
    seed: int
    size: int
    xrf_pixel: int
    extra: dict = field(default_factory=dict)

    @property
    def surface_labels(self) -> np.ndarray:
        """(H, W) surface pigment index at mosaic resolution."""
        return self.labels[2]

    @property
    def surface_pigments(self) -> list[str]:
        """Names of the pigments painted on the surface."""
        return [self.pigments[int(i)]["name"] for i in np.unique(self.labels[2]) if i != NO_PIGMENT]

    @property
    def ground_elements(self) -> list[str]:
        """Elements of the ground layer's pigment (present in the XRF everywhere)."""
        return self.pigment_elements(self.ground_pigment)

    def concentration(self, element: str, surface_only: bool = False) -> np.ndarray:
        """(h, w) concentration map of one element (``"Pb"``) on the XRF grid.

        ``surface_only`` gives the part from the surface layer, what the photograph shows.
        """
        if element not in self.elements:
            raise NightwatchError(f"Element {element!r} is not in the synthetic painting; it has {self.elements}.")
        src = self.surface_concentrations if surface_only else self.concentrations
        return src[self.elements.index(element)]

    def family_counts(self, family: str) -> np.ndarray:
        """(h, w) expected counts (before Poisson noise) that one line family put into each
        XRF spectrum: ``counts_scale * concentration * family_sensitivity``; what a fitter's
        amplitude for that family should come to."""
        if family not in self.family_sensitivity:
            raise NightwatchError(f"Line family {family!r} was not simulated; the cube has {self.families}.")
        el = family.split("-")[0]
        return (self.counts_scale * self.family_sensitivity[family] * self.concentration(el)).astype(np.float32)

    def hidden_fraction(self, element: str) -> np.ndarray:
        """(h, w) share of an element's XRF signal that comes from below the surface (0-1)."""
        total = self.concentration(element)
        below = total - self.concentration(element, surface_only=True)
        return np.divide(below, total, out=np.zeros_like(total), where=total > 0)

    def pigment_elements(self, name: str) -> list[str]:
        """Elements of one pigment."""
        return list(self.pigments[pigment_index(name)]["composition"])

    def pure_xrf_pixels(self, pigment: int, min_purity: float = 0.99) -> tuple[np.ndarray, np.ndarray]:
        """XRF pixels (y, x) of one surface pigment whose whole 3x3 neighbourhood is that pigment.

        Spectrum queries from these pixels, or from the 3x3 region around them, ask for
        that pigment alone; pixels on the outer two rows/columns are left out so the
        region stays inside the scan.
        """
        sl, sp = self.surface_labels_xrf, self.surface_purity_xrf
        ny, nx = sl.shape
        pure = (sl == pigment) & (sp >= 0.9)
        core = np.zeros_like(pure)
        core[1:-1, 1:-1] = np.all(
            [pure[1 + dy : ny - 1 + dy, 1 + dx : nx - 1 + dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)], axis=0
        )
        yy, xx = np.nonzero(core & (sp >= min_purity))
        ok = (yy > 0) & (xx > 0) & (yy < ny - 2) & (xx < nx - 2)
        return yy[ok], xx[ok]

    def tile_labels(self, boxes: np.ndarray, layer: int = 2) -> tuple[np.ndarray, np.ndarray]:
        """Majority pigment and its area fraction for each ``(y0, x0, y1, x1)`` level-0 box.

        Parameters
        ----------
        boxes
            (N, 4) integer boxes in level-0 mosaic pixels (e.g. ``TileGrid.boxes()``).
        layer
            0 ground, 1 underpaint, 2 surface.

        Returns
        -------
        labels, purity
            (N,) uint8 majority pigment index and (N,) float fraction of the box it covers.
        """
        lab = self.labels[layer]
        b = np.asarray(boxes, dtype=np.int64).reshape(-1, 4)
        out = np.empty(len(b), np.uint8)
        pur = np.empty(len(b), np.float64)
        for k, (y0, x0, y1, x1) in enumerate(b):
            counts = np.bincount(lab[max(y0, 0) : y1, max(x0, 0) : x1].ravel(), minlength=256)
            out[k] = int(np.argmax(counts))
            pur[k] = counts[out[k]] / max(counts.sum(), 1)
        return out, pur


def synthesize_painting(
    out: str | Path,
    *,
    size: int = 1024,
    seed: int = 0,
    overwrite: bool = False,
    xrf_pixel: int = 8,
    ground: str = "lead white",
    metamers: bool = False,
    progress: ProgressCallback | None = None,
):
    """Build the synthetic painting store: photograph, MA-XRF cube and ground truth.

    Parameters
    ----------
    out
        Store path (``NAME.nightwatch.zarr``).
    size
        Mosaic edge in pixels at 5 um (a ``size x size`` detail); at least ``16 * xrf_pixel``.
    seed
        Random seed: the same seed gives the same bytes.
    overwrite
        Replace an existing store at ``out``.
    xrf_pixel
        MA-XRF pixel in mosaic pixels (8 -> 40 um); the cube is ``size // xrf_pixel``
        pixels square with 1024 channels over 0-40 keV.
    ground
        Pigment of the ground layer (``"lead white"`` or ``"chalk"``): under everything,
        hidden from the photograph, present in the XRF.
    metamers
        Paint the metamer painting instead (:func:`metamer_pigments`): vermilion, red
        lead and red ochre share one colour, lead white and chalk another, azurite and
        smalt a third; only their microstructure (particle size and shape) tells them
        apart, so colour alone cannot predict their elements. The default painting is
        unchanged by this option's existence.
    progress
        ``progress(done, total, stage)``; may raise
        :class:`~napari_nightwatch.core.errors.Cancelled` (the store is then left
        without its incomplete parts).

    Returns
    -------
    PaintingStore
        The store, open for writing, with ``mosaic``, ``xrf`` and ``ground_truth`` complete.

    Raises
    ------
    NightwatchError
        For a size or XRF pixel out of range, an unknown ground, or an existing ``out``
        without ``overwrite``.
    """
    from .store import PaintingStore

    size, seed, xrf_pixel = int(size), int(seed), int(xrf_pixel)
    if not 2 <= xrf_pixel <= 64:
        raise NightwatchError(f"xrf_pixel={xrf_pixel} must be between 2 and 64 mosaic pixels.")
    if not 16 * xrf_pixel <= size <= MAX_SIZE:
        raise NightwatchError(
            f"size={size} must be between {16 * xrf_pixel} (16 XRF pixels of {xrf_pixel} px) and {MAX_SIZE} mosaic pixels."
        )
    if seed < 0:
        raise NightwatchError(f"seed={seed} must be a non-negative integer.")
    if ground not in ("lead white", "chalk"):
        raise NightwatchError(f"ground={ground!r} must be 'lead white' or 'chalk'.")
    out = Path(out)
    if out.exists() and not overwrite:  # say so before a minute of work, not after
        raise NightwatchError(f"{out} already exists; pass overwrite=True (--overwrite) to replace it.")
    t0 = time.perf_counter()
    # independent streams per stage: changing one stage does not reshuffle the others
    r_layout, r_paint, r_photo, r_xrf, r_affine, r_noise = (
        np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(6)
    )
    report(progress, 0, 1, "layout")
    pigments = metamer_pigments() if metamers else PIGMENTS
    lay = _layout(r_layout, size, ground, pigments, metamers)
    surf = _paint_surface(r_paint, lay, size, progress, pigments)
    img, cracks = _finish_photograph(r_photo, surf, size)
    report(progress, 1, 1, "photograph")

    elements = library_elements()
    phys = _xrf_physics_cached(tuple(elements), bool(metamers))
    conc, conc_surface = _layer_concentrations(lay, surf, phys, r_xrf, size, pigments)
    nominal, true, offset = _affines(r_affine, xrf_pixel)
    n = size // xrf_pixel
    conc_xrf = _sample_on_xrf_grid(conc, true, n, xrf_pixel)
    conc_surface_xrf = _sample_on_xrf_grid(conc_surface, true, n, xrf_pixel)
    s_lab = lay.surface_pigment[lay.surface_cell].astype(np.uint8)
    present = np.unique(s_lab)
    frac = _sample_on_xrf_grid((s_lab[None] == present[:, None, None]).astype(np.float32), true, n, xrf_pixel)
    surface_labels_xrf = present[np.argmax(frac, axis=0)].astype(np.uint8)
    surface_purity_xrf = frac.max(axis=0).astype(np.float32)
    cube, cube_info = _simulate_cube(conc_xrf, phys, r_noise)
    report(progress, 1, 1, "spectra")

    labels = np.stack([np.full((size, size), lay.ground_pigment, np.uint8), lay.under_label, s_lab])
    # "hidden": most of the element's XRF signal comes from below the surface (the photograph
    # carries little evidence of it), e.g. the lead of a lead white ground
    below = (conc_xrf - conc_surface_xrf).sum(axis=(1, 2))
    hidden = [el for i, el in enumerate(elements) if below[i] > 0.5 * max(conc_xrf[i].sum(), 1e-12)]
    tile = min(size, 1024)
    arrays = {  # name: (data, dimension names, chunks)
        "labels": (labels, ("layer", "y", "x"), (1, tile, tile)),
        "cracks": (cracks.astype(np.uint8), ("y", "x"), (tile, tile)),
        "surface_labels_xrf": (surface_labels_xrf, ("y", "x"), None),
        "surface_purity_xrf": (surface_purity_xrf, ("y", "x"), None),
        "concentrations": (conc_xrf, ("element", "y", "x"), None),
        "surface_concentrations": (conc_surface_xrf, ("element", "y", "x"), None),
    }
    attrs = {
        "pigments": [p.to_dict() for p in pigments],
        "layers": list(LAYERS),
        "no_pigment": NO_PIGMENT,
        "elements": elements,
        "families": cube_info["family_names"],
        "family_sensitivity": cube_info["family_sensitivity"],
        "family_counts_mean": cube_info["family_counts_mean"],
        "true_affine": true.tolist(),
        "nominal_affine": nominal.tolist(),
        "affine_offset": offset,
        "calibration": CALIBRATION.to_dict(),
        "counts_scale": COUNTS_SCALE,
        "excitation_kev": EXCITATION_KEV,
        "detector": cube_info["detector"],
        "ground_pigment": ground,
        "hidden_elements": hidden,
        "seed": seed,
        "size": size,
        "xrf_pixel": xrf_pixel,
    }
    if metamers:  # only then: the default painting's attributes stay as they were
        attrs["metamers"] = True
    source = f"synthetic:seed={seed},size={size},xrf_pixel={xrf_pixel}" + (",metamers" if metamers else "")

    store = PaintingStore.create(out, name=out.name.removesuffix(".nightwatch.zarr") or "synthetic",
                                 overwrite=overwrite)
    try:
        _write_store(store, img, cube, nominal, arrays, attrs, source, progress)
        store.mark_complete("ground_truth", source=source, seconds=round(time.perf_counter() - t0, 2))
    except BaseException:
        # a cancelled or failed synthesis leaves no store that could pass for a painting
        shutil.rmtree(out, ignore_errors=True)
        raise
    return store


def _write_store(store, img: np.ndarray, cube: np.ndarray, nominal: np.ndarray, arrays: dict, attrs: dict,
                 source: str, progress: ProgressCallback | None) -> None:
    """Photograph and cube through the IO writers, then the ground truth arrays."""
    from .store.sources import write_mosaic_array, write_xrf_cube

    write_mosaic_array(store, img, pixel_size_um=MOSAIC_PIXEL_UM, source=source, progress=progress)
    write_xrf_cube(store, cube, calibration=CALIBRATION, pixel_size_um=MOSAIC_PIXEL_UM * attrs["xrf_pixel"],
                   source=source, affine=nominal, progress=progress, excitation_kev=EXCITATION_KEV, tube="Rh",
                   live_time_s=0.01)
    g = store.group("ground_truth", create=True)
    for name, (data, dims, chunks) in arrays.items():
        kw = {"chunks": chunks} if chunks is not None else {}
        g.create_array(name, data=data, dimension_names=dims, **kw)
    g.attrs["nightwatch"] = json.loads(json.dumps(attrs))


def load_ground_truth(store) -> GroundTruth:
    """The ground truth of a synthetic painting store.

    Parameters
    ----------
    store
        A :class:`~napari_nightwatch.store.PaintingStore` or a path to one.

    Raises
    ------
    NightwatchError
        When the store holds no complete ``ground_truth`` (it is not a synthetic painting).
    """
    from .store import PaintingStore

    if not isinstance(store, PaintingStore):
        store = PaintingStore.open(store)
    if not store.is_complete("ground_truth"):
        raise NightwatchError(f"{store.path} has no ground truth; only `nightwatch synth` paintings have one.")
    g = store.group("ground_truth")
    a = dict(g.attrs["nightwatch"])
    return GroundTruth(
        labels=np.asarray(g["labels"][...]),
        cracks=np.asarray(g["cracks"][...]).astype(bool),
        surface_labels_xrf=np.asarray(g["surface_labels_xrf"][...]),
        surface_purity_xrf=np.asarray(g["surface_purity_xrf"][...]),
        concentrations=np.asarray(g["concentrations"][...]),
        surface_concentrations=np.asarray(g["surface_concentrations"][...]),
        elements=list(a["elements"]),
        families=list(a["families"]),
        family_sensitivity=dict(a["family_sensitivity"]),
        pigments=list(a["pigments"]),
        true_affine=np.asarray(a["true_affine"], np.float64),
        nominal_affine=np.asarray(a["nominal_affine"], np.float64),
        calibration=EnergyCalibration.from_dict(a["calibration"]),
        counts_scale=float(a["counts_scale"]),
        ground_pigment=str(a["ground_pigment"]),
        hidden_elements=list(a["hidden_elements"]),
        seed=int(a["seed"]),
        size=int(a["size"]),
        xrf_pixel=int(a["xrf_pixel"]),
        extra={k: a[k] for k in ("affine_offset", "family_counts_mean", "detector", "excitation_kev") if k in a},
    )
