"""Registration of the MA-XRF scan onto the visible-light mosaic.

Two steps, both producing the store's XRF->mosaic affine (3x3, XRF pixel
``(y, x, 1)`` -> level-0 mosaic pixel):

1. :func:`fit_control_points` - an affine or similarity transform (scikit-image)
   from pairs of points picked on both images, with the residual in micrometres.
2. :func:`refine_affine` - optional automatic refinement that maximises how well
   the mosaic's colour, resampled at the XRF pixel centres through the affine,
   explains the XRF images (total counts, element maps or energy bands).

The agreement measure is the coefficient of determination R^2 of each XRF image
regressed on a quadratic polynomial of the mosaic's RGB.  Pigments map colours to
elements non-linearly and with either sign (vermilion is red *and* Hg-rich, lead
white is light *and* Pb-rich), so a plain correlation with luminance is a weak
signal; a small polynomial regression captures both without learning anything
that could overfit a misregistration.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.geometry import apply_affine, as_affine
from ..core.progress import ProgressCallback, report

CONTROL_POINT_COLUMNS = ("xrf_y", "xrf_x", "mosaic_y", "mosaic_x")


@dataclass
class RegistrationResult:
    """An XRF->mosaic affine and how well it fits.

    Attributes
    ----------
    affine
        3x3 matrix, XRF pixel ``(y, x, 1)`` -> level-0 mosaic pixel.
    method
        "control-points", "auto" or "control-points+auto".
    kind
        "affine" or "similarity".
    residuals_px
        Per control point distance (level-0 mosaic pixels) between the mapped XRF
        point and its mosaic partner; empty without control points.
    pixel_size_um
        Mosaic pixel size used to express residuals in micrometres.
    score
        Image agreement (mean R^2) after automatic refinement, else None.
    """

    affine: np.ndarray
    method: str
    kind: str
    residuals_px: np.ndarray = field(default_factory=lambda: np.zeros(0))
    pixel_size_um: float = 1.0
    score: float | None = None
    score_before: float | None = None

    @property
    def rms_px(self) -> float | None:
        r = self.residuals_px
        return float(np.sqrt(np.mean(r**2))) if r.size else None

    @property
    def max_px(self) -> float | None:
        r = self.residuals_px
        return float(r.max()) if r.size else None

    @property
    def rms_um(self) -> float | None:
        return None if self.rms_px is None else self.rms_px * self.pixel_size_um

    @property
    def max_um(self) -> float | None:
        return None if self.max_px is None else self.max_px * self.pixel_size_um

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (affine, residual RMS/max in pixels and micrometres)."""
        return {
            "affine": np.asarray(self.affine).tolist(),
            "method": self.method,
            "kind": self.kind,
            "n_points": int(self.residuals_px.size),
            "residual_rms_px": self.rms_px,
            "residual_max_px": self.max_px,
            "residual_rms_um": self.rms_um,
            "residual_max_um": self.max_um,
            "score_before": self.score_before,
            "score": self.score,
        }


