"""MA-XRF cube and spectrum readers on real files, cube import, and bad inputs."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_file
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.spectra import EnergyCalibration
from napari_nightwatch.io.xrf_files import read_cube, read_spectrum
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.sources import import_xrf

# tabulated line energies (keV), xraydb
CA_KA, FE_KA, CU_KA, SI_KA, AL_KA = 3.6917, 6.4039, 8.0478, 1.7398, 1.4865


def _peak_kev(counts: np.ndarray, calib: EnergyCalibration, above_kev: float = 1.0, below_kev: float = 99.0) -> float:
    e = calib.energies(counts.size)
    return float(e[np.argmax(np.where((e > above_kev) & (e < below_kev), counts.astype(np.float64), -1.0))])


def _digest(path: Path) -> tuple[str, int]:
    return hashlib.sha1(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


# ------------------------------------------------------------------------ single spectra, real files
def test_spx_m6_calcium_peak():
    s = read_spectrum(shared_file("bruker-rsciio/bruker_m6_jetstream_file_example.spx"))
    assert s.counts.shape == (4096,) and s.counts.dtype == np.float64
    assert abs(_peak_kev(s.counts, s.calibration) - CA_KA) < 0.030
    assert s.metadata["live_time_s"] == pytest.approx(28.046)


def test_spe_steel_iron_peak_with_given_calibration():
    path = shared_file("pymca-spectra/Steel.spe")
    s = read_spectrum(path)
    assert s.counts.shape == (2048,) and s.calibration is None
    cal = EnergyCalibration(-0.00612446976449, 0.0119281593146)  # Steel.cfg, per SOURCE.md
    s = read_spectrum(path, calibration=cal)
    assert abs(_peak_kev(s.counts, s.calibration) - FE_KA) < 0.030


def test_pymca_mca_single_column():
    s = read_spectrum(shared_file("pymca-spectra/XRFSpectrum.mca"))
    assert s.counts.shape == (4096,) and s.calibration is None
    assert s.counts.sum() == pytest.approx(56.6e6, rel=0.01)
    with pytest.raises(NightwatchError, match="no energy calibration"):
        s.energies()


def test_gse_mca_sums_elements_and_places_copper():
    path = shared_file("larch-gse-mca/srm1832.mca")
    s = read_spectrum(path)
    assert s.counts.shape == (2048,) and s.metadata["n_elements"] == 4
    # the sum equals the four columns summed, read independently
    hdr, dat = path.read_text().split("DATA:")
    a = np.array(dat.split(), float).reshape(-1, 4)
    np.testing.assert_array_equal(s.counts, a.sum(1))
    assert abs(_peak_kev(s.counts, s.calibration) - CU_KA) < 0.030


def test_emsa_nist_2587_iron_peak():
    s = read_spectrum(shared_file("xrflab-emsa-standards/NIST_2587.txt"))
    assert s.counts.shape == (4096,)
    assert s.calibration.offset_kev == pytest.approx(-0.40) and s.calibration.gain_kev == pytest.approx(0.01)
    assert abs(_peak_kev(s.counts, s.calibration) - FE_KA) < 0.030


def test_two_column_text_brass():
    s = read_spectrum(shared_file("xrflab-emsa-standards/brass_sample.txt"))
    assert s.counts.shape == (2048,) and s.metadata["first_column"] == "energy"
    assert abs(_peak_kev(s.counts, s.calibration) - CU_KA) < 0.030


def test_hspy_spectrum():
    s = read_spectrum(shared_file("exspy-eds-spectra/EDS_SEM_TM002.hspy"))
    assert s.counts.shape == (1024,)
    assert abs(_peak_kev(s.counts, s.calibration) - AL_KA) < 0.030


def test_csv_and_ev_units_and_amptek(tmp_path):
    e = np.arange(500) * 0.02 + 0.1
    y = np.exp(-((e - FE_KA) ** 2) / 0.01)
    p = tmp_path / "s.csv"
    p.write_text("energy_eV,counts\n" + "\n".join(f"{a * 1000:.3f},{b:.6f}" for a, b in zip(e, y, strict=True)))
    s = read_spectrum(p)
    assert s.calibration.gain_kev == pytest.approx(0.02) and s.calibration.offset_kev == pytest.approx(0.1)
    assert abs(_peak_kev(s.counts, s.calibration) - FE_KA) < 0.02
    am = tmp_path / "a.mca"
    am.write_text("<<PMCA SPECTRUM>>\nTAG - live_data\n<<CALIBRATION>>\nLABEL - Channel\n100 2.0\n400 8.0\n<<DATA>>\n"
                  + "\n".join(str(int(v * 100)) for v in y) + "\n<<END>>\n")
    s = read_spectrum(am)
    assert s.calibration.gain_kev == pytest.approx(0.02) and s.calibration.offset_kev == pytest.approx(0.0)
    assert s.counts.size == 500


# ------------------------------------------------------------------------ cubes, real files
@pytest.mark.parametrize(
    "name,shape,line",
    [("Hitachi_TM3030Plus.bcf", (240, 320, 2048), CU_KA),
     ("30x30_instructively_packed_16bit_compressed.bcf", (30, 30, 2048), SI_KA)],
)
def test_bcf_cube(name, shape, line):
    c = read_cube(shared_file(f"bruker-rsciio/{name}"))
    assert c.data.shape == shape
    total = np.asarray(c.data).reshape(-1, shape[-1]).sum(0)
    below = 8.5 if line == CU_KA else 99.0
    assert abs(_peak_kev(total, c.calibration, below_kev=below) - line) < 0.030


def test_import_bcf_into_store(tmp_path):
    src = shared_file("bruker-rsciio/30x30_instructively_packed_16bit_compressed.bcf")
    before = _digest(src)
    store = import_xrf(src, tmp_path / "p.nightwatch.zarr")
    assert store.has_xrf and store.xrf_shape == (30, 30)
    assert store.xrf_pixel_size_um == pytest.approx(1.6674, rel=1e-3)
    cube = np.asarray(read_cube(src).data)
    np.testing.assert_array_equal(store.xrf_cube().compute(), cube)
    np.testing.assert_array_equal(store.xrf_sum_spectrum(), cube.reshape(-1, 2048).sum(0))
    assert abs(_peak_kev(store.xrf_sum_spectrum(), store.xrf_calibration) - SI_KA) < 0.030
    assert store.xrf_info["excitation_kev"] == 20.0
    assert _digest(src) == before


# ------------------------------------------------------------------------ ripple, npy, hdf5, zarr
def _write_ripple(path: Path, cube: np.ndarray, offset_ev: float, scale_ev: float, px_um: float) -> None:
    from rsciio.ripple import file_writer

    ny, nx, ne = cube.shape
    axes = [{"name": "height", "size": ny, "offset": 0, "scale": px_um, "units": "µm", "navigate": True},
            {"name": "width", "size": nx, "offset": 0, "scale": px_um, "units": "µm", "navigate": True},
            {"name": "Energy", "size": ne, "offset": offset_ev, "scale": scale_ev, "units": "eV", "navigate": False}]
    md = {"General": {"title": "t"}, "Signal": {"signal_type": "EDS_SEM"},
          "Acquisition_instrument": {"SEM": {"beam_energy": 50.0, "Detector": {"EDS": {"live_time": 0.01}}}}}
    file_writer(str(path), {"data": cube, "axes": axes, "metadata": md, "original_metadata": {}})


def test_ripple_written_by_rsciio_imports(tmp_path):
    rng = np.random.default_rng(3)
    cube = rng.poisson(2.0, size=(9, 11, 512)).astype(np.uint16)
    _write_ripple(tmp_path / "scan.rpl", cube, offset_ev=-956.0, scale_ev=20.0, px_um=250.0)
    before = _digest(tmp_path / "scan.raw")
    c = read_cube(tmp_path / "scan.raw")  # the .raw finds its header
    assert c.calibration == EnergyCalibration(-0.956, 0.020)
    assert c.pixel_size_um == 250.0
    store = import_xrf(tmp_path / "scan.rpl", tmp_path / "p.nightwatch.zarr")
    np.testing.assert_array_equal(store.xrf_cube().compute(), cube)
    np.testing.assert_array_equal(store.xrf_total().compute(), cube.sum(2))
    assert store.xrf_info["live_time_s"] == 0.01 and store.xrf_info["calibration_from"] == "file"
    assert _digest(tmp_path / "scan.raw") == before


def test_bruker_m6_ripple_header(tmp_path):
    """The real M6 header (space separated, depthscale* keys) with a .raw we write."""
    hdr = shared_file("vgm-xrf-explorer/data.rpl_header_only.rpl")
    shutil.copy(hdr, tmp_path / "m6.rpl")
    cube = np.arange(300 * 300 * 3, dtype=np.uint16).reshape(300, 300, 3)
    cube.tofile(tmp_path / "m6.raw")
    c = read_cube(tmp_path / "m6.rpl")
    assert c.data.shape == (300, 300, 3)
    np.testing.assert_array_equal(np.asarray(c.data), cube)
    assert c.calibration == EnergyCalibration(-0.956, 0.010002)


def test_npy_energy_first_and_given_calibration(tmp_path):
    rng = np.random.default_rng(4)
    cube = rng.poisson(1.0, size=(1024, 13, 17)).astype(np.float32)  # (energy, y, x)
    np.save(tmp_path / "c.npy", cube)
    with pytest.raises(NightwatchError, match=r"c\.npy carries no energy calibration.*--energy-offset-kev"):
        import_xrf(tmp_path / "c.npy", tmp_path / "p.nightwatch.zarr", pixel_size_um=100)
    assert not (tmp_path / "p.nightwatch.zarr").exists()
    store = import_xrf(tmp_path / "c.npy", tmp_path / "p.nightwatch.zarr", pixel_size_um=100,
                       calibration=EnergyCalibration(0.0, 0.02))
    np.testing.assert_array_equal(store.xrf_cube().compute(), cube.transpose(1, 2, 0))
    assert store.xrf_pixel_size_um == 100 and store.xrf_info["calibration_from"] == "given"


def test_hdf5_dataset_path_and_energy_dataset(tmp_path):
    import h5py

    cube = np.random.default_rng(5).integers(0, 50, size=(6, 8, 256), dtype=np.uint32)
    with h5py.File(tmp_path / "c.h5", "w") as f:
        f["scan/data"] = cube
        f["scan/energy"] = np.arange(256) * 40.0 + 100.0
        f["scan/energy"].attrs["units"] = "eV"
        f["other/data"] = cube[..., :10]
    with pytest.raises(NightwatchError, match="2 3-D datasets.*--dataset"):
        read_cube(tmp_path / "c.h5")
    with pytest.raises(NightwatchError, match="no dataset 'nope'"):
        read_cube(tmp_path / "c.h5", dataset="nope")
    c = read_cube(tmp_path / "c.h5", dataset="scan/data")
    assert c.calibration.gain_kev == pytest.approx(0.04) and c.calibration.offset_kev == pytest.approx(0.1)
    store = import_xrf(tmp_path / "c.h5", tmp_path / "p.nightwatch.zarr", dataset="scan/data", pixel_size_um=50)
    np.testing.assert_array_equal(store.xrf_cube().compute(), cube)


def test_zarr_cube_with_energy_dimension(tmp_path):
    import zarr

    cube = np.random.default_rng(6).integers(0, 9, size=(5, 300, 7), dtype=np.uint16)  # (y, energy, x)
    z = zarr.create_array(str(tmp_path / "c.zarr"), shape=cube.shape, dtype=cube.dtype, chunks=cube.shape,
                          dimension_names=("y", "energy", "x"))
    z[...] = cube
    z.attrs["offset_kev"], z.attrs["gain_kev"] = 0.0, 0.05
    c = read_cube(tmp_path / "c.zarr")
    assert c.data.shape == (5, 7, 300) and c.calibration == EnergyCalibration(0.0, 0.05)
    np.testing.assert_array_equal(np.asarray(c.data), cube.transpose(0, 2, 1))


# ------------------------------------------------------------------------ bad inputs
def test_bad_cube_inputs(tmp_path):
    with pytest.raises(NightwatchError, match="does not exist"):
        read_cube(tmp_path / "missing.bcf")
    (tmp_path / "x.foo").write_text("x")
    with pytest.raises(NightwatchError, match=r"x\.foo has an unknown type.*\.rpl"):
        read_cube(tmp_path / "x.foo")
    np.save(tmp_path / "flat.npy", np.zeros((10, 1024)))
    with pytest.raises(NightwatchError, match=r"flat\.npy.*\(10, 1024\); expected a 3-D"):
        import_xrf(tmp_path / "flat.npy", tmp_path / "p.nightwatch.zarr", calibration=EnergyCalibration(0, 0.01),
                   pixel_size_um=10)
    (tmp_path / "corrupt.bcf").write_bytes(b"not a bcf" * 100)
    with pytest.raises(NightwatchError, match=r"corrupt\.bcf could not be read as a Bruker"):
        read_cube(tmp_path / "corrupt.bcf")
    assert not (tmp_path / "p.nightwatch.zarr").exists()


def test_energy_axis_not_matching_calibration_leaves_store_untouched(tmp_path):
    np.save(tmp_path / "c.npy", np.ones((4, 4, 2048), np.uint16))
    store = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    # an eV gain given as keV: 2048 channels would end at 20 MeV
    with pytest.raises(NightwatchError, match=r"c\.npy: an energy axis of 2048 channels.*ends at"):
        import_xrf(tmp_path / "c.npy", store, calibration=EnergyCalibration(0.0, 10.0), pixel_size_um=10)
    assert not store.has("xrf") and not store.has_xrf


def test_truncated_raw_and_missing_header(tmp_path):
    cube = np.ones((4, 5, 64), np.uint16)
    _write_ripple(tmp_path / "s.rpl", cube, 0.0, 100.0, 10.0)
    data = (tmp_path / "s.raw").read_bytes()
    (tmp_path / "s.raw").write_bytes(data[:100])
    with pytest.raises(NightwatchError, match=r"s\.raw has 100 bytes"):
        read_cube(tmp_path / "s.rpl")
    (tmp_path / "lonely.raw").write_bytes(b"\x00" * 64)
    with pytest.raises(NightwatchError, match="needs its ripple header"):
        read_cube(tmp_path / "lonely.raw")


def test_bad_spectrum_inputs(tmp_path):
    with pytest.raises(NightwatchError, match="does not exist"):
        read_spectrum(tmp_path / "none.mca")
    (tmp_path / "s.xyz").write_text("1\n2\n")
    with pytest.raises(NightwatchError, match=r"s\.xyz has an unknown type"):
        read_spectrum(tmp_path / "s.xyz")
    (tmp_path / "bad.csv").write_text("1,2,3\n4,5,6\n")
    with pytest.raises(NightwatchError, match="expected 1 \\(counts\\) or 2"):
        read_spectrum(tmp_path / "bad.csv")
    (tmp_path / "bad.spe").write_text("$SPEC_ID:\nnothing\n")
    with pytest.raises(NightwatchError, match="no \\$DATA: section"):
        read_spectrum(tmp_path / "bad.spe")


def test_cli_import_xrf(tmp_path):
    from napari_nightwatch.cli import main

    np.save(tmp_path / "c.npy", np.ones((3, 4, 256), np.uint16))
    out = tmp_path / "p.nightwatch.zarr"
    assert main(["import-xrf", str(tmp_path / "c.npy"), str(out), "--json"]) == 2
    assert main(["import-xrf", str(tmp_path / "c.npy"), str(out), "--energy-offset-kev", "0", "--energy-gain-kev", "0.05",
                 "--pixel-size-um", "200", "--json"]) == 0
    assert PaintingStore.open(out).xrf_calibration == EnergyCalibration(0.0, 0.05)


def test_newer_schema_store_refused_for_xrf(tmp_path):
    import json

    p = tmp_path / "p.nightwatch.zarr"
    PaintingStore.create(p)
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["nightwatch"]["schema_version"] = 99
    (p / "zarr.json").write_text(json.dumps(meta))
    np.save(tmp_path / "c.npy", np.ones((3, 4, 256), np.uint16))
    with pytest.raises(NightwatchError, match="newer than"):
        import_xrf(tmp_path / "c.npy", p, calibration=EnergyCalibration(0, 0.05), pixel_size_um=10)
    assert not (p / "xrf").exists()
