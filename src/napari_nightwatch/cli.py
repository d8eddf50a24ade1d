"""The ``nightwatch`` command line: one entry, ``main(argv=None)``.

Each subcommand is a few lines over the same library function the widgets call.
Handlers return a JSON-able dict; ``--json`` prints it as one object, otherwise a
short human summary is printed. A :class:`NightwatchError` becomes one sentence on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .core.errors import Cancelled, NightwatchError
from .core.progress import tqdm_progress
from .io.remote import location


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    import math

    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n or not all(math.isfinite(v) for v in vals):
        raise NightwatchError(f"{what} {text!r} must be {n} comma-separated finite numbers.")
    return vals


def _progress(args) -> tuple[Callable, Callable]:
    return tqdm_progress(disable=getattr(args, "json", False) or getattr(args, "quiet", False))


def _hits_table(hits: list[dict[str, Any]]) -> str:
    """Search results as a fixed-width table (rank, score, tile, centre in px and um, store)."""
    door = any("source" in h for h in hits)  # the pigment door says where its numbers come from
    head = f"{'rank':>4} {'score':>7} {'tile':>7} {'y px':>9} {'x px':>9} {'y um':>10} {'x um':>10}  store"
    if door:
        head += "  maps       composition"
    rows = []
    for h in hits:
        row = (f"{h['rank']:>4} {h['score']:>7.4f} {h['tile']:>7} {h['y']:>9.1f} {h['x']:>9.1f} "
               f"{h['y_um']:>10.1f} {h['x_um']:>10.1f}  {Path(str(h['store'])).name}")
        if door:
            comp = ", ".join(f"{k} {v:.2f}" for k, v in (h.get("composition") or {}).items() if v is not None)
            weak = f" (no evidence: {', '.join(h['no_evidence'])})" if h.get("no_evidence") else ""
            row += f"  {h.get('source', ''):<10} {comp}{weak}"
        rows.append(row)
    return "\n".join([head, *rows])


def _human(result: dict[str, Any]) -> str:
    if isinstance(result.get("results"), list) and all(isinstance(h, dict) and "rank" in h for h in result["results"]):
        rest = {k: v for k, v in result.items() if k != "results"}
        return _human(rest) + "\n" + _hits_table(result["results"])
    lines = []
    for k, v in result.items():
        if isinstance(v, (dict, list)):
            one_line = json.dumps(v)
            v = one_line if len(one_line) <= 400 else json.dumps(v, indent=1)[:2000]
        lines.append(f"{k}: {v}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- foundation
def _cmd_synth(args) -> dict:
    from .synth import synthesize_painting

    cb, close = _progress(args)
    try:
        store = synthesize_painting(args.out, size=args.size, seed=args.seed, overwrite=args.overwrite, progress=cb)
    finally:
        close()
    return store.summary()


def _cmd_import_mosaic(args) -> dict:
    from .store.sources import import_mosaic

    cb, close = _progress(args)
    try:
        store = import_mosaic(args.source, args.store, pixel_size_um=args.pixel_size_um, progress=cb,
                              cache_dir=args.cache_dir)
    finally:
        close()
    return store.summary()


def _calibration_from_args(args):
    """The energy calibration given by --energy-offset-kev/--energy-gain-kev, or None."""
    from .core.spectra import EnergyCalibration

    if args.energy_offset_kev is None and args.energy_gain_kev is None:
        return None
    if args.energy_offset_kev is None or args.energy_gain_kev is None:
        raise NightwatchError("Give both --energy-offset-kev and --energy-gain-kev, or neither.")
    return EnergyCalibration(args.energy_offset_kev, args.energy_gain_kev)


def _cmd_import_xrf(args) -> dict:
    from .store.sources import import_xrf

    calib = _calibration_from_args(args)
    cb, close = _progress(args)
    try:
        store = import_xrf(
            args.source, args.store, calibration=calib, pixel_size_um=args.pixel_size_um,
            dataset=args.dataset, progress=cb,
        )
    finally:
        close()
    return store.summary()


def _cmd_info(args) -> dict:
    from .store import PaintingStore

    return PaintingStore.open(args.store).summary()


def _cmd_demo(args) -> dict:
    from ._napari.demo_viewer import run_demo

    return run_demo(out=args.out, viewer=not args.no_viewer, screenshot=args.screenshot, size=args.size)


def _cmd_embed(args) -> dict:
    from .ml.clip import load_clip
    from .ml.embed import embed_store
    from .store import PaintingStore
    from .store.tiles import make_grid

    store = PaintingStore.open(args.store, mode="r+")
    engine = load_clip(args.model, args.pretrained, device=args.device, precision=args.precision)
    cb, close = _progress(args)
    try:
        grid = make_grid(
            store, level=args.level, tile=args.tile, stride=args.stride, tile_um=args.tile_um,
            stride_um=args.stride_um, mask=args.mask, overwrite=args.overwrite, progress=cb,
        )
        result = embed_store(
            store, engine, grid, batch_size=args.batch_size, progress=cb, client=args.scheduler,
            num_workers=args.workers, chunk_tiles=args.chunk_tiles, overwrite=args.overwrite,
        )
    finally:
        close()
    return result


# ------------------------------------------------------------------ index and search (issue 4)
def _cmd_index(args) -> dict:
    from .search.index import add_to_index, build_index

    budget = None if args.memory_budget_gb is None else int(args.memory_budget_gb * 1e9)
    cb, close = _progress(args)
    try:
        if args.add:
            return add_to_index(args.store, args.grid, args.model_id, progress=cb)
        return build_index(args.store, args.grid, args.model_id, memory_budget_bytes=budget,
                           kind=args.index_type, on_disk=True if args.on_disk else None,
                           client=args.scheduler, shard_rows=args.shard_rows, progress=cb)
    finally:
        close()


def _cmd_search(args) -> dict:
    from .ml.encoders import query_encoders
    from .search.query import PAINTING_TEMPLATES
    from .search.run import Query, run_query

    templates = list(args.template or []) + (list(PAINTING_TEMPLATES) if args.painting_templates else [])
    query = Query(
        text=args.text,
        region=None if args.region is None else _floats(args.region, 4, "--region"),
        units="um" if args.um else "px",
        image=args.image,
        spectrum_file=args.spectrum,
        xrf_pixel=None if args.xrf_pixel is None else tuple(int(v) for v in _floats(args.xrf_pixel, 2, "--xrf-pixel")),
        xrf_region=None if args.xrf_region is None else tuple(int(v) for v in _floats(args.xrf_region, 4, "--xrf-region")),
        negative=list(args.negative or []),
        templates=templates or None,
        grid_id=args.grid,
        model_id=args.model_id,
        k=args.k,
        merge=not args.no_merge,
        iou_threshold=args.iou,
        pigment=args.pigment,
        where=args.where,
        maps=args.maps,
        xrf_match=args.xrf_match,
        **({} if args.colour_weight is None else {"colour_weight": args.colour_weight}),
    )
    query.check()  # before any model is loaded
    encoders = query_encoders(args.model, args.pretrained) if query.needs_embeddings else None
    result = run_query(args.stores, query, encoders)
    out = result.to_json()
    out.update(result.extra)
    return out


# ------------------------------------------------------------------ xrf (issue 3)
def _cmd_xrf_maps(args) -> dict:
    from .store import PaintingStore
    from .xrf.maps import export_tiffs, fit_store

    if args.export is not None:
        from .core.paths import check_export_folder

        check_export_folder(args.export)  # before the fit, not after it
    store = PaintingStore.open(args.store, mode="r+")
    row_shift = args.row_shift
    if row_shift is not None and row_shift != "auto":
        row_shift = _floats(row_shift, 1, "--row-shift")[0]
    calib = _calibration_from_args(args)
    detector = excitation = None
    elements = args.elements
    if args.pymca_config is not None:
        # a lab's PyMca configuration: its calibration, detector and excitation (the
        # calibration options still win); --elements config fits its families
        from .xrf.pymca_config import read_pymca_config

        cfg = read_pymca_config(args.pymca_config, int(store.xrf_cube().shape[2]))
        calib = calib or cfg.calibration
        detector, excitation = cfg.detector, cfg.excitation_kev
        if str(elements).strip().lower() == "config":
            elements = list(cfg.families)
    elif str(elements).strip().lower() == "config":
        raise NightwatchError("--elements config needs --pymca-config FILE.")
    cb, close = _progress(args)
    try:
        result = fit_store(store, elements, background=args.background, refine=not args.no_refine,
                           calibration=calib, detector=detector, excitation_kev=excitation,
                           include=_names(args.include), exclude=_names(args.exclude),
                           row_shift=row_shift, overwrite=args.overwrite, pileup=args.pileup, progress=cb,
                           client=args.scheduler)
    finally:
        close()
    if args.export is not None:
        result["exported"] = [str(p) for p in export_tiffs(store, args.export, overwrite=args.overwrite)]
    if not args.json:
        # the human summary stays short; the JSON keeps the full identification
        result["identification"] = [f"{r['name']} {r['confidence']:.2f}" for r in result["identification"]
                                    if r["confidence"] >= 0.5]
    return result


def _names(text: str | None) -> list[str]:
    """``"Pb-L,Ar"`` -> ``["Pb-L", "Ar"]`` (for --include/--exclude)."""
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _cmd_fit_spectrum(args) -> dict:
    from .xrf.single import fit_spectrum_file, plot_spectrum_fit

    calib = _calibration_from_args(args)
    if args.plot is not None and args.plot.suffix.lower() != ".png":
        raise NightwatchError(f"--plot {args.plot} must name a .png file.")
    if args.plot is not None and not args.plot.parent.is_dir():
        raise NightwatchError(f"--plot {args.plot}: folder {args.plot.parent} does not exist.")
    scatter = None
    if args.scatter_kev is not None:
        try:
            scatter = [float(v) for v in _names(args.scatter_kev)]
        except ValueError:
            raise NightwatchError(f"--scatter-kev {args.scatter_kev!r} must be comma-separated energies in keV.") from None
    result = fit_spectrum_file(args.file, elements=args.elements, pymca_config=args.pymca_config, calibration=calib,
                               excitation_kev=args.excitation_kev, include=_names(args.include),
                               exclude=_names(args.exclude), scatter_kev=scatter)
    out = result.to_dict()
    if args.plot is not None:
        out["plot"] = str(plot_spectrum_fit(result, args.plot))
    if not args.json:
        # the human summary: the table of families, then the short facts
        out = {"file": out["file"], "families": "\n" + result.table_text(),
               "instrument_families": out["instrument_families"], "chi2": round(out["chi2"], 3),
               **({"plot": out["plot"]} if "plot" in out else {})}
    return out


def _cmd_spectrum(args) -> dict:
    from .store import PaintingStore
    from .xrf.spectra import mean_spectrum, write_spectrum_csv

    store = PaintingStore.open(args.store)
    coords = "mosaic" if args.mosaic else "xrf"
    if (args.pixel is None) == (args.region is None):
        raise NightwatchError("Give exactly one of --pixel Y,X or --region Y0,X0,Y1,X1.")
    if args.out is not None and args.out.is_dir():
        raise NightwatchError(f"--out {args.out} is a folder; give the CSV file to write.")
    if args.pixel is not None:
        where = {"pixel": _floats(args.pixel, 2, "--pixel")}
        spec = mean_spectrum(store, pixel=where["pixel"], coords=coords)
    else:
        where = {"region": _floats(args.region, 4, "--region")}
        spec = mean_spectrum(store, region=where["region"], coords=coords)
    energies = store.xrf_energies()
    out = {**where, "coords": coords, "n_channels": int(spec.size), "total_counts": float(spec.sum()),
           "peak_kev": float(energies[int(spec.argmax())])}
    if store.is_complete("xrf_maps"):
        # the spectrum read as pigments: which pigments explain its fitted composition
        from .xrf.reading import read_pigments

        reading = read_pigments(store, coords=coords, **where).to_dict()
        out["pigments"] = reading if args.json else [
            f"{m['pigment']} {m['score']:.2f} ({', '.join(m['explained'])})" for m in reading["matches"]]
        if not args.json and reading["mixture"]:
            out["mixture"] = " + ".join(reading["mixture"])
    if args.out is not None:
        out["out"] = str(write_spectrum_csv(args.out, energies, spec))
    elif args.json:
        out["energies_kev"] = energies.tolist()
        out["counts"] = spec.tolist()
    return out


# ------------------------------------------------------------------ bridge (issue 5)
def _box_arg(text: str | None, what: str) -> tuple[float, float, float, float] | None:
    if text is None:
        return None
    y0, x0, y1, x1 = _floats(text, 4, what)
    if not (y0 < y1 and x0 < x1):
        raise NightwatchError(f"{what} {text!r} must be Y0,X0,Y1,X1 with Y0 < Y1 and X0 < X1.")
    return y0, x0, y1, x1


def _cmd_register(args) -> dict:
    from .store import PaintingStore
    from .xrf.registration import register_store

    if (args.points is None) and not args.auto:
        raise NightwatchError("Give control points (--points FILE) and/or ask for automatic refinement (--auto).")
    store = PaintingStore.open(args.store, mode="r+")
    cb, close = _progress(args)
    try:
        res = register_store(store, points=args.points, auto=args.auto, kind=args.kind, element=args.element,
                             search_px=args.search_px, refine_model=args.refine_model, progress=cb)
    finally:
        close()
    return res.to_dict()


def _cmd_train_xrf(args) -> dict:
    from .ml.bridge import train_xrf_bridge
    from .store import PaintingStore

    store = PaintingStore.open(args.store, mode="r+")
    cb, close = _progress(args)
    last: dict[str, str] = {}

    def progress(done: int, total: int, stage: str) -> None:
        # the stage carries the loss; one bar per stage name, the loss kept for the summary
        name, _, detail = stage.partition(":")
        if detail:
            last["progress"] = detail.strip()
        cb(done, total, name)

    try:
        out = train_xrf_bridge(store, grid_id=args.grid, image_model_id=args.model_id, epochs=args.epochs,
                               train_region=_box_arg(args.train_region, "--train-region"), seed=args.seed,
                               threads=args.threads, progress=progress, client=args.scheduler)
    finally:
        close()
    out["last_epoch"] = last.get("progress")
    return out


def _cmd_predict_xrf(args) -> dict:
    from .ml.bridge import export_predicted_maps, predict_xrf_maps
    from .store import PaintingStore

    if args.export is not None:
        from .core.paths import check_export_folder

        check_export_folder(args.export)  # before the work, not after it
    store = PaintingStore.open(args.store, mode="r+")
    cb, close = _progress(args)
    try:
        out = predict_xrf_maps(store, encoder_id=args.encoder, grid_id=args.grid, name=args.name, progress=cb,
                               client=args.scheduler)
    finally:
        close()
    if args.export is not None:
        out["exported"] = export_predicted_maps(store, out["name"], args.export, overwrite=args.overwrite)
    if not args.json:
        out["validation"] = {
            el: (f"r={_fmt(v.get('r'))} ssim={_fmt(v.get('ssim'))} ({v['method']}); best baseline "
                 f"{v.get('baseline')} r={_fmt(v.get('r_baseline'))} ssim={_fmt(v.get('ssim_baseline'))}; "
                 f"skill {_fmt(v.get('skill'))}{'' if v['evidence'] else ' NO EVIDENCE'}")
            for el, v in out["validation"].items()
        }
    return out


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _cmd_import_maps(args) -> dict:
    from .io.element_maps import parse_map_arguments
    from .store import PaintingStore
    from .store.sources import import_element_maps

    store = PaintingStore.open(args.store, mode="r+")
    cb, close = _progress(args)
    try:
        return import_element_maps(store, parse_map_arguments(args.map or []), pixel_size_um=args.pixel_size_um,
                                   overwrite=args.overwrite, progress=cb)
    finally:
        close()


class _UsageError(Exception):
    """A command line argparse cannot read (unknown option, a word where a number belongs)."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors become one sentence (see :func:`main`) instead of usage text and SystemExit."""

    def error(self, message: str):  # noqa: D102 (argparse API)
        raise _UsageError(f"{message[:1].upper()}{message[1:]} (see `{self.prog} --help`).")