# ------------------------------------------------------------------------- control points
def read_control_points(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read control points from a CSV with header ``xrf_y,xrf_x,mosaic_y,mosaic_x``.

    Parameters
    ----------
    path
        CSV file; XRF coordinates in XRF pixels, mosaic coordinates in level-0
        mosaic pixels.

    Returns
    -------
    xrf_yx, mosaic_yx
        Two ``(N, 2)`` float arrays.
    """
    path = Path(path)
    if not path.is_file():
        raise NightwatchError(f"Control point file {path} does not exist.")
    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        header = [h.strip() for h in (reader.fieldnames or [])]
        missing = [c for c in CONTROL_POINT_COLUMNS if c not in header]
        if missing:
            raise NightwatchError(
                f"Control point file {path} lacks column(s) {', '.join(missing)}; expected the header "
                f"{','.join(CONTROL_POINT_COLUMNS)}."
            )
        rows = []
        for i, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k is not None}
            try:
                rows.append([float(row[c]) for c in CONTROL_POINT_COLUMNS])
            except (TypeError, ValueError) as exc:
                raise NightwatchError(f"Control point file {path}, line {i}: expected four numbers ({exc}).") from exc
    arr = np.asarray(rows, dtype=np.float64).reshape(-1, 4)
    return arr[:, :2], arr[:, 2:]


def fit_control_points(
    xrf_yx: np.ndarray,
    mosaic_yx: np.ndarray,
    *,
    kind: str = "affine",
    pixel_size_um: float = 1.0,
) -> RegistrationResult:
    """Fit the XRF->mosaic transform to control point pairs.

    Parameters
    ----------
    xrf_yx
        ``(N, 2)`` points in XRF pixels (y, x), e.g. from a napari Points layer
        drawn on the XRF image (data coordinates).
    mosaic_yx
        ``(N, 2)`` partner points in level-0 mosaic pixels.
    kind
        "affine" (6 parameters) or "similarity" (rotation, one scale, shift).
    pixel_size_um
        Mosaic pixel size, to express residuals in micrometres.

    Returns
    -------
    RegistrationResult
        The affine and per-point residuals (RMS and max in pixels and micrometres).
    """
    from skimage.transform import AffineTransform, SimilarityTransform

    src = np.asarray(xrf_yx, dtype=np.float64)
    dst = np.asarray(mosaic_yx, dtype=np.float64)
    if src.ndim != 2 or src.shape[-1] != 2 or dst.shape != src.shape:
        raise NightwatchError(
            f"Control points must be two (N, 2) arrays of equal length; got {src.shape} and {dst.shape}."
        )
    if not (np.isfinite(src).all() and np.isfinite(dst).all()):
        raise NightwatchError("Control points contain NaN or infinite coordinates.")
    if len(src) < 3:
        raise NightwatchError(
            f"Registration needs at least 3 control point pairs that are not on one line; got {len(src)}."
        )
    for name, pts in (("XRF", src), ("mosaic", dst)):
        if _collinear(pts):
            raise NightwatchError(
                f"The {name} control points lie (nearly) on one line, which leaves the transform undefined; "
                "add a point away from that line."
            )
    if kind not in ("affine", "similarity"):
        raise NightwatchError(f"Registration kind {kind!r} is not known; expected 'affine' or 'similarity'.")
    cls = AffineTransform if kind == "affine" else SimilarityTransform
    # (y, x) order throughout: an affine/similarity estimated on swapped axes is still
    # one, and its matrix then acts directly on (y, x, 1) as the store expects.
    tform = cls.from_estimate(src, dst)
    if not tform:
        raise NightwatchError("The control points do not determine a transform (estimation failed).")
    affine = as_affine(tform.params)
    resid = np.linalg.norm(apply_affine(affine, src) - dst, axis=1)
    return RegistrationResult(affine, "control-points", kind, resid, float(pixel_size_um))


def _collinear(pts: np.ndarray, rel_tol: float = 1e-3) -> bool:
    """Whether points are (nearly) on a line: the smaller principal spread is tiny."""
    c = pts - pts.mean(axis=0)
    s = np.linalg.svd(c, compute_uv=False)
    return bool(s[0] == 0 or s[-1] / s[0] < rel_tol)


# -------------------------------------------------------------------------- automatic refinement
def _colour_design(rgb: np.ndarray) -> np.ndarray:
    """Quadratic polynomial of standardised RGB: the regressors of the agreement score."""
    z = (rgb - rgb.mean(0)) / (rgb.std(0) + 1e-6)
    cols = [np.ones(len(z))]
    n = z.shape[1]
    for i in range(n):
        cols.append(z[:, i])
    for i in range(n):
        for j in range(i, n):
            cols.append(z[:, i] * z[:, j])
    return np.stack(cols, axis=1)


class _AgreementScore:
    """Mean R^2 of XRF images explained by mosaic colour sampled through an affine.

    ``mosaic`` is one pyramid level, already smoothed to the XRF footprint, as float
    ``(h, w, c)``; ``scale`` converts level-0 pixels to that level's pixels.
    """

    def __init__(
        self, xrf_images: np.ndarray, mosaic: np.ndarray, scale: float, margin: int = 1, max_pixels: int = 20000
    ) -> None:
        self.xrf = np.asarray(xrf_images, dtype=np.float64)  # (k, ny, nx)
        k, ny, nx = self.xrf.shape
        # a regular subsample bounds the cost of one evaluation on large scans; the
        # score is an average, so 20000 pixels estimate it to well under 1 %
        step = max(1, int(np.ceil(np.sqrt((ny - 2 * margin) * (nx - 2 * margin) / max_pixels))))
        yy, xx = np.mgrid[margin : ny - margin : step, margin : nx - margin : step]
        self.yx = np.stack([yy.ravel(), xx.ravel()], 1).astype(np.float64)
        vals = self.xrf[:, yy, xx].reshape(k, -1).T
        ok = np.isfinite(vals).all(1)
        self.yx, vals = self.yx[ok], vals[ok]
        self.targets = (vals - vals.mean(0)) / (vals.std(0) + 1e-12)
        self.mosaic = mosaic
        self.scale = scale

    def __call__(self, affine: np.ndarray) -> float:
        from scipy.ndimage import map_coordinates

        pts = apply_affine(affine, self.yx) * self.scale
        h, w = self.mosaic.shape[:2]
        inside = (pts[:, 0] >= 0) & (pts[:, 0] <= h - 1) & (pts[:, 1] >= 0) & (pts[:, 1] <= w - 1)
        # a transform that pushes most of the scan off the painting cannot win by
        # fitting a handful of pixels well
        if inside.mean() < 0.5:
            return 0.0
        # every XRF pixel is scored (edge pixels sample the nearest mosaic pixel): a
        # score over the inside pixels only would reward shrinking the scan inwards
        rgb = np.stack(
            [map_coordinates(self.mosaic[..., c], pts.T, order=1, mode="nearest") for c in range(self.mosaic.shape[2])], 1
        )
        X = _colour_design(rgb)
        Y = self.targets
        Y = Y - Y.mean(0)
        # normal equations on a 10 x 10 system: explained sum of squares = XtY . coef;
        # far cheaper than lstsq, and the tiny ridge keeps a flat colour patch solvable
        xtx = X.T @ X
        xty = X.T @ Y
        coef = np.linalg.solve(xtx + 1e-6 * np.trace(xtx) / len(xtx) * np.eye(len(xtx)), xty)
        r2 = (xty * coef).sum(0) / ((Y**2).sum(0) + 1e-12)
        return float(np.mean(r2))


#: free parameters of the automatic refinement per model
REFINE_MODELS = {"rigid": 3, "similarity": 4, "affine": 6}


def _param_affine(p: np.ndarray, a0: np.ndarray, centre: np.ndarray, half: float) -> np.ndarray:
    """``A0 @ T(p)``: T is a small transform in XRF pixels about the scan centre.

    p = (ty, tx[, rot[, scale[, shear_a, shear_b]]]): shifts in XRF pixels; rotation,
    scale and shear deltas scaled so that one unit moves the scan's edge by about one
    XRF pixel - the optimiser then sees well-conditioned parameters.
    """
    p = np.concatenate([np.asarray(p, float), np.zeros(6 - len(p))])
    rot, scale, sa, sb = p[2] / half, p[3] / half, p[4] / half, p[5] / half
    c, s = np.cos(rot), np.sin(rot)
    m = (1.0 + scale) * np.array([[c, -s], [s, c]]) + np.array([[sa, sb], [sb, -sa]])
    t = np.eye(3)
    t[:2, :2] = m
    t[:2, 2] = centre - m @ centre + p[:2]
    return a0 @ t


def xrf_images_for_registration(store, element: str | None = None, n_bands: int = 24) -> tuple[np.ndarray, list[str]]:
    """The XRF images that registration matches against the mosaic.

    Parameters
    ----------
    store
        An open :class:`~napari_nightwatch.store.PaintingStore` with XRF data.
    element
        Use only this element map (name as in the fitted or imported maps).
    n_bands
        Without element maps, the cube is summarised as this many energy bands
        (fraction of each pixel's counts in the band) plus total counts.

    Returns
    -------
    images, names
        ``(k, ny, nx)`` float array and a name per image.
    """
    from .pairing import load_element_intensity_maps

    names, maps = load_element_intensity_maps(store, required=False)
    if element is not None:
        if names is None or element not in names:
            raise NightwatchError(
                f"Element map {element!r} is not in the store; available: {', '.join(names or []) or 'none'}."
            )
        i = names.index(element)
        return maps[i : i + 1].astype(np.float64), [element]
    if names is not None:
        keep = [i for i in range(len(names)) if np.nanstd(maps[i]) > 0]
        return maps[keep].astype(np.float64), [names[i] for i in keep]
    cube = store.xrf_cube()
    n_e = cube.shape[-1]
    edges = np.linspace(0, n_e, n_bands + 1).astype(int)
    total = cube.sum(-1).astype(np.float64)
    bands = [cube[..., a:b].sum(-1).astype(np.float64) / (total + 1e-9) for a, b in zip(edges[:-1], edges[1:], strict=True)]
    import dask

    out = dask.compute(total, *bands)
    return np.stack(out, 0), ["total"] + [f"band{i}" for i in range(n_bands)]


def refine_affine(
    xrf_images: np.ndarray,
    mosaic_levels: list,
    downsamples: list[int],
    initial_affine: np.ndarray,
    *,
    search_px: float = 6.0,
    model: str = "rigid",
    progress: ProgressCallback | None = None,
) -> tuple[np.ndarray, float, float]:
    """Refine an XRF->mosaic affine by maximising image agreement.

    Parameters
    ----------
    xrf_images
        ``(k, ny, nx)`` XRF images (element maps, total counts, energy bands).
    mosaic_levels
        The mosaic pyramid (arrays ``(y, x, c)``, finest first; dask is fine).
    downsamples
        Level-0 pixels per pixel of each level.
    initial_affine
        Starting XRF->mosaic affine (nominal placement or control points).
    search_px
        Half-width of the exhaustive translation search, in XRF pixels, before the
        local optimisation.
    model
        Free parameters of the local optimisation: "rigid" (shift and rotation: a
        scanner's step size is known, and the agreement score is too flat in scale
        to pin it down better than the stage does), "similarity" (+ scale) or
        "affine" (+ shear).
    progress
        Optional ``progress(done, total, stage)`` callback.

    Returns
    -------
    affine, score_before, score_after
        The refined affine and the agreement (mean R^2) before and after.
    """
    from scipy.ndimage import uniform_filter
    from scipy.optimize import minimize

    a0 = as_affine(initial_affine)
    if model not in REFINE_MODELS:
        raise NightwatchError(f"Refinement model {model!r} is not known; expected one of {', '.join(REFINE_MODELS)}.")
    xrf = np.asarray(xrf_images, dtype=np.float64)
    if xrf.ndim == 2:
        xrf = xrf[None]
    ny, nx = xrf.shape[1:]
    if ny < 8 or nx < 8:
        raise NightwatchError(f"The XRF images ({ny} x {nx} px) are too small to register automatically.")
    # one XRF pixel spans this many level-0 mosaic pixels
    foot = float(np.sqrt(abs(np.linalg.det(a0[:2, :2]))))
    # the coarsest level that still samples an XRF pixel with >= ~2 mosaic pixels
    lev = 0
    for i, d in enumerate(downsamples):
        if foot / d >= 2.0:
            lev = i
    d = float(downsamples[lev])
    mosaic = np.asarray(mosaic_levels[lev], dtype=np.float32)
    if mosaic.ndim == 2:
        mosaic = mosaic[..., None]
    # the XRF beam integrates over the pixel footprint: box-average the mosaic alike
    size = max(1, int(round(foot / d)))
    mosaic = np.stack([uniform_filter(mosaic[..., c], size) for c in range(mosaic.shape[2])], -1)
    score = _AgreementScore(xrf, mosaic, 1.0 / d)
    centre = np.array([(ny - 1) / 2, (nx - 1) / 2])
    half = float(max(ny, nx)) / 2

    before = score(a0)
    # exhaustive shift search first: the agreement landscape has local maxima one
    # pattern period away, so a local optimiser alone can lock onto the wrong one
    steps = np.arange(-search_px, search_px + 1e-9, 1.0)
    n_par = REFINE_MODELS[model]
    best, best_p = -np.inf, np.zeros(n_par)
    total = len(steps) ** 2 + 1
    for i, ty in enumerate(steps):
        for tx in steps:
            p = np.zeros(n_par)
            p[:2] = ty, tx
            s = score(_param_affine(p, a0, centre, half))
            if s > best:
                best, best_p = s, p
        report(progress, (i + 1) * len(steps), total, "registration: shift search")

    def loss(p: np.ndarray) -> float:
        return -score(_param_affine(p, a0, centre, half))

    res = minimize(loss, best_p, method="Powell", options={"xtol": 1e-3, "ftol": 1e-7, "maxfev": 3000})
    p = res.x if -res.fun >= best else best_p
    affine = _param_affine(p, a0, centre, half)
    report(progress, total, total, "registration: refine")
    return affine, float(before), float(score(affine))


# -------------------------------------------------------------------------------- store-level API
def register_store(
    store,
    *,
    points: str | Path | tuple[np.ndarray, np.ndarray] | None = None,
    auto: bool = False,
    kind: str = "affine",
    element: str | None = None,
    search_px: float = 6.0,
    refine_model: str = "rigid",
    progress: ProgressCallback | None = None,
) -> RegistrationResult:
    """Register a store's XRF data onto its mosaic and save the affine.

    Parameters
    ----------
    store
        A :class:`~napari_nightwatch.store.PaintingStore` opened "r+" with a
        mosaic and XRF data (cube or imported element maps).
    points
        Control points: a CSV path (header ``xrf_y,xrf_x,mosaic_y,mosaic_x``) or a
        pair of ``(N, 2)`` arrays (XRF px, level-0 mosaic px).
    auto
        Refine automatically by image agreement (starting from the control-point
        fit, or from the store's current affine).
    kind
        "affine" or "similarity" for the control-point fit.
    element
        Element map to match in the automatic refinement (default: all maps, or
        energy bands of the cube).
    search_px
        Translation search half-width for the automatic refinement (XRF pixels).
    refine_model
        "rigid", "similarity" or "affine" for the automatic refinement.
    progress
        Optional progress callback.

    Returns
    -------
    RegistrationResult
        Also written to the store (``xrf`` attrs "affine" and "registration").
    """
    if points is None and not auto:
        raise NightwatchError("Give control points (--points FILE) or ask for automatic registration (--auto).")
    store.require_writable()
    if not store.has_mosaic:
        raise NightwatchError(f"{store.path} has no mosaic to register the XRF data onto.")
    info = store.xrf_info  # raises a clear sentence without XRF
    pix = store.mosaic_pixel_size_um
    if points is not None:
        src_name = str(points) if isinstance(points, (str, Path)) else "arrays"
        xrf_yx, mos_yx = read_control_points(points) if isinstance(points, (str, Path)) else points
        result = fit_control_points(xrf_yx, mos_yx, kind=kind, pixel_size_um=pix)
        ny, nx = info["shape"][:2]
        corners = apply_affine(result.affine, np.array([[0, 0], [0, nx - 1], [ny - 1, 0], [ny - 1, nx - 1]], float))
        h, w = store.mosaic_shape
        if (corners[:, 0].max() < 0 or corners[:, 0].min() > h or corners[:, 1].max() < 0 or corners[:, 1].min() > w):
            raise NightwatchError(
                f"The control points place the whole XRF scan outside the {h} x {w} px mosaic; "
                "check that the XRF and mosaic columns are not swapped."
            )
    else:
        src_name = None
        result = RegistrationResult(store.xrf_affine, "stored", kind, pixel_size_um=pix)
    if auto:
        images, names = xrf_images_for_registration(store, element=element)
        affine, before, after = refine_affine(
            images, store.mosaic_levels(), store.mosaic_downsamples, result.affine, search_px=search_px,
            model=refine_model, progress=progress,
        )
        resid = result.residuals_px
        if resid.size:
            xrf_yx, mos_yx = read_control_points(points) if isinstance(points, (str, Path)) else points
            resid = np.linalg.norm(apply_affine(affine, np.asarray(xrf_yx, float)) - np.asarray(mos_yx, float), axis=1)
        method = "control-points+auto" if points is not None else "auto"
        result = RegistrationResult(affine, method, kind, resid, pix, after, before)
        made = {"images": names, "score_before": before, "score": after, "refine_model": refine_model}
    else:
        made = {}
    store.set_xrf_affine(
        result.affine,
        method=result.method,
        kind=result.kind,
        points=src_name,
        n_points=int(result.residuals_px.size),
        residual_rms_um=result.rms_um,
        residual_max_um=result.max_um,
        **made,
    )
    return result
