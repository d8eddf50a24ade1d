"""Element maps of a painting store: identify, calibrate, fit every pixel, write.

:func:`fit_store` reads ``xrf/cube`` chunk by chunk and writes ``xrf_maps/``::

    xrf_maps/                 NGFF 0.5 image (c, y, x), one named channel per family
      0                       (c, y, x) float32 fitted counts per family
      uncertainty             (c, y, x) float32 standard uncertainty (counts)
      chi2                    (y, x) float32 reduced chi-square
      correlation             (p, y, x) float32 error correlation of each overlapping pair of
                              families (attrs "pairs": ["Pb-L/As-K", ...]); near -1: the fit
                              cannot tell the two apart in that pixel
      done                    (gy, gx) bool: which cube chunks are finished (resume)
    attrs["nightwatch"]       elements, calibration used and its residual (eV),
                              identification, detector, timings, spectra per second

Memory stays bounded by a few cube chunks whatever the cube size; a killed run
resumes at the first unfinished chunk when the fit model is unchanged. With a dask
``client`` the chunks are fitted by the cluster's workers, each opening the store by
its location and writing only its own map chunks; this process keeps the done-mask
and the completion record, and the maps are byte for byte those of an in-process run
(every chunk goes through :func:`_fit_chunk` either way).
"""

from __future__ import annotations

