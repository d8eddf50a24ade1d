"""Registration of the XRF data onto the mosaic (issue 5): control points, automatic
refinement on the synthetic painting (true affine known), the real miniature."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import shared_file
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.core.geometry import apply_affine
from napari_nightwatch.xrf.registration import fit_control_points, read_control_points, register_store


def _corner_error_xrf_px(a: np.ndarray, b: np.ndarray, shape: tuple[int, int], xrf_px: float) -> float:
    """Largest displacement (in XRF pixels) between two affines over the scan's corners."""
    ny, nx = shape
    c = np.array([[0, 0], [0, nx - 1], [ny - 1, 0], [ny - 1, nx - 1]], float)
    return float(np.abs(apply_affine(a, c) - apply_affine(b, c)).max() / xrf_px)


def test_control_points_recover_a_known_affine_with_residual(tmp_path):
    rng = np.random.default_rng(3)
    true = np.array([[7.9, 0.4, 12.0], [-0.35, 8.1, -30.0], [0, 0, 1]])
    xrf = rng.uniform(0, 60, (6, 2))
    mosaic = apply_affine(true, xrf) + rng.normal(0, 0.5, (6, 2))  # clicking noise, half a pixel
    csv = tmp_path / "points.csv"
    csv.write_text("xrf_y,xrf_x,mosaic_y,mosaic_x\n" + "\n".join(",".join(f"{v:.4f}" for v in (*a, *b)) for a, b in zip(xrf, mosaic, strict=True)))
    src, dst = read_control_points(csv)
    res = fit_control_points(src, dst, pixel_size_um=5.0)
    assert _corner_error_xrf_px(res.affine, true, (60, 60), 8.0) < 0.25
    assert 0.1 < res.rms_px < 1.0 and res.max_px >= res.rms_px
    assert res.rms_um == pytest.approx(5.0 * res.rms_px)
    sim = fit_control_points(src, dst, kind="similarity", pixel_size_um=5.0)
    # the true map has shear, so a similarity fits worse: the residual says so
    assert sim.rms_px > 3 * res.rms_px


def test_control_points_bad_input(tmp_path):
    with pytest.raises(NightwatchError, match="at least 3"):
        fit_control_points(np.array([[0, 0], [1, 1.0]]), np.array([[0, 0], [8, 8.0]]))
    line = np.array([[0, 0], [1, 1], [2, 2], [3, 3.0]])
    with pytest.raises(NightwatchError, match="one line"):
        fit_control_points(line, line * 8)
    bad = tmp_path / "bad.csv"
    bad.write_text("y,x,my,mx\n1,2,3,4\n")
    with pytest.raises(NightwatchError, match="xrf_y"):
        read_control_points(bad)


@pytest.fixture(scope="module")
def synthetic_store(tmp_path_factory):
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting

    store = synthesize_painting(tmp_path_factory.mktemp("reg") / "reg.nightwatch.zarr", size=512, seed=1)
    return store, load_ground_truth(store)


def test_auto_registration_recovers_the_true_affine(synthetic_store):
    store, gt = synthetic_store
    shape = store.xrf_shape
    px = float(gt.xrf_pixel)
    # start 3 XRF pixels off the nominal placement, which is itself off the truth
    start = np.array([[1, 0, 3 * px], [0, 1, -2 * px], [0, 0, 1.0]]) @ gt.nominal_affine
    store.set_xrf_affine(start, method="test start")
    before = _corner_error_xrf_px(start, gt.true_affine, shape, px)
    res = register_store(store, auto=True)  # no element maps here: energy bands of the cube
    after = _corner_error_xrf_px(res.affine, gt.true_affine, shape, px)
    assert before > 2.0
    assert after < 1.0, f"registration left {after:.2f} XRF px at the corners"
    assert res.score > res.score_before
    assert np.allclose(store.xrf_affine, res.affine)
    assert store.xrf_info["registration"]["method"] == "auto"


