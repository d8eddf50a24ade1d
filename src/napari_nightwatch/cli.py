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


def _floats(text: str, n: int, what: str) -> tuple[float, ...]:
    try:
        vals = tuple(float(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if len(vals) != n:
        raise NightwatchError(f"{what} {text!r} must be {n} comma-separated numbers.")
    return vals


def _progress(args) -> tuple[Callable, Callable]:
    return tqdm_progress(disable=getattr(args, "json", False) or getattr(args, "quiet", False))


def _human(result: dict[str, Any]) -> str:
    lines = []
    for k, v in result.items():
        if isinstance(v, (dict, list)) and len(json.dumps(v)) > 100:
            v = json.dumps(v, indent=1)[:2000]
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
    from .io.mosaic import import_mosaic

    cb, close = _progress(args)
    try:
        store = import_mosaic(args.source, args.store, pixel_size_um=args.pixel_size_um, progress=cb)
    finally:
        close()
    return store.summary()


def _cmd_import_xrf(args) -> dict:
    from .core.spectra import EnergyCalibration
    from .io.xrf_files import import_xrf

    calib = None
    if args.energy_offset_kev is not None or args.energy_gain_kev is not None:
        if args.energy_offset_kev is None or args.energy_gain_kev is None:
            raise NightwatchError("Give both --energy-offset-kev and --energy-gain-kev, or neither.")
        calib = EnergyCalibration(args.energy_offset_kev, args.energy_gain_kev)
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
    from .project import PaintingStore

    return PaintingStore.open(args.store).summary()


def _cmd_demo(args) -> dict:
    from .demo import run_demo

    return run_demo(out=args.out, viewer=not args.no_viewer, screenshot=args.screenshot, size=args.size)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nightwatch", description=__doc__.splitlines()[0])
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
    sp.add_argument("source", type=Path)
    sp.add_argument("store", type=Path)
    sp.add_argument("--pixel-size-um", type=float, default=None)

    sp = add("import-xrf", _cmd_import_xrf, "import an MA-XRF cube into a painting store")
    sp.add_argument("source", type=Path)
    sp.add_argument("store", type=Path)
    sp.add_argument("--energy-offset-kev", type=float, default=None)
    sp.add_argument("--energy-gain-kev", type=float, default=None)
    sp.add_argument("--pixel-size-um", type=float, default=None)
    sp.add_argument("--dataset", default=None, help="dataset path inside an HDF5 file")

    sp = add("info", _cmd_info, "show what a painting store holds and what is missing")
    sp.add_argument("store", type=Path)

    sp = add("demo", _cmd_demo, "build the synthetic painting, run the whole workflow, open napari")
    sp.add_argument("--out", type=Path, default=Path("demo_out"))
    sp.add_argument("--no-viewer", action="store_true", help="run headless, no napari window")
    sp.add_argument("--screenshot", type=Path, default=None, help="save a screenshot of the viewer")
    sp.add_argument("--size", type=int, default=1024)

    # ------------------------------------------------------------ xrf commands (issue 3)
    # ------------------------------------------------------------ embedding/search commands (issue 4)
    # ------------------------------------------------------------ bridge commands (issue 5)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code (0 ok, 2 bad input, 130 cancelled)."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        result = args.func(args)
    except NightwatchError as exc:
        print(f"nightwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except Cancelled:
        print(f"nightwatch {args.command}: cancelled; rerun to resume.", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(result, default=str))
    elif result is not None:
        print(_human(result))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