import math
import threading
import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cluster import connected, n_workers, task_batches
from ..core.errors import NightwatchError
from ..core.progress import ProgressCallback, StageTimer, report
from ..core.spectra import EnergyCalibration
from ..store import layout
from ..store.painting import open_worker_store, writes
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
    client=None,
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
    client
        A ``dask.distributed.Client`` or a scheduler address ``"tcp://HOST:PORT"``: the
        chunks are fitted by the cluster's workers (``workers`` threads are then unused),
        which need the store at the same location (a shared filesystem or object
        storage). None fits in this process. Identification and calibration run here.

    Returns
    -------
    dict
        Summary: elements, calibration used, calibration residual (eV), time,
        spectra per second, cluster workers (0 in-process), and the identification
        when ``elements == "auto"``.
    """
    store.require_writable()
    requested_shift = _check_row_shift(row_shift)  # before any work: a bad value never costs a whole fit
    # connect first: an unreachable scheduler is refused before minutes of identification
    with connected(client) as cl:
        return _fit_store(store, elements, detector=detector, background=background, calibration=calibration,
                          refine=refine, workers=workers, overwrite=overwrite, row_shift=row_shift, block=block,
                          pileup=pileup, include=include, exclude=exclude, excitation_kev=excitation_kev,
                          tube_kev=tube_kev, progress=progress, client=cl, requested_shift=requested_shift)


def _fit_store(store, elements, *, detector, background, calibration, refine, workers, overwrite, row_shift, block,
               pileup, include, exclude, excitation_kev, tube_kev, progress, client, requested_shift) -> dict[str, Any]:
    """:func:`fit_store` once the cluster (if any) is connected."""
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
    group, done = _prepare_output(store, names, (ny, nx), (cy, cx), (gy, gx), signature, overwrite,
                                  pairs=model.overlap_names)
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
    maps_arr, done_arr = group["0"], group["done"]
    outputs = _outputs(group)
    nf = len(names)
    lock = threading.Lock()
    counter = {"n": n_done, "pixels": 0, "fit_s": 0.0, "read_s": 0.0, "write_s": 0.0}

    def record(iy: int, ix: int, cost: dict[str, float]) -> None:
        # the done-mask is written here only, after the chunk's maps: never marked before it is written
        with lock:
            done_arr[iy, ix] = True
            counter["n"] += 1
            counter["pixels"] += int(cost["pixels"])
            counter["read_s"] += cost["read_s"]
            counter["fit_s"] += cost["fit_s"]
            counter["write_s"] += cost["write_s"]
            report(progress, counter["n"], total, "fit element maps")

    t_fit = time.perf_counter()
    cluster_workers = 0
    if todo and client is not None:
        cluster_workers = n_workers(client)
        _fit_distributed(client, store, model, todo, (cy, cx), gx, record)
    elif workers <= 1 or len(todo) <= 1:
        for iy, ix in todo:
            record(iy, ix, _fit_chunk(zcube, outputs, model, nf, iy, ix, cy, cx))
    else:
        def work(item: tuple[int, int]) -> None:
            iy, ix = item
            record(iy, ix, _fit_chunk(zcube, outputs, model, nf, iy, ix, cy, cx))

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
        overlaps: dict[str, dict[str, float]] = {}
        if "correlation" in group:  # how well each overlapping pair is told apart, over the scan
            csample = np.asarray(group["correlation"][:, ::step, ::step])
            for k, pair in enumerate(group["correlation"].attrs.get("pairs", [])):
                v = csample[k][np.isfinite(csample[k])]
                if v.size:
                    overlaps[pair] = {"median": round(float(np.median(v)), 3),
                                      "most_negative": round(float(v.min()), 3)}
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
        "chunks_fitted": len(todo),
        "cluster_workers": cluster_workers,
        "row_shift_px": applied_shift,
        "time_s": round(elapsed, 3),
        "spectra_per_second": round(n_fitted / fit_wall, 1) if fit_wall > 0 and n_fitted else None,
        "timings": timer.as_dict(),
        "identification": identification,
        "instrument_families": [r["name"] for r in identification
                                if r["origin"] == "instrument" and r["confidence"] >= 0.5],
        "refinement": None if refinement is None else refinement.to_dict(),
        "overlap_correlation": overlaps,
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


def _fit_chunk(zcube, outputs, model, nf: int, iy: int, ix: int, cy: int, cx: int,
               still_current=None) -> dict[str, float] | None:
    """Fit map chunk ``(iy, ix)`` of ``block`` ``(cy, cx)`` pixels and write its maps, uncertainty and chi2.

    The one per-chunk step of both the in-process and the distributed fit, so their
    maps are the same bytes. Writes whole chunks of the outputs only (never the done-mask).
    ``still_current()``, if given, is asked just before writing; False writes nothing and
    returns None.
    """
    maps_arr, unc_arr, chi_arr, corr_arr = outputs
    ny, nx = int(zcube.shape[0]), int(zcube.shape[1])
    y0, y1 = iy * cy, min((iy + 1) * cy, ny)
    x0, x1 = ix * cx, min((ix + 1) * cx, nx)
    t0 = time.perf_counter()
    block = np.asarray(zcube[y0:y1, x0:x1, :])
    t1 = time.perf_counter()
    out = fit_block(block, model, with_correlation=corr_arr is not None)
    t2 = time.perf_counter()
    if still_current is not None and not still_current():
        return None
    maps_arr[:, y0:y1, x0:x1] = np.moveaxis(out[..., :nf], -1, 0)
    unc_arr[:, y0:y1, x0:x1] = np.moveaxis(out[..., nf : 2 * nf], -1, 0)
    chi_arr[y0:y1, x0:x1] = out[..., 2 * nf]
    if corr_arr is not None:
        corr_arr[:, y0:y1, x0:x1] = np.moveaxis(out[..., 2 * nf + 1 :], -1, 0)
    t3 = time.perf_counter()
    return {"pixels": (y1 - y0) * (x1 - x0), "read_s": t1 - t0, "fit_s": t2 - t1, "write_s": t3 - t2}


def _outputs(group) -> tuple:
    """The arrays a map chunk is written into: maps, uncertainty, chi2, correlation (or None)."""
    return (group["0"], group["uncertainty"], group["chi2"],
            group["correlation"] if "correlation" in group else None)


def _fit_chunks_task(location: str, model, chunk_ids: list[int], block: tuple[int, int], grid_x: int,
                     run: str) -> dict[str, Any]:
    """Run on a dask worker: fit map chunks ``chunk_ids`` (row-major ids) of the store at ``location``.

    Writes their maps only; the submitting process marks them done. Stops early when the
    run that submitted it is no longer the store's current one (it was cancelled and the
    maps restarted), so a left-over task never writes into newer maps.
    """
    store = open_worker_store(location)
    group = store.root[MAPS_PART]
    zcube = store.root[layout.XRF_CUBE]
    outputs = _outputs(group)
    nf = int(outputs[0].shape[0])
    cy, cx = block
    costs: dict[int, dict[str, float]] = {}

    def still_current() -> bool:
        return dict(store.root[MAPS_PART].attrs.get("nightwatch", {})).get("run") == run

    for cid in chunk_ids:
        cost = _fit_chunk(zcube, outputs, model, nf, cid // grid_x, cid % grid_x, cy, cx, still_current)
        if cost is None:
            break
        costs[int(cid)] = cost
    return {"costs": costs}


def _fit_distributed(client, store, model, todo: list[tuple[int, int]], block: tuple[int, int], grid_x: int,
                     record) -> None:
    """Fit the chunks ``todo`` on the cluster; ``record(iy, ix, cost)`` here as each task returns."""
    from distributed import as_completed

    run = uuid.uuid4().hex
    group = store.root[MAPS_PART]
    group.attrs["nightwatch"] = {**dict(group.attrs.get("nightwatch", {})), "run": run}
    # the fit model (a few MB of line shapes) travels once to each worker, not once per task
    model_f = client.scatter(model, broadcast=True, hash=False)
    ids = [iy * grid_x + ix for iy, ix in todo]
    futures = [
        client.submit(_fit_chunks_task, str(store.path), model_f, batch, block, grid_x, run, pure=False,
                      key=f"nightwatch-xrf-maps-{batch[0]}-{run[:8]}")
        for batch in task_batches(ids, client)
    ]
    try:
        for fut in as_completed(futures):
            for cid, cost in fut.result()["costs"].items():
                record(int(cid) // grid_x, int(cid) % grid_x, cost)
    except BaseException:
        client.cancel(futures)
        raise


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
    for name in ("0", "uncertainty", "correlation"):
        if name not in group:
            continue
        arr = group[name]
        for c in range(arr.shape[0]):
            arr[c] = correct_row_shift(np.asarray(arr[c]), shift).astype(np.float32)
    group["chi2"][...] = correct_row_shift(np.asarray(group["chi2"][...]), shift).astype(np.float32)
    return round(shift, 3)


def _prepare_output(store, names, shape, chunks, grid, signature, overwrite, pairs=()):
    """The ``xrf_maps`` group and its done-mask, reused when the same model was interrupted."""
    root = store.root
    pairs = list(pairs)
    if store.has(MAPS_PART) and not overwrite:
        g = root[MAPS_PART]
        old = dict(g.attrs.get("nightwatch", {})).get("signature")
        pending = dict(g.attrs.get("nightwatch", {})).get("pending_signature")
        same_pairs = (list(g["correlation"].attrs.get("pairs", [])) if "correlation" in g else []) == pairs
        if "done" in g and same_pairs and (pending == signature or old == signature):
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
    if pairs:
        c = g.create_array("correlation", shape=(len(pairs), ny, nx), chunks=(len(pairs), cy, cx),
                           dimension_names=("c", "y", "x"), **kw)
        c.attrs["pairs"] = pairs
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


def load_correlation(store) -> tuple[list[str], np.ndarray]:
    """Overlapping pairs (``"Pb-L/As-K"``) and their per-pixel error correlation ``(p, y, x)``.

    Empty when the fitted families do not overlap (or the maps predate this output).
    """
    load_element_maps(store)
    g = store.root[MAPS_PART]
    if "correlation" not in g:
        return [], np.zeros((0,) + tuple(g["chi2"].shape), np.float32)
    c = g["correlation"]
    return list(c.attrs.get("pairs", [])), np.asarray(c[...])


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