# Control points picked by eye on the miniature (issue 5): XRF (Cu map) pixel and
# photograph pixel of the same feature, both (y, x).
MINIATURE_POINTS = [
    # left rail, top-right corner
    ((621, 187), (1154, 347)),
    # right rail, right tip
    ((705, 754), (1289, 1392)),
    # left rail, left end, top
    ((645, 28), (1187, 57)),
    # right rail, left end, top
    ((610, 463), (1133, 861)),
    # right railing, last post, bottom
    ((872, 691), (1633, 1289)),
    # painted oval, bottom
    ((960, 419), (1794, 778)),
]
#: assumed pixel size of the photograph (a ~7 x 9 cm miniature over 1815 px); the
#: data carry none, so residuals are stated in pixels first
MINIATURE_PIXEL_UM = 40.0


def test_miniature_registration_by_control_points(tmp_path, capsys):
    from napari_nightwatch.cli import main
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import import_mosaic

    photo = shared_file("miniature-vis-xrf/2025.jpg")
    cu = shared_file("miniature-vis-xrf/Cu.jpg")
    arsenic = shared_file("miniature-vis-xrf/As-KB.jpg")
    path = tmp_path / "mini.nightwatch.zarr"
    import_mosaic(photo, path, pixel_size_um=MINIATURE_PIXEL_UM)
    assert main(["import-maps", str(path), "--map", f"Cu-K={cu}", "--map", f"As-K={arsenic}", "--json"]) == 0
    capsys.readouterr()
    csv = tmp_path / "points.csv"
    csv.write_text("xrf_y,xrf_x,mosaic_y,mosaic_x\n" + "\n".join(f"{a[0]},{a[1]},{b[0]},{b[1]}" for a, b in MINIATURE_POINTS))
    store = PaintingStore.open(path)
    nominal = store.xrf_affine
    assert main(["register", str(path), "--points", str(csv), "--json"]) == 0
    import json

    out = json.loads(capsys.readouterr().out)
    report = (f"miniature control-point residual: RMS {out['residual_rms_px']:.1f} px, max {out['residual_max_px']:.1f} px "
              f"(RMS {out['residual_rms_um']:.0f} um at an assumed {MINIATURE_PIXEL_UM} um/px)")
    assert out["n_points"] == 6
    # by-eye picks on two modalities: a few photo pixels, not tens
    assert out["residual_rms_px"] < 15.0
    # the registered Cu map lands on the green (copper) paint of the photograph
    from scipy.ndimage import map_coordinates

    store = PaintingStore.open(path)
    names, maps = store.xrf_info["elements"], np.asarray(store.root["xrf/maps"][...])
    vis = np.asarray(store.mosaic_levels()[0], dtype=np.float32)
    green = vis[..., 1] - 0.5 * (vis[..., 0] + vis[..., 2])
    cu_map = maps[names.index("Cu-K")]
    yy, xx = np.mgrid[80:cu_map.shape[0]:2, 0:cu_map.shape[1]:2]  # skip the burned-in label
    pts = np.stack([yy.ravel(), xx.ravel()], 1).astype(float)

    def agreement(affine):
        m = apply_affine(affine, pts).T
        return np.corrcoef(map_coordinates(green, m, order=1, mode="nearest"), cu_map[yy, xx].ravel())[0, 1]

    registered = agreement(store.xrf_affine)
    assert registered > 0.5
    # a placement 50 photo px off (about a rail's width) agrees clearly less
    for dy, dx in ((50, 0), (0, 50), (-50, 0), (0, -50)):
        off = np.array([[1, 0, dy], [0, 1, dx], [0, 0, 1.0]]) @ store.xrf_affine
        assert registered > agreement(off) + 0.05
    # the stretch-over-the-photo placement of import-maps is a sane start, not better
    assert registered > agreement(nominal) - 0.05
    # automatic refinement from the control-point fit improves the agreement further
    assert main(["register", str(path), "--points", str(csv), "--auto", "--refine-model", "similarity", "--json"]) == 0
    refined = json.loads(capsys.readouterr().out)
    with capsys.disabled():
        print(f"\n{report}\nafter --auto: RMS {refined['residual_rms_px']:.1f} px against the by-eye points, score "
              f"{refined['score_before']:.3f} -> {refined['score']:.3f}")
    assert refined["score"] >= refined["score_before"]
    assert agreement(PaintingStore.open(path).xrf_affine) >= registered - 0.01
