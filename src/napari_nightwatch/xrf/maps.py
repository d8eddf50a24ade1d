"""Element maps of a painting store: identify, calibrate, fit every pixel, write.

:func:`fit_store` reads ``xrf/cube`` chunk by chunk and writes ``xrf_maps/``::

    xrf_maps/                 NGFF 0.5 image (c, y, x), one named channel per family
      0                       (c, y, x) float32 fitted counts per family
      uncertainty             (c, y, x) float32 standard uncertainty (counts)
      chi2                    (y, x) float32 reduced chi-square
      done                    (gy, gx) bool: which cube chunks are finished (resume)
    attrs["nightwatch"]       elements, calibration used and its residual (eV),
                              identification, detector, timings, spectra per second

Memory stays bounded by a few cube chunks whatever the cube size; a killed run
resumes at the first unfinished chunk when the fit model is unchanged.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.progress import ProgressCallback, StageTimer, report
from ..core.spectra import EnergyCalibration
from ..store.painting import writes
from .analysis import analyse_spectrum
from .calibration import CalibrationResult, estimate_detector, refine_calibration
from .fit import build_fit_model, fit_block
from .lines import get_family, parse_families
from .model import RH_K_KEV, Detector

MAPS_PART = "xrf_maps"

#: display colours of common families: napari colormap name and the NGFF (omero) hex colour
_COLORMAPS = {
    "red": "FF0000", "green": "00FF00", "blue": "0000FF", "cyan": "00FFFF", "magenta": "FF00FF",
    "yellow": "FFFF00", "gray": "FFFFFF", "bop orange": "FF8000", "bop purple": "B000FF", "bop blue": "0080FF",
}
_BY_ELEMENT = {
    "Pb": "gray", "Hg": "red", "Fe": "yellow", "Cu": "green", "Ca": "cyan", "As": "magenta", "Zn": "blue",
    "Ti": "bop blue", "Ba": "bop orange", "K": "bop purple", "Mn": "magenta", "Co": "blue", "S": "yellow",
    "Cr": "green", "Sb": "bop orange", "Sn": "gray",
}
_CYCLE = ["red", "green", "blue", "magenta", "cyan", "yellow", "bop orange", "bop purple"]


def family_colormap(name: str, index: int = 0) -> str:
    """A napari colormap name for an element family (``"Pb-L"`` -> ``"gray"``)."""
    return _BY_ELEMENT.get(name.split("-")[0], _CYCLE[index % len(_CYCLE)])


def family_color_hex(name: str, index: int = 0) -> str:
    """The same colour as an NGFF/omero hex string (``"FFFFFF"``)."""
    return _COLORMAPS[family_colormap(name, index)]


def _cube_sum(cube) -> tuple[np.ndarray, int]:
    """Sum spectrum over finite, non-negative pixels, and how many there are."""
    import dask.array as da

    with np.errstate(invalid="ignore"):
        ok = (cube >= 0).all(axis=2)
    s = da.where(ok[..., None], cube, 0).sum(axis=(0, 1), dtype=np.float64)
    s, n = da.compute(s, ok.sum())
    return np.asarray(s), int(n)


@writes(MAPS_PART, "nightwatch xrf-maps")
def fit_store(
    store,
    elements: str | Sequence[str] = "auto",
    *,
    detector: Detector | None = None,
    background: str = "basis",
    calibration: EnergyCalibration | None = None,
    refine: bool = True,
    workers: int = 2,
    overwrite: bool = False,
    row_shift: str | float | None = None,
    block: tuple[int, int] | None = None,
    pileup: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    excitation_kev: float | None = None,
    tube_kev: float | Sequence[float] | None = RH_K_KEV,
    progress: ProgressCallback | None = None,
) -> dict[str, Any]:
    """Fit element maps for the MA-XRF cube of a painting store and write ``xrf_maps/``.

    Parameters
    ----------
    store
        A :class:`~napari_nightwatch.store.PaintingStore` opened writable.
    elements
        ``"auto"`` (identify from the sum and max spectra) or family names like
        ``["Pb-L", "Hg-L"]`` / ``"Pb-L,Hg-L"``.
    detector
        Peak model; default: measured from the sum spectrum.
    background
        ``"basis"`` (fitted smooth background terms) or ``"snip"`` (per-pixel SNIP).
    calibration
        Energy calibration to use instead of the store's (e.g. given by the user);
        refined from it when ``refine``.
    refine
        Refine the energy calibration, the peak width and each family's line-group
        ratios on the sum spectrum (:mod:`~napari_nightwatch.xrf.refine`) before the
        per-pixel fit (the store's own calibration is not changed; what was used is
        recorded with the maps and in the summary's ``refinement``).
    workers
        Threads fitting chunks side by side (numpy releases the GIL).
    overwrite
        Refit even where finished maps with the same model exist.
    row_shift
        Odd/even-row shift correction of bidirectional scans: ``None`` (off),
        ``"auto"`` (estimated from the total-counts image) or a shift in XRF pixels.
        Applied to the fitted maps (the fit is linear, so this equals correcting the
        cube first, at a fraction of the cost).
    pileup
        Fit sum (pile-up) peaks of the strongest families as nuisance terms.
    include, exclude
        Families always fitted (``"Pb-L"``) / families or elements never proposed (``"Ar"``).
    excitation_kev
        Tube voltage (keV) instead of the store's (e.g. from a PyMca configuration).
    tube_kev
        Tube line energies (keV) fitted as Rayleigh/Compton scatter peaks (default Rh
        K-alpha1 and K-beta1; add K-alpha2, 20.074 keV, when the scatter is strong).
    block
        Pixels ``(rows, cols)`` fitted and written at a time (default: whole storage
        chunks of the cube, about 8 M values); memory is a few blocks whatever the
        cube size.
    progress
        ``progress(done, total, stage)``; may raise Cancelled (finished chunks are kept).

    Returns
    -------
    dict
        Summary: elements, calibration used, calibration residual (eV), time,
        spectra per second, and the identification when ``elements == "auto"``.
    """
    store.require_writable()
    requested_shift = _check_row_shift(row_shift)  # before any work: a bad value never costs a whole fit
    timer = StageTimer()
    t_start = time.perf_counter()
    info = store.xrf_info
    cube = store.xrf_cube()
    ny, nx, ne = (int(v) for v in cube.shape)
    calib: EnergyCalibration = store.xrf_calibration if calibration is None else calibration
    excitation = float(excitation_kev or info.get("excitation_kev") or 50.0)
    with timer.stage("summaries"):
        sum_spec = store.xrf_sum_spectrum() if store.has("xrf/sum_spectrum") else None
        n_valid = ny * nx
        if sum_spec is None or not np.isfinite(sum_spec).all() or (sum_spec < 0).any():
            sum_spec, n_valid = _cube_sum(cube)
        max_spec = store.xrf_max_spectrum() if store.has("xrf/max_spectrum") else None
        if max_spec is not None and (not np.isfinite(max_spec).all() or (max_spec < 0).any()):
            max_spec = None
    if n_valid == 0:
        raise NightwatchError(f"The MA-XRF cube of {store.path} has no pixel with valid (finite, non-negative) counts.")
    if float(sum_spec.sum()) <= 0:
        raise NightwatchError(f"The MA-XRF cube of {store.path} has zero counts in every pixel; there is nothing to fit.")
    energies = calib.energies(ne)
    refinement = None
    with timer.stage("identify"):
        det = detector or estimate_detector(energies, sum_spec)
        identification: list[dict] = []
        auto = isinstance(elements, str) and elements.strip().lower() == "auto"
        given = None if auto else parse_families(elements, excitation)
        if auto or refine:
            # identification and the sum-spectrum refinement (calibration, peak width, each
            # family's line-group ratios) that the per-pixel linear fit then uses
            analysis = analyse_spectrum(
                energies, sum_spec, max_spectrum=max_spec if auto else None,
                pixel_spectra=_sample_spectra(store) if auto else None, detector=det, calibration=calib,
                excitation_kev=excitation, tube_kev=tube_kev, families=given, include=include, exclude=exclude,
                refine_ratios=refine,
            )
            identification = [r.to_dict() for r in analysis.identifications if r.confidence > 0.05]
            if not analysis.families:
                raise NightwatchError(
                    f"No element was identified in the sum spectrum of {store.path}; give --elements explicitly."
                )
            refinement = analysis.refinement if refine else None
            if refinement is not None:
                families = list(refinement.families)
                det = refinement.detector
            else:
                families = [get_family(f.name, excitation) for f in analysis.families]
        else:
            families = list(given)
    with timer.stage("calibrate"):
        cal_result = CalibrationResult(calib, False)
        if refinement is not None and refinement.calibration is not None:
            calib = refinement.calibration
            cal_result = CalibrationResult(calib, True)
        if refine:
            # residuals of the strong isolated peaks on the refined axis, for the record
            # (and a last correction when the line-shape refinement left a shift)
            check = refine_calibration(calib, sum_spec, families, detector=det, tube_kev=tube_kev)
            if check.refined and abs(check.shift_ev) <= 10 * calib.gain_kev * 1000:
                cal_result = check
        used = cal_result.calibration
        energies = used.energies(ne)
    model = build_fit_model(
        energies, families, detector=det, mean_spectrum=sum_spec / n_valid, excitation_kev=excitation,
        background=background, pileup=pileup, tube_kev=tube_kev,
    )
    names = model.family_names
    signature = {
        "families": names,
        "calibration": used.to_dict(),
        "detector": model.describe()["detector"],
        "background": background,
        "tube_kev": None if tube_kev is None else [float(t) for t in np.atleast_1d(tube_kev)],
        "terms": list(model.term_names),
        "cube_shape": [ny, nx, ne],
        "xrf_source": info.get("source"),
        "line_ratios": None if refinement is None else refinement.to_dict()["group_scales"],
    }
    zcube = store.root["xrf/cube"]
    if block is None:
        # whole storage chunks, grouped up to ~8 M values per block: few, larger map chunks
        # and less per-block overhead, while memory stays a few tens of MB per worker
        zy, zx = int(zcube.chunks[0]), int(zcube.chunks[1])
        m = max(1, int(math.sqrt(8e6 / (zy * zx * ne))))
        cy, cx = min(zy * m, ny), min(zx * m, nx)
    else:
        cy, cx = int(block[0]), int(block[1])
    if cy < 1 or cx < 1:
        raise NightwatchError(f"block={block} must be two positive numbers of pixels.")
    signature["block"] = [cy, cx]
    gy, gx = math.ceil(ny / cy), math.ceil(nx / cx)
    group, done = _prepare_output(store, names, (ny, nx), (cy, cx), (gy, gx), signature, overwrite)
    # the row-shift correction rewrites finished maps in place: a resumed run must not apply it twice,
    # and a run asking for another correction refits from the raw fit
    applied = group.attrs.get("row_shift_applied")
    if applied is not None and (applied.get("requested") != requested_shift or not done.all()):
        done[:] = False
        del group.attrs["row_shift_applied"]
        applied = None
    todo = [(iy, ix) for iy in range(gy) for ix in range(gx) if not done[iy, ix]]
    total = gy * gx
    n_done = total - len(todo)
    report(progress, n_done, total, "fit element maps")
    maps_arr, unc_arr, chi_arr, done_arr = group["0"], group["uncertainty"], group["chi2"], group["done"]
    nf = len(names)
    lock = threading.Lock()
    counter = {"n": n_done, "pixels": 0, "fit_s": 0.0, "read_s": 0.0, "write_s": 0.0}

    def work(item: tuple[int, int]) -> None:
        iy, ix = item
        y0, y1 = iy * cy, min((iy + 1) * cy, ny)
        x0, x1 = ix * cx, min((ix + 1) * cx, nx)
        t0 = time.perf_counter()
        block = np.asarray(zcube[y0:y1, x0:x1, :])
        t1 = time.perf_counter()
        out = fit_block(block, model)
        t2 = time.perf_counter()
        maps_arr[:, y0:y1, x0:x1] = np.moveaxis(out[..., :nf], -1, 0)
        unc_arr[:, y0:y1, x0:x1] = np.moveaxis(out[..., nf : 2 * nf], -1, 0)
        chi_arr[y0:y1, x0:x1] = out[..., -1]
        t3 = time.perf_counter()
        with lock:
            done_arr[iy, ix] = True
            counter["n"] += 1
            counter["pixels"] += (y1 - y0) * (x1 - x0)
            counter["read_s"] += t1 - t0
            counter["fit_s"] += t2 - t1
            counter["write_s"] += t3 - t2
            report(progress, counter["n"], total, "fit element maps")

    t_fit = time.perf_counter()
    if workers <= 1 or len(todo) <= 1:
        for item in todo:
            work(item)
    else:
        with ThreadPoolExecutor(max_workers=int(workers)) as pool:
            # consume in order so that an exception (or Cancelled) surfaces promptly
            for _ in pool.map(work, todo):
                pass
    fit_wall = time.perf_counter() - t_fit
    timer.add("fit_wall", fit_wall)
    timer.add("read_cpu", counter["read_s"])
    timer.add("fit_cpu", counter["fit_s"])
    timer.add("write_cpu", counter["write_s"])
    applied_shift = None
    if applied is not None:
        applied_shift = applied["shift"]  # applied before an interruption: the maps are corrected already
    elif row_shift is not None:
        with timer.stage("row_shift"):
            applied_shift = _apply_row_shift(store, group, row_shift)
        group.attrs["row_shift_applied"] = {"requested": requested_shift, "shift": applied_shift}
    with timer.stage("contrast"):
        step = max(1, int(math.sqrt(ny * nx / 250_000)))
        sample = np.asarray(maps_arr[:, ::step, ::step])
        limits = []
        for c in range(nf):
            v = sample[c][np.isfinite(sample[c])]
            hi = float(np.percentile(v, 99.5)) if v.size else 1.0
            limits.append((0.0, hi if hi > 0 else 1.0))
    from ..io.ngff import write_image_metadata

    px = float(info.get("pixel_size_um") or 1.0)
    write_image_metadata(
        group, "cyx", [[1.0, px, px]], name="element maps", channel_names=names,
        channel_colors=[family_color_hex(n, i) for i, n in enumerate(names)], contrast_limits=limits,
    )
    n_fitted = counter["pixels"]
    elapsed = time.perf_counter() - t_start
    summary = {
        "elements": names,
        "calibration": used.to_dict(),
        "calibration_refined": cal_result.refined,
        "calibration_residual_ev": None if not np.isfinite(cal_result.rms_ev) else round(cal_result.rms_ev, 2),
        "calibration_max_residual_ev": None if not np.isfinite(cal_result.max_abs_ev) else round(cal_result.max_abs_ev, 2),
        "calibration_residuals_ev": {k: round(v, 2) for k, v in cal_result.residuals_ev.items()},
        "detector_fwhm_mn_ka_ev": round(det.fwhm_mn_ka_ev, 1),
        "background": background,
        "fit_range_kev": model.describe()["fit_range_kev"],
        "pixels_fitted": n_fitted,
        "chunks_resumed": total - len(todo),
        "row_shift_px": applied_shift,
        "time_s": round(elapsed, 3),
        "spectra_per_second": round(n_fitted / fit_wall, 1) if fit_wall > 0 and n_fitted else None,
        "timings": timer.as_dict(),
        "identification": identification,
        "instrument_families": [r["name"] for r in identification
                                if r["origin"] == "instrument" and r["confidence"] >= 0.5],
        "refinement": None if refinement is None else refinement.to_dict(),
    }
    group.attrs["nightwatch"] = {
        **summary, "signature": signature, "model": model.describe(),
        "colormaps": [family_colormap(n, i) for i, n in enumerate(names)],
    }
    store.mark_complete(
        MAPS_PART, xrf_source=info.get("source"), elements=names, calibration=used.to_dict(),
        detector_fwhm_mn_ka_ev=det.fwhm_mn_ka_ev, background=background,
    )
    # other NGFF viewers place the maps by their coordinate transformations (scale + translation)
    from ..store.sources import sync_xrf_placement

    sync_xrf_placement(store)
    return summary


def _sample_spectra(store, max_pixels: int = 16384, seed: int = 0) -> np.ndarray:
    """Up to ``max_pixels`` pixel spectra (n, E): the whole cube if small, else random whole chunks.

    Whole storage chunks are read (cheap), chosen at random so the sample spans the
    painting; memory stays at ``max_pixels`` spectra.
    """
    z = store.root["xrf/cube"]
    ny, nx, ne = (int(v) for v in z.shape)
    if ny * nx <= max_pixels:
        return np.asarray(z[...]).reshape(-1, ne)
    cy, cx = int(z.chunks[0]), int(z.chunks[1])
    blocks = [(iy, ix) for iy in range(0, ny, cy) for ix in range(0, nx, cx)]
    rng = np.random.default_rng(seed)
    rng.shuffle(blocks)
    parts, n = [], 0
    for y0, x0 in blocks:
        b = np.asarray(z[y0 : y0 + cy, x0 : x0 + cx]).reshape(-1, ne)
        parts.append(b[: max_pixels - n])
        n += parts[-1].shape[0]
        if n >= max_pixels:
            break
    return np.concatenate(parts)


def _check_row_shift(row_shift: str | float | None) -> str | None:
    """The requested row-shift correction as recorded ('auto', a finite number, or None); a sentence otherwise."""
    if row_shift is None:
        return None
    if isinstance(row_shift, str) and row_shift.strip().lower() == "auto":
        return "auto"
    try:
        value = float(row_shift)
    except (TypeError, ValueError):
        value = float("nan")
    if not math.isfinite(value):
        raise NightwatchError(f"row_shift={row_shift!r} must be 'auto' or a finite number of XRF pixels.")
    return repr(value)


def _apply_row_shift(store, group, row_shift: str | float) -> float:
    from .artefacts import correct_row_shift, estimate_row_shift

    if isinstance(row_shift, str):
        if row_shift.strip().lower() != "auto":
            raise NightwatchError(f"row_shift={row_shift!r} must be 'auto', a number of pixels, or None.")
        shift = estimate_row_shift(np.asarray(store.xrf_total()))
    else:
        shift = float(row_shift)
    if abs(shift) < 0.05:  # below what phase correlation resolves: leave the maps alone
        return round(shift, 3)
    for name in ("0", "uncertainty"):
        arr = group[name]
        for c in range(arr.shape[0]):
            arr[c] = correct_row_shift(np.asarray(arr[c]), shift).astype(np.float32)
    group["chi2"][...] = correct_row_shift(np.asarray(group["chi2"][...]), shift).astype(np.float32)
    return round(shift, 3)


def _prepare_output(store, names, shape, chunks, grid, signature, overwrite):
    """The ``xrf_maps`` group and its done-mask, reused when the same model was interrupted."""
    root = store.root
    if store.has(MAPS_PART) and not overwrite:
        g = root[MAPS_PART]
        old = dict(g.attrs.get("nightwatch", {})).get("signature")
        pending = dict(g.attrs.get("nightwatch", {})).get("pending_signature")
        if "done" in g and (pending == signature or old == signature):
            done = np.asarray(g["done"][...])
            if old == signature and store.is_complete(MAPS_PART):
                done[:] = False  # a finished run with the same model: refit (maps may be stale)
                if "row_shift_applied" in g.attrs:
                    del g.attrs["row_shift_applied"]
            store.mark_incomplete(MAPS_PART)
            g.attrs["nightwatch"] = {"pending_signature": signature}
            return g, done
    store.mark_incomplete(MAPS_PART)
    if store.has(MAPS_PART):
        del root[MAPS_PART]
    g = root.require_group(MAPS_PART)
    nf = len(names)
    ny, nx = shape
    cy, cx = chunks
    kw = {"dtype": np.float32, "fill_value": np.nan}
    g.create_array("0", shape=(nf, ny, nx), chunks=(nf, cy, cx), dimension_names=("c", "y", "x"), **kw)
    g.create_array("uncertainty", shape=(nf, ny, nx), chunks=(nf, cy, cx), dimension_names=("c", "y", "x"), **kw)
    g.create_array("chi2", shape=(ny, nx), chunks=(cy, cx), dimension_names=("y", "x"), **kw)
    g.create_array("done", shape=grid, chunks=grid, dtype=bool, fill_value=False)
    g.attrs["nightwatch"] = {"pending_signature": signature}
    return g, np.zeros(grid, bool)


def load_element_maps(store) -> tuple[list[str], np.ndarray]:
    """Family names and fitted maps ``(c, y, x)`` float32 of a store's finished ``xrf_maps``."""
    if not store.has(MAPS_PART) or not store.is_complete(MAPS_PART):
        raise NightwatchError(f"{store.path} has no finished element maps; run `nightwatch xrf-maps` first.")
    g = store.root[MAPS_PART]
    names = list(g.attrs["nightwatch"]["elements"])
    return names, np.asarray(g["0"][...])


def load_uncertainty(store) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Family names, uncertainties ``(c, y, x)`` and reduced chi-square ``(y, x)``."""
    names, _ = load_element_maps(store)
    g = store.root[MAPS_PART]
    return names, np.asarray(g["uncertainty"][...]), np.asarray(g["chi2"][...])


def export_tiffs(store, out_dir: str | Path, *, overwrite: bool = False) -> list[Path]:
    """Write one float32 TIFF per family (``Pb-L.tif``) on the cube's pixel grid.

    Existing files are refused unless ``overwrite``; family names from the store
    are checked to be plain file names first (nothing is written on refusal).
    """
    import tifffile

    from ..core.paths import check_export_folder, check_targets, safe_file_stem

    names, _ = load_element_maps(store)
    out = check_export_folder(out_dir)
    targets = check_targets([out / f"{safe_file_stem(n, 'Element family')}.tif" for n in names], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    g = store.root[MAPS_PART]
    px = float(store.xrf_info.get("pixel_size_um") or 1.0)
    paths = []
    for c, (name, p) in enumerate(zip(names, targets, strict=True)):
        data = np.asarray(g["0"][c], dtype=np.float32)
        # resolution in pixels per centimetre, the unit TIFF understands
        res = 1e4 / px
        tifffile.imwrite(p, data, resolution=(res, res), resolutionunit="CENTIMETER",
                         metadata={"element_family": name, "unit": "counts"})
        paths.append(p)
    return paths
