"""The third door's query input: a cube pixel, a region or a spectrum file turned
into a vector in the image model's space by a trained spectrum encoder."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ...core.errors import NightwatchError
from ...store import PaintingStore
from ...xrf.pairing import xrf_query_box
from .models import load_xrf_bridge


# ------------------------------------------------------------------------------- spectrum search
def _spectrum_on_axis(energies: np.ndarray, counts: np.ndarray, store, what: str) -> np.ndarray:
    """Bring a spectrum onto the cube's channel axis, or say why it cannot be.

    Counts are rebinned per energy interval (the XRF engine's
    :func:`~napari_nightwatch.xrf.spectra.rebin_spectrum`), so finer or coarser
    channels keep the spectrum's shape.  The file must cover the energies where the
    cube has its counts: beyond the file's range there is nothing to compare, and a
    truncated spectrum would look like another composition.
    """
    from ...xrf.spectra import rebin_spectrum

    target = store.xrf_energies()
    e = np.asarray(energies, dtype=np.float64)
    c = np.asarray(counts, dtype=np.float64)
    if e.shape != c.shape or e.ndim != 1 or e.size < 2:
        raise NightwatchError(f"{what} must be one spectrum with an energy per channel.")
    if not np.all(np.isfinite(c)) or (c < 0).any():
        raise NightwatchError(f"{what} has NaN or negative counts.")
    sumspec = store.xrf_sum_spectrum()
    outside = (target < e.min()) | (target > e.max())
    lost = float(sumspec[outside].sum() / max(sumspec.sum(), 1e-12))
    if lost > 0.05:
        raise NightwatchError(
            f"{what} covers {e.min():.2f}-{e.max():.2f} keV but {lost:.0%} of the cube's counts lie outside that range "
            f"(cube: {target[0]:.2f}-{target[-1]:.2f} keV); give a spectrum measured over the cube's energy range."
        )
    return rebin_spectrum(c, e, target)


def _read_spectrum_file(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(energies keV, counts) of a spectrum file read by the XRF file readers."""
    from ...io.xrf_files import read_spectrum

    spec = read_spectrum(path)
    if spec.calibration is None:
        raise NightwatchError(f"Spectrum file {path} has no energy calibration, so it cannot be put on the cube's energy axis.")
    return spec.energies(), np.asarray(spec.counts, dtype=np.float64)


def query_input(
    store,
    *,
    spectrum_file: str | Path | None = None,
    xrf_pixel: tuple[int, int] | None = None,
    xrf_region: tuple[int, int, int, int] | None = None,
) -> tuple[np.ndarray, str]:
    """The raw encoder input for a query: a spectrum on the cube axis, or a maps vector."""
    given = [a is not None for a in (spectrum_file, xrf_pixel, xrf_region)]
    if sum(given) != 1:
        raise NightwatchError("Give exactly one of a spectrum file (--spectrum), an XRF pixel (--xrf-pixel) or region (--xrf-region).")
    kind = store.xrf_kind
    if spectrum_file is not None:
        if kind != "cube":
            raise NightwatchError(
                f"{store.path} holds exported element maps, not a spectral cube, so a spectrum file cannot be compared; "
                "query by --xrf-pixel or --xrf-region instead."
            )
        path = Path(spectrum_file)
        if not path.is_file():
            raise NightwatchError(f"Spectrum file {path} does not exist.")
        e, c = _read_spectrum_file(path)
        return _spectrum_on_axis(e, c, store, f"Spectrum file {path}"), f"file {path.name}"
    (y0, x0, y1, x1), what = xrf_query_box(store, xrf_pixel, xrf_region)
    if kind == "cube":
        block = np.asarray(store.xrf_cube()[y0:y1, x0:x1], dtype=np.float64)
        return block.reshape(-1, block.shape[-1]).mean(0), what
    from ...xrf.pairing import load_element_intensity_maps

    _, maps = load_element_intensity_maps(store)
    return np.nanmean(maps[:, y0:y1, x0:x1].reshape(maps.shape[0], -1), axis=1), what


def spectrum_query_vector(
    store,
    *,
    spectrum_file: str | Path | None = None,
    xrf_pixel: tuple[int, int] | None = None,
    xrf_region: tuple[int, int, int, int] | None = None,
    grid_id: str | None = None,
    model_id: str | None = None,
) -> tuple[np.ndarray, str]:
    """A query vector in the image model's embedding space from an XRF spectrum.

    Parameters
    ----------
    store
        Painting store (path or :class:`~napari_nightwatch.store.PaintingStore`)
        with a trained spectrum encoder.
    spectrum_file
        A single-spectrum file (any format the XRF engine reads), resampled onto
        the cube's energy axis.
    xrf_pixel
        ``(y, x)`` XRF pixel of the cube (or of the imported maps).
    xrf_region
        ``(y0, x0, y1, x1)`` XRF pixels: the mean spectrum of the rectangle.
    grid_id
        Use the encoder trained on this grid (default: the newest encoder).
    model_id
        Use the encoder trained against this image model; another model's encoder
        is refused with one sentence.

    Returns
    -------
    vector, model_id
        ``(dim,)`` float32 unit vector and the image model whose index to search.
    """

    if not isinstance(store, PaintingStore):
        store = PaintingStore.open(store)
    bridge = load_xrf_bridge(store, image_model_id=model_id, grid_id=grid_id)
    x, _ = query_input(store, spectrum_file=spectrum_file, xrf_pixel=xrf_pixel, xrf_region=xrf_region)
    if float(np.sum(x)) <= 0:
        raise NightwatchError("The query spectrum has no counts.")
    return bridge.encode(x[None])[0].astype(np.float32), bridge.image_model_id