#: options whose values must lie in a range, checked before any work starts:
#: name -> (lowest, highest, lowest allowed itself) -- None for no bound
_RANGES: dict[str, tuple[float | None, float | None, bool]] = {
    "size": (16, None, True), "pixel_size_um": (0, None, False), "energy_gain_kev": (0, None, False),
    "excitation_kev": (0, None, False), "tile": (1, None, True), "stride": (1, None, True),
    "tile_um": (0, None, False), "stride_um": (0, None, False), "level": (0, None, True),
    "batch_size": (1, None, True), "chunk_tiles": (1, None, True), "workers": (0, None, True),
    "memory_budget_gb": (0, None, False), "k": (1, None, True), "iou": (0, 1, True),
    "colour_weight": (0, 1, True), "search_px": (0, None, False), "epochs": (1, None, True),
    "threads": (1, None, True), "seed": (0, None, True),
}

#: options whose value is a comma-separated list of numbers that may start with a minus sign
_COORDINATE_OPTIONS = ("--region", "--pixel", "--xrf-pixel", "--xrf-region", "--train-region")


def _join_negative_values(argv: list[str]) -> list[str]:
    """``--region -100,-100,10,10`` -> ``--region=-100,-100,10,10``: argparse takes a leading minus for an option."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a in _COORDINATE_OPTIONS and i + 1 < len(argv) and argv[i + 1].startswith("-") and \
                argv[i + 1][1:2].replace(".", "").isdigit():
            out.append(f"{a}={argv[i + 1]}")
            i += 2
            continue
        out.append(a)
        i += 1
    return out


def _check_options(args) -> None:
    """Every number finite and in range before any work starts; one sentence naming the option."""
    import math

    for name, value in vars(args).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        opt = "--" + name.replace("_", "-") if name != "k" else "-k"
        if isinstance(value, float) and not math.isfinite(value):
            raise NightwatchError(f"{opt} {value} must be a finite number.")
        lo, hi, inclusive = _RANGES.get(name, (None, None, True))
        if lo is not None and (value < lo or (value == lo and not inclusive)):
            need = f"at least {lo:g}" if inclusive else f"greater than {lo:g}"
            raise NightwatchError(f"{opt} {value:g} must be {need}.")
        if hi is not None and value > hi:
            raise NightwatchError(f"{opt} {value:g} must be at most {hi:g}.")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="nightwatch", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    def add(name: str, func, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help, description=help)
        sp.add_argument("--json", action="store_true", help="print one JSON object")
        sp.set_defaults(func=func)
        return sp

    sp = add("synth", _cmd_synth, "build the synthetic painting (mosaic, MA-XRF cube, ground truth)")
    sp.add_argument("out", type=Path)
    sp.add_argument("--size", type=int, default=1024, help="mosaic edge in pixels (5 um each)")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--overwrite", action="store_true")

    sp = add("import-mosaic", _cmd_import_mosaic, "import a visible-light mosaic into a painting store")
    sp.add_argument("source", type=location, help="a file or folder, or an http(s):// or s3:// URL")
    sp.add_argument("store", type=location)
    sp.add_argument("--pixel-size-um", type=float, default=None)
    sp.add_argument("--cache-dir", type=Path, default=None,
                    help="remote Deep Zoom only: keep fetched tiles in this folder and reuse them on the next read")

    sp = add("import-xrf", _cmd_import_xrf, "import an MA-XRF cube into a painting store")
    sp.add_argument("source", type=Path)
    sp.add_argument("store", type=location)
    sp.add_argument("--energy-offset-kev", type=float, default=None)
    sp.add_argument("--energy-gain-kev", type=float, default=None)
    sp.add_argument("--pixel-size-um", type=float, default=None)
    sp.add_argument("--dataset", default=None, help="dataset path inside an HDF5 file")

    sp = add("info", _cmd_info, "show what a painting store holds and what is missing")
    sp.add_argument("store", type=location)

    sp = add("demo", _cmd_demo, "build the synthetic painting, run the whole workflow, open napari")
    sp.add_argument("--out", type=Path, default=Path("demo_out"))
    sp.add_argument("--no-viewer", action="store_true", help="run headless, no napari window")
    sp.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the viewer")
    sp.add_argument("--size", type=int, default=1024)

    # ------------------------------------------------------------ xrf commands (issue 3)
    sp = add("xrf-maps", _cmd_xrf_maps, "identify elements and fit per-pixel element maps of the MA-XRF cube")
    sp.add_argument("store", type=location)
    sp.add_argument("--elements", default="auto", help="'auto' or families like Pb-L,Hg-L,Fe-K")
    sp.add_argument("--export", type=Path, default=None, help="folder for one float32 TIFF per family")
    sp.add_argument("--background", choices=["basis", "snip"], default="basis")
    sp.add_argument("--no-refine", action="store_true", help="keep the stored energy calibration as is")
    sp.add_argument("--row-shift", default=None, help="'auto' or pixels: correct bidirectional-scan row shift")
    sp.add_argument("--overwrite", action="store_true", help="refit instead of resuming an interrupted run; replace files in --export")
    sp.add_argument("--pileup", action="store_true", help="also fit sum peaks of the strongest lines")
    sp.add_argument("--energy-offset-kev", type=float, default=None, help="calibration to use instead of the store's")
    sp.add_argument("--energy-gain-kev", type=float, default=None)
    sp.add_argument("--pymca-config", type=Path, default=None,
                    help="PyMca .cfg: calibration, detector and excitation ('--elements config': its families)")
    sp.add_argument("--include", default=None, help="families always fitted, e.g. Pb-L,As-K")
    sp.add_argument("--exclude", default=None, help="families or elements never proposed, e.g. Ar,Rh-L")
    sp.add_argument("--scheduler", default=None, help="dask scheduler address tcp://HOST:PORT (default: in-process)")

    sp = add("fit-spectrum", _cmd_fit_spectrum,
             "identify and fit one XRF spectrum file (.spx/.mca/.msa/.spe/.hspy); table of areas, optional plot")
    sp.add_argument("file", type=Path)
    sp.add_argument("--elements", default="auto", help="'auto', 'config' (the PyMca config's) or Fe-K,Cr-K,...")
    sp.add_argument("--pymca-config", type=Path, default=None, help="PyMca .cfg: calibration, detector, excitation")
    sp.add_argument("--energy-offset-kev", type=float, default=None, help="calibration instead of the file's")
    sp.add_argument("--energy-gain-kev", type=float, default=None)
    sp.add_argument("--excitation-kev", type=float, default=None, help="tube voltage (default: config's, else 50)")
    sp.add_argument("--include", default=None, help="families always fitted, e.g. Co-K")
    sp.add_argument("--exclude", default=None, help="families or elements never proposed, e.g. Ar")
    sp.add_argument("--scatter-kev", default=None,
                    help="exciting line energies fitted as scatter peaks, e.g. 35 for a monochromatic beam")
    sp.add_argument("--plot", type=Path, default=None, help="write a PNG of spectrum, fit, residual and lines")

    sp = add("spectrum", _cmd_spectrum, "mean XRF spectrum of a pixel or rectangle of a painting store")
    sp.add_argument("store", type=location)
    sp.add_argument("--pixel", default=None, help="Y,X (XRF pixels, or mosaic pixels with --mosaic)")
    sp.add_argument("--region", default=None, help="Y0,X0,Y1,X1 half-open box")
    sp.add_argument("--mosaic", action="store_true", help="coordinates are level-0 mosaic pixels")
    sp.add_argument("--out", type=Path, default=None, help="write a two-column CSV (energy_kev,counts)")
    # ------------------------------------------------------------ embedding/search commands (issue 4)
    sp = add("embed", _cmd_embed, "embed the mosaic tiles of a tile grid with a CLIP model (resumable)")
    sp.add_argument("store", type=location)
    sp.add_argument("--model", default="ViT-B-32", help="open_clip architecture, nightwatch-tiny, or hf-hub:ORG/NAME")
    sp.add_argument("--pretrained", default="laion2b_s34b_b79k",
                    help="open_clip tag, checkpoint file or directory, or 'none' (random weights)")
    sp.add_argument("--tile", type=int, default=224, help="tile edge in pixels of --level")
    sp.add_argument("--stride", type=int, default=None, help="step between tiles in pixels (default: --tile)")
    sp.add_argument("--tile-um", type=float, default=None, help="tile edge in micrometres (overrides --tile)")
    sp.add_argument("--stride-um", type=float, default=None, help="stride in micrometres (overrides --stride)")
    sp.add_argument("--level", type=int, default=0, help="pyramid level the tiles are read from")
    sp.add_argument("--mask", choices=["auto", "none"], default="auto", help="skip empty background tiles")
    sp.add_argument("--batch-size", type=int, default=64)
    sp.add_argument("--chunk-tiles", type=int, default=None, help="tiles per stored chunk (unit of resume)")
    sp.add_argument("--workers", type=int, default=2, help="reader/preprocessing threads per process")
    sp.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    sp.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default=None,
                    help="default: fp16 on CUDA, fp32 elsewhere")
    sp.add_argument("--scheduler", default=None, help="dask scheduler address tcp://HOST:PORT (default: in-process)")
    sp.add_argument("--overwrite", action="store_true", help="replace embeddings made differently")
    sp = add("index", _cmd_index, "build (or extend with --add) the vector index of a grid's tile embeddings")
    sp.add_argument("store", type=location)
    sp.add_argument("--grid", default=None, help="grid id, e.g. L0-t224-s224 (default: the only one)")
    sp.add_argument("--model-id", default=None, help="embeddings to index (default: the only ones)")
    sp.add_argument("--index-type", choices=("flat", "hnsw", "ivfpq"), default=None,
                    help="force the index type (default: chosen by size and memory budget)")
    sp.add_argument("--memory-budget-gb", type=float, default=None, help="RAM the index may take (default 4)")
    sp.add_argument("--add", action="store_true", help="add newly embedded tiles to the existing index")
    sp.add_argument("--on-disk", action="store_true",
                    help="keep the IVF-PQ lists on disk, memory-mapped (default: when no in-RAM index fits the budget)")
    sp.add_argument("--scheduler", default=None,
                    help="dask scheduler address tcp://HOST:PORT: encode IVF-PQ shards on its workers (default: in-process)")
    sp.add_argument("--shard-rows", type=int, default=None, help="rows per IVF-PQ build shard (default 262144)")

    sp = add("search", _cmd_search, "find the tiles of one or more paintings that match a text, region, image or spectrum")
    sp.add_argument("stores", type=location, nargs="+", help="painting stores, searched as one collection")
    sp.add_argument("--text", default=None, help="what to look for, in words")
    sp.add_argument("--region", default=None, metavar="Y0,X0,Y1,X1",
                    help="exemplar region of the first store (level-0 pixels, or micrometres with --um)")
    sp.add_argument("--um", action="store_true", help="--region is in micrometres")
    sp.add_argument("--image", type=Path, default=None, help="exemplar image file (a detail of another painting)")
    sp.add_argument("--spectrum", type=Path, default=None, help="XRF spectrum file (query through the XRF bridge)")
    sp.add_argument("--xrf-pixel", default=None, metavar="Y,X", help="XRF pixel of the first store whose spectrum is the query")
    sp.add_argument("--xrf-region", default=None, metavar="Y0,X0,Y1,X1", help="XRF region (pixels) whose mean spectrum is the query")
    sp.add_argument("--not", dest="negative", action="append", default=None, metavar="T",
                    help="text the results should not look like (repeatable)")
    sp.add_argument("--template", action="append", default=None, help="prompt template with {} (repeatable)")
    sp.add_argument("--painting-templates", action="store_true", help="average the built-in painting prompt templates")
    sp.add_argument("-k", type=int, default=20, help="number of results")
    sp.add_argument("--grid", default=None, help="grid id (default: the only one)")
    sp.add_argument("--model-id", default=None, help="embeddings to search (default: the only ones)")
    sp.add_argument("--model", default=None, help="CLIP model for text/image queries (default: the embeddings' model)")
    sp.add_argument("--pretrained", default=None, help="its weights: tag, checkpoint path or none (default: the embeddings')")
    sp.add_argument("--no-merge", action="store_true", help="keep overlapping hits")
    sp.add_argument("--iou", type=float, default=0.3, help="overlap (IoU) above which hits are merged")
    sp.add_argument("--pigment", default=None, metavar="NAME",
                    help="pigment of the library, any language (smalt, loodwit, vermillon): the pigment door")
    sp.add_argument("--where", default=None, metavar="EXPR",
                    help="composition filter, e.g. \"Co-K > 0.3 and Pb-L < 0.5\" (fractions of each map's robust "
                         "max; z(Hg-L) > 3 for z-scores); alone or restricting any other query")
    sp.add_argument("--maps", choices=("auto", "measured", "predicted"), default="auto",
                    help="element maps of the pigment door: measured where scanned and predicted elsewhere (auto)")
    sp.add_argument("--xrf-match", choices=("joint", "composition", "both"), default="joint",
                    help="how --xrf-pixel/--xrf-region rank tiles: the joint embedding space, the tiles' composition "
                         "(--maps: measured, or predicted from the photograph) against the query's, or both ranks fused")
    sp.add_argument("--colour-weight", type=float, default=None,
                    help="weight of the pigment's colour family in its score, 0 (elements only) to 1 (default 0.75)")
    # ------------------------------------------------------------ bridge commands (issue 5)
    sp = add("register", _cmd_register, "register the MA-XRF data onto the mosaic (control points and/or automatic)")
    sp.add_argument("store", type=location)
    sp.add_argument("--points", type=Path, default=None, help="CSV with header xrf_y,xrf_x,mosaic_y,mosaic_x")
    sp.add_argument("--auto", action="store_true", help="refine by agreement of XRF images and mosaic colour")
    sp.add_argument("--kind", choices=("affine", "similarity"), default="affine", help="control-point transform")
    sp.add_argument("--refine-model", choices=("rigid", "similarity", "affine"), default="rigid",
                    help="free parameters of the automatic refinement")
    sp.add_argument("--element", default=None, help="element map to match in --auto (default: all)")
    sp.add_argument("--search-px", type=float, default=6.0, help="shift search half-width in XRF pixels (--auto)")

    sp = add("train-xrf", _cmd_train_xrf, "train the spectrum encoder and inverse head on tiles paired with XRF")
    sp.add_argument("store", type=location)
    sp.add_argument("--grid", default=None, help="grid id (default: the only one with embeddings)")
    sp.add_argument("--model-id", default=None, help="image model id of the embeddings (default: the only one)")
    sp.add_argument("--epochs", type=int, default=200, help="maximum epochs (early stopping on validation retrieval)")
    sp.add_argument("--train-region", default=None, metavar="Y0,X0,Y1,X1",
                    help="train only on tiles inside this level-0 box; everything outside is held out")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    sp.add_argument("--scheduler", default=None,
                    help="dask scheduler address tcp://HOST:PORT (default: in-process); pairs tiles with spectra there")

    sp = add("predict-xrf", _cmd_predict_xrf, "predict element maps from the photograph; validate on held-out blocks")
    sp.add_argument("store", type=location)
    sp.add_argument("--encoder", default=None, help="trained spectrum encoder id (default: the newest)")
    sp.add_argument("--grid", default=None)
    sp.add_argument("--name", default=None, help="name under predicted/ (default: the encoder id)")
    sp.add_argument("--export", type=Path, default=None,
                    help="write one float32 TIFF per element, scan_here_next.tif and a JSON sidecar")
    sp.add_argument("--overwrite", action="store_true", help="replace files already in the --export folder")
    sp.add_argument("--scheduler", default=None, help="dask scheduler address tcp://HOST:PORT (default: in-process)")

    sp = add("import-maps", _cmd_import_maps, "import exported element maps (images) as the XRF modality")
    sp.add_argument("store", type=location)
    sp.add_argument("--map", action="append", metavar="NAME=FILE", help="element map, e.g. Pb-L=Pb.tif (repeatable)")
    sp.add_argument("--pixel-size-um", type=float, default=None, help="map pixel size (default: stretched over the mosaic)")
    sp.add_argument("--overwrite", action="store_true", help="replace existing XRF data")
    return p


def _remote_failure(args: argparse.Namespace, exc: BaseException) -> str | None:
    """One sentence for a job that lost its remote store/source mid-way, or None (a real bug: re-raise)."""
    from .io.remote import is_transient, is_url

    urls = [v for v in vars(args).values() if isinstance(v, str) and is_url(v)]
    chain, e = [], exc
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    if not urls or not any(is_transient(e) for e in chain):
        return None
    return (f"{urls[0]} could not be reached mid-job ({type(exc).__name__}: {str(exc)[:160]}); "
            "what was finished is kept: rerun the command when the server is back to resume.")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 130 cancelled)."""
    parser = build_parser()
    argv = _join_negative_values(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(f"nightwatch: error: {exc}", file=sys.stderr)
        return 2
    try:
        _check_options(args)
        result = args.func(args)
    except NightwatchError as exc:
        print(f"nightwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"nightwatch {args.command}: cancelled; rerun to resume.", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - only remote-storage failures are turned into a sentence
        msg = _remote_failure(args, exc)
        if msg is None:
            raise
        print(f"nightwatch {args.command}: error: {msg}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, default=str))
    elif result is not None:
        print(_human(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
