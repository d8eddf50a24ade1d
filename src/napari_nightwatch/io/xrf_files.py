"""MA-XRF import: cubes (ripple, Bruker .bcf, HDF5, numpy, zarr) and single spectra.

:func:`write_xrf_cube` streams a ``(y, x, energy)`` cube into the store's ``xrf/``
part, computing the sum and max spectra and the total-counts image on the way.
:func:`read_cube` / :func:`read_spectrum` read files (Bruker and ripple through
rosettasciio) without ever writing to them; :func:`import_xrf` joins the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NightwatchError
from ..core.spectra import EnergyCalibration

#: target bytes of one cube chunk (cy, cx, E): big enough for fast streaming, small enough
#: that one pixel's spectrum is one cheap read
CUBE_CHUNK_BYTES = 4 << 20
#: a calibrated energy axis must end inside this range (keV) to be an XRF spectrum
_MAX_TOP_KEV = 200.0
_MIN_TOP_KEV = 1.0


def cube_chunks(shape: tuple[int, int, int], itemsize: int, target_bytes: int = CUBE_CHUNK_BYTES) -> tuple[int, int, int]:
    """Square spatial chunks ``(cy, cx, E)`` of about ``target_bytes`` that keep whole spectra together."""
    ny, nx, ne = shape
    side = max(1, int(math.sqrt(target_bytes / max(1, ne * itemsize))))
    return (min(side, ny), min(side, nx), ne)


def check_energy_axis(n_channels: int, calibration: EnergyCalibration, what: str) -> None:
    """Raise if ``calibration`` puts the last of ``n_channels`` outside an XRF energy range.

    The message suggests a unit mix-up only where one would explain it: an axis that
    lands inside the range once divided (eV read as keV) or multiplied (keV read as eV) by 1000.
    """
    top = float(calibration.energies(n_channels)[-1])
    if _MIN_TOP_KEV <= top <= _MAX_TOP_KEV:
        return
    if top > _MAX_TOP_KEV and _MIN_TOP_KEV <= top / 1000.0 <= _MAX_TOP_KEV:
        hint = " It looks like an axis in eV given as keV (check the calibration units: keV, not eV)."
    elif 0 < top < _MIN_TOP_KEV and _MIN_TOP_KEV <= top * 1000.0 <= _MAX_TOP_KEV:
        hint = " It looks like an axis in keV given as eV (check the calibration units: keV, not eV)."
    elif top < _MIN_TOP_KEV:
        hint = " An XRF spectrum must reach at least the lightest fitted lines (Na-Al K, 1.0-1.5 keV)."
    else:
        hint = ""
    raise NightwatchError(
        f"{what}: an energy axis of {n_channels} channels with offset {calibration.offset_kev:.6g} keV and "
        f"gain {calibration.gain_kev:.6g} keV/channel ends at {top:.4g} keV; expected the last channel between "
        f"{_MIN_TOP_KEV:g} and {_MAX_TOP_KEV:g} keV.{hint}"
    )


# ------------------------------------------------------------------------------ reading files
_CUBE_SUFFIXES = (".rpl", ".raw", ".bcf", ".h5", ".hdf5", ".hdf", ".nxs", ".npy", ".zarr")
_SPECTRUM_SUFFIXES = (".spx", ".mca", ".xrf", ".msa", ".emsa", ".txt", ".spe", ".csv", ".dat", ".hspy")
_LENGTH_TO_UM = {"µm": 1.0, "\u03bcm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0, "nm": 1e-3,
                 "nanometer": 1e-3, "mm": 1e3, "millimeter": 1e3, "cm": 1e4, "m": 1e6, "meter": 1e6}


@dataclass
class XrfCube:
    """An MA-XRF cube as read from a file, energy axis last.

    Attributes
    ----------
    data
        ``(y, x, energy)`` counts: numpy (possibly memory-mapped), dask, zarr or h5py; read lazily.
    calibration
        Energy calibration from the file, or None when the file has none.
    pixel_size_um
        Pixel size in micrometres from the file, or None; the width of a pixel where the
        file gives a different height (see ``pixel_size_yx_um``).
    pixel_size_yx_um
        ``(height, width)`` of a pixel in micrometres where the file gives both, else None.
    metadata
        What else the file says (format, live time, excitation energy, ...), JSON-able.
    """

    data: Any
    calibration: EnergyCalibration | None
    pixel_size_um: float | None
    metadata: dict[str, Any] = field(default_factory=dict)
    pixel_size_yx_um: tuple[float, float] | None = None

    @property
    def anisotropic(self) -> bool:
        """True when the file gives pixels whose height and width differ (by more than 1 in 10^6)."""
        if self.pixel_size_yx_um is None:
            return False
        py, px = self.pixel_size_yx_um
        return abs(py - px) > 1e-6 * max(py, px)


@dataclass
class Spectrum:
    """One XRF spectrum as read from a file.

    Attributes
    ----------
    counts
        ``(n_channels,)`` float64 counts.
    calibration
        Energy calibration, or None when the file has none (and none was given).
    metadata
        What else the file says, JSON-able.
    """

    counts: np.ndarray
    calibration: EnergyCalibration | None
    metadata: dict[str, Any] = field(default_factory=dict)

    def energies(self) -> np.ndarray:
        """Energy in keV of each channel; needs a calibration."""
        if self.calibration is None:
            raise NightwatchError("This spectrum has no energy calibration; give one to read_spectrum(calibration=...).")
        return self.calibration.energies(self.counts.size)


def _calibration_from_axis(offset: float, scale: float, units: str | None, what: str) -> EnergyCalibration | None:
    """keV calibration from an (offset, scale, units) axis; eV is converted, unknown units give None."""
    u = (units or "").strip()
    if u.lower() == "kev":
        divisor = 1.0
    elif u.lower() == "ev":
        divisor = 1000.0
    else:
        return None
    try:
        return EnergyCalibration(float(offset) / divisor, float(scale) / divisor)
    except NightwatchError as exc:
        raise NightwatchError(f"{what} has an unusable energy axis (offset {offset} {u}, scale {scale} {u}): {exc}") from exc


def _length_um(scale: float | None, units: str | None) -> float | None:
    if scale is None or units is None:
        return None
    f = _LENGTH_TO_UM.get(str(units).strip())
    return float(scale) * f if f is not None and scale > 0 else None


def _rsciio_cube_dict(d: dict, path: Path, fmt: str) -> XrfCube:
    """XrfCube from a rosettasciio signal dict; the energy axis is the one signal (non-navigation) axis."""
    data = d["data"]
    axes = list(d.get("axes", []))
    if data.ndim != 3:
        raise NightwatchError(f"{path} holds a {data.ndim}-D dataset of shape {tuple(data.shape)}; expected a 3-D (y, x, energy) cube.")
    signal = [i for i, ax in enumerate(axes) if not ax.get("navigate", True)]
    e_axis = signal[-1] if len(signal) == 1 else data.ndim - 1
    e_ax = axes[e_axis] if axes else {}
    nav = [ax for i, ax in enumerate(axes) if i != e_axis]
    if e_axis != data.ndim - 1:
        import dask.array as da

        data = da.moveaxis(da.asarray(data), e_axis, -1)
    calib = _calibration_from_axis(e_ax.get("offset", 0.0), e_ax.get("scale", 1.0), e_ax.get("units"), str(path))
    px = _length_um(nav[-1].get("scale"), nav[-1].get("units")) if nav else None
    py = _length_um(nav[-2].get("scale"), nav[-2].get("units")) if len(nav) >= 2 else None
    meta: dict[str, Any] = {"format": fmt, "file_energy_axis": {k: e_ax.get(k) for k in ("offset", "scale", "units")}}
    acq = dict(d.get("metadata", {}).get("Acquisition_instrument", {}) or {})
    for inst in acq.values():
        if isinstance(inst, dict):
            if "beam_energy" in inst:
                meta["excitation_kev"] = float(inst["beam_energy"])
            det = inst.get("Detector", {}).get("EDS", {})
            if "live_time" in det:
                meta["live_time_s"] = float(det["live_time"])
            if "real_time" in det:
                meta["real_time_s"] = float(det["real_time"])
    return XrfCube(data, calib, px, meta, (py, px) if py is not None and px is not None else None)


def _parse_ripple_header(path: Path) -> dict[str, Any]:
    """A ripple header as rosettasciio's reader expects it, accepting Bruker M6 exports.

    rosettasciio requires TAB separators and its own depth-* keys; Bruker M6 Jetstream
    exports separate with spaces and name the energy axis ``depthscaleorigin``,
    ``depthscaleincrement`` and ``depthscaleunits``. We normalise those here and hand
    the result to ``rsciio.ripple.file_reader(rpl_info=...)``.
    """
    aliases = {"depthscaleorigin": "depth-origin", "depthscaleincrement": "depth-scale", "depthscaleunits": "depth-units",
               "widthscaleorigin": "width-origin", "widthscaleincrement": "width-scale", "widthscaleunits": "width-units",
               "heightscaleorigin": "height-origin", "heightscaleincrement": "height-scale", "heightscaleunits": "height-units"}
    ints = ("width", "height", "depth", "offset")
    floats = ("depth-origin", "depth-scale", "ev-per-chan", "width-origin", "width-scale", "height-origin", "height-scale",
              "beam-energy", "live-time", "elevation-angle", "azimuth-angle", "detector-peak-width-ev")
    info: dict[str, Any] = {}
    try:
        text = path.read_text(encoding="latin-1")
    except OSError as exc:
        raise NightwatchError(f"Ripple header {path} could not be read ({exc}).") from exc
    for line in text.splitlines():
        line = line.split(";", 1)[0].strip()
        parts = line.split(None, 1)
        if len(parts) != 2 or parts[0].lower() == "key":
            continue
        key = aliases.get(parts[0].lower(), parts[0].lower())
        val: Any = parts[1].strip()
        try:
            if key in ints:
                val = int(val)
            elif key in floats:
                val = float(val)
        except ValueError as exc:
            raise NightwatchError(f"Ripple header {path}: '{parts[0]}' is {val!r}; expected a number.") from exc
        info[key] = val
    missing = [k for k in ("width", "height", "depth", "data-length", "data-type") if k not in info]
    if missing:
        raise NightwatchError(f"{path} is not a ripple header; it lacks {', '.join(missing)}.")
    info.setdefault("offset", 0)
    info.setdefault("byte-order", "dont-care")
    info.setdefault("record-by", "vector")
    if str(info["data-length"]) == "1":
        info["byte-order"] = "dont-care"
    info["data-length"] = str(info["data-length"])
    return info


def _read_ripple(path: Path) -> XrfCube:
    from rsciio.ripple import file_reader

    rpl = path if path.suffix.lower() == ".rpl" else next(
        (p for p in (path.with_suffix(".rpl"), path.with_suffix(".RPL")) if p.exists()), None
    )
    if rpl is None:
        raise NightwatchError(f"{path} needs its ripple header {path.with_suffix('.rpl').name} beside it.")
    raw = next((p for p in (rpl.with_suffix(".raw"), rpl.with_suffix(".RAW")) if p.exists()), None)
    if raw is None:
        raise NightwatchError(f"The ripple header {rpl} has no {rpl.with_suffix('.raw').name} data file beside it.")
    info = _parse_ripple_header(rpl)
    if info["record-by"] not in ("vector", "image"):
        raise NightwatchError(f"{rpl} records '{info['record-by']}'; expected a spectral cube (record-by vector or image).")
    itemsize = int(info["data-length"])
    expected = int(info["offset"]) + info["width"] * info["height"] * info["depth"] * itemsize
    if raw.stat().st_size < expected:
        raise NightwatchError(
            f"{raw} has {raw.stat().st_size} bytes; its header {rpl.name} describes {info['height']}x{info['width']}x"
            f"{info['depth']} values of {itemsize} bytes ({expected} bytes)."
        )
    try:
        d = file_reader(str(rpl), lazy=True, rpl_info=dict(info))[0]
    except Exception as exc:
        raise NightwatchError(f"{rpl} could not be read as a ripple cube ({exc}).") from exc
    data = d["data"]
    # rosettasciio squeezes length-1 axes (a one-line scan); restore (y, x, energy)
    if info["record-by"] == "vector":
        data = data.reshape(info["height"], info["width"], info["depth"])
    else:
        import dask.array as da

        data = da.moveaxis(data.reshape(info["depth"], info["height"], info["width"]), 0, -1)
    if "depth-scale" in info:
        calib = _calibration_from_axis(info.get("depth-origin", 0.0), info["depth-scale"], info.get("depth-units", "keV"), str(rpl))
    elif "ev-per-chan" in info:
        calib = _calibration_from_axis(info.get("depth-origin", 0.0), info["ev-per-chan"], "eV", str(rpl))
    else:
        calib = None
    meta: dict[str, Any] = {"format": "ripple", "raw_file": str(raw)}
    if "live-time" in info:
        meta["live_time_s"] = float(info["live-time"])
    if "beam-energy" in info:
        meta["excitation_kev"] = float(info["beam-energy"])
    px = _length_um(info.get("width-scale"), info.get("width-units"))
    py = _length_um(info.get("height-scale"), info.get("height-units"))
    return XrfCube(data, calib, px, meta, (py, px) if py is not None and px is not None else None)


def _read_bcf(path: Path) -> XrfCube:
    from rsciio.bruker import file_reader

    try:
        entries = file_reader(str(path), lazy=True)
    except Exception as exc:
        raise NightwatchError(f"{path} could not be read as a Bruker .bcf file ({exc}).") from exc
    # the EDS/XRF hypermap is the last entry; images come first. signal_type is not reliable
    # (an M6 XRF cube is labelled EDS), so the dimensions decide.
    cubes = [d for d in entries if getattr(d.get("data"), "ndim", 0) == 3]
    if not cubes:
        raise NightwatchError(f"{path} holds no spectral cube; expected a Bruker hypermap (.bcf with a (y, x, energy) map).")
    return _rsciio_cube_dict(cubes[-1], path, "bruker-bcf")


def guess_energy_axis(shape: tuple[int, ...], dim_names: tuple | None = None) -> int:
    """Which axis of a 3-D array is energy: a named "energy" axis, else first or last.

    Channel counts are multiples of 256 (512, 1024, 2048, 4096) while scan sizes rarely
    are, so when exactly one of the first and last axes is such a multiple, that one is
    energy; otherwise the last axis (the (y, x, energy) convention) is.
    """
    if dim_names:
        names = [str(n).lower() if n is not None else "" for n in dim_names]
        for key in ("energy", "channel", "e"):
            if key in names:
                return names.index(key)
    first, last = shape[0] % 256 == 0, shape[-1] % 256 == 0
    if first and not last:
        return 0
    return len(shape) - 1


def _energy_last(data, e_axis: int):
    if e_axis in (-1, data.ndim - 1):
        return data
    import dask.array as da

    arr = data if isinstance(data, da.Array) else da.from_array(data, chunks=getattr(data, "chunks", None) or "auto")
    return da.moveaxis(arr, e_axis, -1)


def _calibration_from_attrs(attrs: dict, what: str) -> EnergyCalibration | None:
    """A calibration stored as attributes: our own {"calibration": {...}} / offset_kev+gain_kev."""
    a = dict(attrs)
    nw = a.get("nightwatch")
    if isinstance(nw, dict) and isinstance(nw.get("calibration"), dict):
        return EnergyCalibration.from_dict(nw["calibration"])
    if isinstance(a.get("calibration"), dict) and "gain_kev" in a["calibration"]:
        return EnergyCalibration.from_dict(a["calibration"])
    if "offset_kev" in a and "gain_kev" in a:
        return EnergyCalibration(float(np.asarray(a["offset_kev"])), float(np.asarray(a["gain_kev"])))
    return None


def _calibration_from_energies(energies: np.ndarray, what: str) -> EnergyCalibration:
    """Linear keV calibration from an energy column; eV columns (max > 200) are converted."""
    e = np.asarray(energies, np.float64)
    if e.max() > _MAX_TOP_KEV:
        e = e / 1000.0
    ch = np.arange(e.size)
    gain, offset = np.polyfit(ch, e, 1)
    resid = np.abs(offset + gain * ch - e).max()
    if gain <= 0 or resid > 0.01 * abs(gain) + 1e-9:
        raise NightwatchError(f"The energy column of {what} is not evenly spaced increasing energies; expected a linear energy axis.")
    return EnergyCalibration(float(offset), float(gain))


def _read_hdf5(path: Path, dataset: str | None, energy_axis: int | None) -> XrfCube:
    import h5py

    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise NightwatchError(f"{path} could not be opened as an HDF5 file ({exc}).") from exc
    if dataset is None:
        found: list[str] = []
        f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and obj.ndim == 3 else None)
        if len(found) != 1:
            f.close()
            raise NightwatchError(
                f"{path} holds {len(found)} 3-D datasets ({', '.join(found[:6]) or 'none'}); give the cube's path with "
                "dataset=... (CLI: --dataset)."
            )
        dataset = found[0]
    if dataset not in f or not isinstance(f[dataset], h5py.Dataset):
        f.close()
        raise NightwatchError(f"{path} has no dataset '{dataset}'; expected the HDF5 path of the (y, x, energy) cube.")
    dset = f[dataset]
    if dset.ndim != 3:
        f.close()
        raise NightwatchError(f"Dataset '{dataset}' in {path} has shape {dset.shape}; expected a 3-D (y, x, energy) cube.")
    e_axis = guess_energy_axis(dset.shape) if energy_axis is None else energy_axis
    calib = _calibration_from_attrs(dict(dset.attrs), str(path))
    if calib is None:
        parent = dset.parent
        for name in ("energy", "energies", "energy_kev"):
            if name in parent and isinstance(parent[name], h5py.Dataset) and parent[name].shape == (dset.shape[e_axis],):
                e = np.asarray(parent[name][...], np.float64)
                if str(parent[name].attrs.get("units", "keV")).strip().lower() == "ev":
                    e = e / 1000.0
                calib = _calibration_from_energies(e, f"{path}:{parent[name].name}")
                break
    px = dset.attrs.get("pixel_size_um")
    return XrfCube(_energy_last(dset, e_axis), calib, float(px) if px is not None else None,
                   {"format": "hdf5", "dataset": dataset})


def _read_npy(path: Path, energy_axis: int | None) -> XrfCube:
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except Exception as exc:
        raise NightwatchError(f"{path} could not be read as a .npy array ({exc}).") from exc
    if arr.ndim != 3:
        raise NightwatchError(f"{path} holds an array of shape {arr.shape}; expected a 3-D (y, x, energy) cube.")
    e_axis = guess_energy_axis(arr.shape) if energy_axis is None else energy_axis
    return XrfCube(_energy_last(arr, e_axis), None, None, {"format": "npy"})


def _read_zarr(path: Path, dataset: str | None, energy_axis: int | None) -> XrfCube:
    import zarr

    try:
        node = zarr.open(str(path), mode="r")
    except Exception as exc:
        raise NightwatchError(f"{path} could not be opened as a zarr store ({exc}).") from exc
    if isinstance(node, zarr.Group):
        if dataset is None:
            # a painting store holds its cube at xrf/cube; otherwise take the one 3-D array
            found = [p for p, a in node.arrays() if a.ndim == 3] if "xrf" not in node else ["xrf/cube"]
            if len(found) != 1:
                raise NightwatchError(f"{path} holds {len(found)} 3-D arrays at its top; give the cube's path with dataset=... (CLI: --dataset).")
            dataset = found[0]
        if dataset not in node:
            raise NightwatchError(f"{path} has no array '{dataset}'; expected the path of the (y, x, energy) cube.")
        arr = node[dataset]
        parent_attrs = dict(node[dataset.rsplit("/", 1)[0]].attrs) if "/" in dataset else {}
    else:
        arr, parent_attrs = node, {}
    if arr.ndim != 3:
        raise NightwatchError(f"The zarr array {path}{'/' + dataset if dataset else ''} has shape {arr.shape}; expected a 3-D (y, x, energy) cube.")
    names = getattr(arr.metadata, "dimension_names", None)
    e_axis = guess_energy_axis(arr.shape, names) if energy_axis is None else energy_axis
    calib = _calibration_from_attrs(dict(arr.attrs), str(path)) or _calibration_from_attrs(parent_attrs, str(path))
    px = (parent_attrs.get("nightwatch") or {}).get("pixel_size_um") or dict(arr.attrs).get("pixel_size_um")
    return XrfCube(_energy_last(arr, e_axis), calib, float(px) if px else None, {"format": "zarr", "dataset": dataset})


def read_cube(path: str | Path, *, dataset: str | None = None, energy_axis: int | None = None) -> XrfCube:
    """Read an MA-XRF cube lazily, energy axis last; the file is opened read-only.

    Parameters
    ----------
    path
        Bruker M6 ripple ``.rpl`` (with its ``.raw``) or ``.raw``, Bruker ``.bcf`` (both through
        rosettasciio), HDF5 (``.h5``/``.hdf5``/``.nxs``), ``.npy`` (memory-mapped) or a zarr array/group.
    dataset
        Path of the cube inside an HDF5 file or zarr group (default: the only 3-D one).
    energy_axis
        Which axis is energy for HDF5/npy/zarr; default: a zarr ``energy`` dimension name, else
        see :func:`guess_energy_axis`.

    Returns
    -------
    XrfCube
        Data ``(y, x, energy)`` and what the file says about calibration and pixel size.
    """
    p = Path(path)
    if not p.exists():
        raise NightwatchError(f"MA-XRF file {p} does not exist.")
    suffix = p.suffix.lower()
    is_zarr = p.is_dir() and ((p / "zarr.json").exists() or (p / ".zgroup").exists() or (p / ".zarray").exists())
    if suffix in (".rpl", ".raw"):
        cube = _read_ripple(p)
    elif suffix == ".bcf":
        cube = _read_bcf(p)
    elif suffix in (".h5", ".hdf5", ".hdf", ".nxs"):
        cube = _read_hdf5(p, dataset, energy_axis)
    elif suffix == ".npy":
        cube = _read_npy(p, energy_axis)
    elif is_zarr or suffix == ".zarr":
        cube = _read_zarr(p, dataset, energy_axis)
    else:
        raise NightwatchError(
            f"MA-XRF file {p} has an unknown type ('{suffix or 'folder'}'); expected .rpl/.raw (ripple), .bcf (Bruker), "
            ".h5/.hdf5 (with --dataset), .npy or a zarr store."
        )
    if cube.data.ndim != 3:
        raise NightwatchError(f"{p} holds data of shape {tuple(cube.data.shape)}; expected a 3-D (y, x, energy) cube.")
    cube.metadata["source_file"] = str(p.resolve())
    return cube


# ------------------------------------------------------------------------------ single spectra
def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="latin-1")
    except OSError as exc:
        raise NightwatchError(f"Spectrum file {path} could not be read ({exc}).") from exc


def _numbers(tokens, path: Path, what: str) -> np.ndarray:
    try:
        return np.array([float(t) for t in tokens], np.float64)
    except ValueError as exc:
        raise NightwatchError(f"{path}: the {what} contains a non-number ({exc}); expected counts only.") from exc


def _read_gse_mca(path: Path, text: str) -> Spectrum:
    """GSE/EPICS multi-element MCA text: ``KEY: values`` header, then ``DATA:`` rows (one column per element).

    Elements are summed; the calibration is the first element's (their gains differ by
    well under a channel over the range in practice; all are kept in metadata).
    """
    head, _, body = text.partition("DATA:")
    hdr: dict[str, list[str]] = {}
    for line in head.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            hdr[k.strip().upper()] = v.split()
    rows = [r.split() for r in body.splitlines() if r.strip()]
    if not rows:
        raise NightwatchError(f"{path} has a DATA: section without counts; expected one row per channel.")
    ncol = len(rows[0])
    counts = _numbers([t for r in rows for t in r], path, "DATA section").reshape(-1, ncol)
    calib = None
    offs, slopes = hdr.get("CAL_OFFSET"), hdr.get("CAL_SLOPE")
    if offs and slopes:
        quads = hdr.get("CAL_QUAD", ["0"] * len(offs))
        calib = EnergyCalibration(float(offs[0]), float(slopes[0]), float(quads[0]))
    meta: dict[str, Any] = {"format": "gse-mca", "n_elements": ncol}
    if offs and slopes:
        meta["element_calibrations"] = [[float(o), float(s)] for o, s in zip(offs, slopes, strict=False)]
    for key, name in (("LIVE_TIME", "live_time_s"), ("REAL_TIME", "real_time_s")):
        if key in hdr:
            meta[name] = float(np.sum([float(v) for v in hdr[key]]))
    return Spectrum(counts.sum(axis=1), calib, meta)


def _read_amptek_mca(path: Path, text: str) -> Spectrum:
    """Amptek MCA8000 text: ``<<DATA>>`` ... ``<<END>>``, optional ``<<CALIBRATION>>`` channel/energy pairs."""
    body = text.split("<<DATA>>", 1)[1].split("<<END>>", 1)[0]
    counts = _numbers(body.split(), path, "<<DATA>> section")
    calib = None
    if "<<CALIBRATION>>" in text:
        pairs = []
        for line in text.split("<<CALIBRATION>>", 1)[1].split("<<", 1)[0].splitlines():
            toks = line.split()
            if len(toks) == 2:
                try:
                    pairs.append((float(toks[0]), float(toks[1])))
                except ValueError:
                    continue
        if len(pairs) >= 2:
            ch, e = np.array(pairs).T
            gain, offset = np.polyfit(ch, e, 1)
            calib = EnergyCalibration(float(offset), float(gain))
    return Spectrum(counts, calib, {"format": "amptek-mca"})


def _read_column_text(path: Path, text: str, fmt: str) -> Spectrum:
    """PyMca-style single column of counts (``#`` comments, optional ``#@CALIB a b c``), or
    two columns (channel or energy in keV, counts), comma or whitespace separated."""
    calib = None
    rows = []
    for line in text.splitlines():
        s = line.strip()
        if s.startswith("#@CALIB"):
            v = [float(t) for t in s.split()[1:4]]
            if len(v) >= 2 and v[1] > 0:
                calib = EnergyCalibration(v[0], v[1], v[2] if len(v) > 2 else 0.0)
            continue
        if not s or s.startswith(("#", "%", ";")):
            continue
        toks = s.replace(",", " ").replace(";", " ").split()
        try:
            rows.append([float(t) for t in toks])
        except ValueError:
            if rows:
                raise NightwatchError(f"{path}: line {s[:40]!r} is not numbers; expected one or two numeric columns.") from None
            continue  # a header line before the numbers
    if not rows:
        raise NightwatchError(f"{path} contains no numbers; expected a column of counts or (energy keV, counts) pairs.")
    widths = {len(r) for r in rows}
    if len(widths) != 1 or widths.pop() not in (1, 2):
        raise NightwatchError(f"{path} has rows of {sorted({len(r) for r in rows})} columns; expected 1 (counts) or 2 (energy keV, counts).")
    a = np.asarray(rows, np.float64)
    if a.shape[1] == 1:
        return Spectrum(a[:, 0], calib, {"format": fmt})
    x, counts = a[:, 0], a[:, 1]
    if not np.isfinite(x).all():
        raise NightwatchError(f"{path}: the first column (channel or energy in keV) holds NaN or infinite values.")
    if np.array_equal(x, np.arange(x.size)):
        return Spectrum(counts, calib, {"format": fmt, "first_column": "channel"})
    return Spectrum(counts, _calibration_from_energies(x, str(path)), {"format": fmt, "first_column": "energy"})


def _read_spe(path: Path, text: str) -> Spectrum:
    """SPEC/ORTEC ``.spe``: ``$DATA:`` then ``first last`` then counts; ``$MCA_CAL:``/``$ENER_FIT:`` calibrate."""
    if "$DATA:" not in text:
        raise NightwatchError(f"{path} has no $DATA: section; expected an .spe spectrum.")
    sections: dict[str, list[str]] = {}
    for chunk in text.split("$")[1:]:
        key, _, body = chunk.partition(":")
        sections[key.strip().upper()] = body.split()
    tok = sections["DATA"]
    n0, n1 = int(tok[0]), int(tok[1])
    counts = _numbers(tok[2 : 2 + n1 - n0 + 1], path, "$DATA section")
    if counts.size != n1 - n0 + 1:
        raise NightwatchError(f"{path} announces channels {n0}..{n1} but holds {counts.size} counts.")
    calib = None
    if "MCA_CAL" in sections and len(sections["MCA_CAL"]) >= 3:
        n = int(sections["MCA_CAL"][0])
        coef = [float(v) for v in sections["MCA_CAL"][1 : 1 + n]]
        unit = sections["MCA_CAL"][1 + n] if len(sections["MCA_CAL"]) > 1 + n else "keV"
        factor = 1e-3 if unit.lower() == "ev" else 1.0
        calib = EnergyCalibration(coef[0] * factor, coef[1] * factor, (coef[2] if n > 2 else 0.0) * factor)
    elif "ENER_FIT" in sections and len(sections["ENER_FIT"]) >= 2:
        calib = EnergyCalibration(float(sections["ENER_FIT"][0]), float(sections["ENER_FIT"][1]))
    return Spectrum(counts, calib, {"format": "spe", "first_channel": n0})


def _read_rsciio_spectrum(path: Path, module: str, fmt: str) -> Spectrum:
    import importlib

    reader = importlib.import_module(f"rsciio.{module}").file_reader
    try:
        entries = reader(str(path))
    except Exception as exc:
        raise NightwatchError(f"{path} could not be read as a {fmt} spectrum ({exc}).") from exc
    d = entries[-1] if module == "bruker" else entries[0]
    data = np.asarray(d["data"], np.float64)
    if data.ndim != 1:
        raise NightwatchError(f"{path} holds data of shape {data.shape}; expected one spectrum (use read_cube for maps).")
    ax = d["axes"][-1]
    calib = _calibration_from_axis(ax.get("offset", 0.0), ax.get("scale", 1.0), ax.get("units"), str(path))
    meta: dict[str, Any] = {"format": fmt}
    for inst in (d.get("metadata", {}).get("Acquisition_instrument", {}) or {}).values():
        if isinstance(inst, dict):
            det = inst.get("Detector", {}).get("EDS", {})
            if "live_time" in det:
                meta["live_time_s"] = float(det["live_time"])
            if "beam_energy" in inst:
                meta["excitation_kev"] = float(inst["beam_energy"])
    return Spectrum(data, calib, meta)


def read_spectrum(path: str | Path, *, calibration: EnergyCalibration | None = None) -> Spectrum:
    """Read one XRF spectrum (for queries and calibration checks); the file is opened read-only.

    Parameters
    ----------
    path
        ``.spx`` (Bruker, rosettasciio), ``.mca`` (PyMca single column, GSE/EPICS multi-element
        with CAL_OFFSET/CAL_SLOPE, elements summed; Amptek), ``.xrf`` (GSE), ``.msa``/``.emsa``/
        EMSA ``.txt`` (rosettasciio), ``.spe`` (SPEC ``$DATA:``), ``.csv``/``.txt``/``.dat`` with one
        (counts) or two (energy keV, counts) columns, ``.hspy`` (rosettasciio).
    calibration
        Overrides the file's calibration (or supplies one the file lacks).

    Returns
    -------
    Spectrum
        Counts as float64, calibration (or None) and metadata.
    """
    p = Path(path)
    if not p.is_file():
        raise NightwatchError(f"Spectrum file {p} does not exist.")
    suffix = p.suffix.lower()
    if suffix == ".spx":
        spec = _read_rsciio_spectrum(p, "bruker", "Bruker .spx")
    elif suffix == ".hspy":
        spec = _read_rsciio_spectrum(p, "hspy", "HyperSpy .hspy")
    elif suffix in (".msa", ".emsa") or (suffix == ".txt" and _read_text(p).lstrip().startswith("#FORMAT")):
        spec = _read_rsciio_spectrum(p, "msa", "EMSA/MSA")
    elif suffix in (".mca", ".xrf"):
        text = _read_text(p)
        if "<<DATA>>" in text:
            spec = _read_amptek_mca(p, text)
        elif "\nDATA:" in text or text.startswith("DATA:"):
            spec = _read_gse_mca(p, text)
        else:
            spec = _read_column_text(p, text, "pymca-mca")
    elif suffix == ".spe":
        spec = _read_spe(p, _read_text(p))
    elif suffix in (".txt", ".csv", ".dat"):
        spec = _read_column_text(p, _read_text(p), "text")
    else:
        raise NightwatchError(
            f"Spectrum file {p} has an unknown type ('{suffix}'); expected .spx, .mca, .xrf, .msa/.emsa, .spe, "
            ".txt/.csv (energy keV, counts) or .hspy."
        )
    if spec.counts.size < 2:
        raise NightwatchError(f"{p} holds {spec.counts.size} channel(s); expected a spectrum.")
    counts = np.asarray(spec.counts, np.float64)
    if not np.isfinite(counts).all() or (counts < 0).any():
        bad = int((~np.isfinite(counts)).sum() + (counts < 0).sum())
        raise NightwatchError(f"{p} holds {bad} channel(s) whose counts are NaN, infinite or negative; "
                              "expected counts of 0 or more.")
    if calibration is not None:
        if spec.calibration is not None:
            spec.metadata["file_calibration"] = spec.calibration.to_dict()
        spec.calibration = calibration
    spec.metadata["source_file"] = str(p.resolve())
    return spec


