"""The synthetic painting: layout, determinism, XRF physics and ground truth, CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, map_coordinates, uniform_filter
from scipy.stats import skew

from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import Cancelled, NightwatchError
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.synth import (
    CALIBRATION,
    NO_PIGMENT,
    PIGMENT_NAMES,
    PIGMENTS,
    GroundTruth,
    load_ground_truth,
    pigment_index,
    synthesize_painting,
)
from napari_nightwatch.xrf.lines import get_family


@pytest.fixture(scope="module")
def gt(synthetic_store) -> GroundTruth:
    return load_ground_truth(synthetic_store)


@pytest.fixture(scope="module")
def cube(synthetic_store) -> np.ndarray:
    return synthetic_store.xrf_cube().compute().astype(np.float64)


@pytest.fixture(scope="module")
def mosaic(synthetic_store) -> np.ndarray:
    return synthetic_store.mosaic_levels()[0].compute()


def _channel(energy_kev: float) -> float:
    return float(CALIBRATION.channel(energy_kev))


def _peak_channel(spectrum: np.ndarray, energy_kev: float, half: int = 4) -> int:
    c = int(round(_channel(energy_kev)))
    return c - half + int(np.argmax(spectrum[c - half : c + half + 1]))


def _window(cube: np.ndarray, energy_kev: float, half: int = 2) -> np.ndarray:
    c = int(round(_channel(energy_kev)))
    return cube[..., c - half : c + half + 1].sum(axis=-1)


def _line(family: str, line: str | None = None) -> float:
    fam = get_family(family)
    if line is None:
        return fam.main_energy_kev
    return float(fam.energies_kev[fam.line_names.index(line)])


# ------------------------------------------------------------------------------- layout
def test_store_layout(synthetic_store, gt, mosaic):
    s = synthetic_store
    assert {"mosaic", "xrf", "ground_truth"} <= set(s.completed())
    assert mosaic.shape == (512, 512, 3) and mosaic.dtype == np.uint8
    assert s.mosaic_pixel_size_um == 5.0
    assert s.xrf_cube().shape == (64, 64, 1024)
    assert s.xrf_pixel_size_um == 40.0
    assert s.xrf_calibration == CALIBRATION
    e = s.xrf_energies()
    assert e[0] == pytest.approx(-0.01) and e[-1] == pytest.approx(-0.01 + 1023 * 40 / 1024)
    # the store holds the nominal affine ("identity until registered"), not the true one
    np.testing.assert_allclose(s.xrf_affine, gt.nominal_affine)
    np.testing.assert_allclose(gt.nominal_affine @ [0, 0, 1], [3.5, 3.5, 1])
    np.testing.assert_allclose(gt.nominal_affine @ [2, 5, 1], [19.5, 43.5, 1])
    assert gt.labels.shape == (3, 512, 512) and gt.labels.dtype == np.uint8
    assert gt.surface_labels_xrf.shape == (64, 64) and gt.surface_purity_xrf.shape == (64, 64)
    assert gt.concentrations.shape == (len(gt.elements), 64, 64) and gt.concentrations.dtype == np.float32
    assert gt.calibration == CALIBRATION and gt.size == 512 and gt.seed == 0 and gt.xrf_pixel == 8
    assert [p["name"] for p in gt.pigments] == list(PIGMENT_NAMES)
    # ground everywhere, surface everywhere, underpaint in patches with bare gaps
    assert (gt.labels[0] == pigment_index("lead white")).all()
    assert (gt.labels[2] != NO_PIGMENT).all()
    under = gt.labels[1] != NO_PIGMENT
    assert 0.2 < under.mean() < 0.95
    # every surface pigment of the pool is painted, and they are the only ones
    pool = {p.name for p in PIGMENTS if "surface" in p.roles} - {"lead white"}
    assert set(gt.surface_pigments) == pool


def test_affine_offset_is_small_and_real(gt, cube):
    """The cube was sampled through the true affine: its Hg map fits that one better."""
    t, n = gt.true_affine, gt.nominal_affine
    lin = t[:2, :2] @ np.linalg.inv(n[:2, :2])
    angle = np.degrees(np.arctan2(lin[1, 0], lin[0, 0]))
    assert 0.15 < abs(angle) < 0.45
    shift = np.abs(t[:2, 2] - n[:2, 2])
    assert (shift > 1.0).all() and (shift < 10.0).all()
    # the vermilion area fraction under each XRF footprint, through either affine
    verm = uniform_filter((gt.labels[2] == pigment_index("vermilion")).astype(np.float32), 8)
    hg = _window(cube, _line("Hg-L")).ravel()
    iy, ix = np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij")
    pts = np.stack([iy.ravel(), ix.ravel(), np.ones(iy.size)])
    r = {}
    for name, a in (("true", t), ("nominal", n)):
        my, mx = (a @ pts)[:2]
        r[name] = np.corrcoef(map_coordinates(verm, [my, mx], order=1, mode="nearest"), hg)[0, 1]
    assert r["true"] > 0.95
    assert r["true"] > r["nominal"] + 0.02


# --------------------------------------------------------------------------- determinism
def test_seeded_determinism_and_cli(tmp_path, capsys):
    a = synthesize_painting(tmp_path / "a.nightwatch.zarr", size=256, seed=3)
    # the CLI runs the same function: same seed, same bytes
    out = tmp_path / "b.nightwatch.zarr"
    assert main(["synth", str(out), "--size", "256", "--seed", "3", "--json"]) == 0
    capsys.readouterr()
    b = PaintingStore.open(out)
    c = synthesize_painting(tmp_path / "c.nightwatch.zarr", size=256, seed=4)
    for path in ("mosaic/0", "xrf/cube", "ground_truth/labels", "ground_truth/concentrations"):
        va, vb, vc = (np.asarray(s.root[path][...]) for s in (a, b, c))
        assert va.tobytes() == vb.tobytes(), path
        assert va.tobytes() != vc.tobytes(), path
    np.testing.assert_array_equal(load_ground_truth(a).true_affine, load_ground_truth(b).true_affine)

    assert main(["info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["mosaic"]["shape"][:2] == [256, 256] and info["mosaic"]["pixel_size_um"] == 5.0
    assert info["xrf"]["shape"][:2] == [32, 32] and info["xrf"]["pixel_size_um"] == 40.0
    assert {"mosaic", "xrf", "ground_truth"} <= set(info["complete"])

    # an existing store is not replaced without --overwrite; a bad size is one sentence, exit 2
    assert main(["synth", str(out), "--size", "256"]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "d.nightwatch.zarr"), "--size", "50"]) == 2
    assert "size=50" in capsys.readouterr().err
    assert not (tmp_path / "d.nightwatch.zarr").exists()


def test_bad_input_and_cancel_leave_nothing(tmp_path):
    p = tmp_path / "x.nightwatch.zarr"
    with pytest.raises(NightwatchError, match="xrf_pixel"):
        synthesize_painting(p, size=256, xrf_pixel=1)
    with pytest.raises(NightwatchError, match="ground"):
        synthesize_painting(p, size=256, ground="vermilion")
    with pytest.raises(NightwatchError, match="seed"):
        synthesize_painting(p, size=256, seed=-1)
    assert not p.exists()

    calls = []

    def cancel_late(done, total, stage):
        calls.append(stage)
        if len(set(calls)) > 4:  # well into writing the store
            raise Cancelled()

    with pytest.raises(Cancelled):
        synthesize_painting(p, size=128, seed=0, progress=cancel_late)
    assert not p.exists()
    with pytest.raises(NightwatchError, match="no ground truth"):
        load_ground_truth(_plain_store(tmp_path))


def _plain_store(tmp_path) -> PaintingStore:
    return PaintingStore.create(tmp_path / "plain.nightwatch.zarr")


def test_chalk_ground_variant(synthetic_store_factory):
    s = synthetic_store_factory(256, 7, ground="chalk")
    g = load_ground_truth(s)
    assert (g.labels[0] == pigment_index("chalk")).all()
    assert g.ground_pigment == "chalk" and g.ground_elements == ["Ca"]
    # lead white joins the surface pool once it is not the ground
    assert "lead white" in g.surface_pigments


# ------------------------------------------------------------------------------ XRF physics
def test_sum_spectrum_shows_each_painted_element_at_its_xraydb_energy(synthetic_store, gt):
    """Each element's strongest family peaks within 2 channels of its xraydb main line.

    Main lines with other families' lines within 0.3 keV carrying more than half their
    counts (As-K under Pb-L, S-K/Hg-M under Pb-M, Co-K under Fe-K beta, ...) cannot show a
    peak of their own in a sum spectrum; they are checked in their own pigment's spectrum.
    """
    spec = synthetic_store.xrf_sum_spectrum()
    counts = gt.extra["family_counts_mean"]
    fams = {f: get_family(f) for f in gt.families}
    checked = []
    for el in gt.elements:
        assert gt.concentration(el).max() > 0, el  # every library element is painted
        main_fam = max((f for f in gt.families if f.startswith(el + "-")), key=lambda f: counts[f])
        e0 = fams[main_fam].main_energy_kev
        own = counts[main_fam] * fams[main_fam].intensities.max()
        near = sum(
            counts[g] * fams[g].intensities[np.abs(fams[g].energies_kev - e0) < 0.3].sum()
            for g in gt.families
            if g != main_fam
        )
        overlapped = near > 0.5 * own
        if overlapped:
            continue
        c = _channel(e0)
        pk = _peak_channel(spec, e0)
        assert abs(pk - c) <= 2.0, (main_fam, pk, c)
        # and it is a peak, well above the Poisson noise of the local baseline
        base = np.median(spec[int(c) - 40 : int(c) + 40])
        assert spec[pk] - base > 5 * np.sqrt(base), main_fam
        checked.append(el)
    assert {"Mn", "Fe", "Cu", "Hg", "Pb"} <= set(checked), checked


# the line that tells each surface pigment apart, free of overlaps in its own spectrum
SIGNATURE_LINES = {
    "vermilion": [("Hg-L", "La1")],  # its S-K sits under the ground's Pb-M
    "azurite": [("Cu-K", None)],
    "verdigris": [("Cu-K", None)],
    "smalt": [("Co-K", None), ("K-K", None)],
    "lead-tin yellow": [("Sn-L", None), ("Sn-K", "Ka1")],
    "umber": [("Mn-K", None), ("Fe-K", None)],
    "red ochre": [("Fe-K", None)],
    "yellow ochre": [("Fe-K", None), ("Ca-K", None)],
    "bone black": [("Ca-K", None)],
    "orpiment": [("As-K", "Kb1")],
}


@pytest.mark.parametrize("pigment", sorted(SIGNATURE_LINES))
def test_pigment_spectrum_shows_its_elements(pigment, gt, cube):
    sel = (gt.surface_labels_xrf == pigment_index(pigment)) & (gt.surface_purity_xrf > 0.9)
    assert sel.sum() >= 8
    spec = cube[sel].mean(axis=0)
    for fam, line in SIGNATURE_LINES[pigment]:
        e0 = _line(fam, line)
        assert abs(_peak_channel(spec, e0, half=3) - _channel(e0)) <= 2.0, (pigment, fam, line)
        # the line stands out against surfaces painted without that element
        el = fam.split("-")[0]
        lacking = np.asarray([el not in PIGMENTS[i].composition for i in range(len(PIGMENTS))])
        others = cube[lacking[gt.surface_labels_xrf] & (gt.surface_purity_xrf > 0.9)].mean(axis=0)
        c = int(round(_channel(e0)))
        assert spec[c - 1 : c + 2].sum() > 1.5 * others[c - 1 : c + 2].sum(), (pigment, fam)


@pytest.mark.parametrize("element,family", [("Cu", "Cu-K"), ("Fe", "Fe-K"), ("Hg", "Hg-L"), ("Mn", "Mn-K")])
def test_line_counts_follow_true_concentrations(element, family, gt, cube):
    """Per pixel, counts in the element's (unoverlapped) main-line window track its true concentration."""
    counts = _window(cube, _line(family))
    r = np.corrcoef(counts.ravel(), gt.concentration(element).ravel())[0, 1]
    assert r > 0.95, (element, r)


def test_hidden_ground_lead_is_in_every_xrf_pixel(gt, cube):
    assert gt.ground_pigment == "lead white" and gt.ground_elements == ["Pb"]
    assert "Pb" in gt.hidden_elements
    below = gt.concentration("Pb") - gt.concentration("Pb", surface_only=True)
    assert (below > 0).all()
    # Pb L-alpha stands far above a line-free window (16.5 keV) in every single pixel ...
    pb = _window(cube, _line("Pb-L"))
    free = _window(cube, 16.5)
    assert (pb > 10 * free + 50).all()
    # ... although most of the surface carries no lead: the photograph cannot show it
    no_pb_surface = gt.concentration("Pb", surface_only=True) == 0
    assert no_pb_surface.mean() > 0.7
    assert (gt.hidden_fraction("Pb")[no_pb_surface] == 1).all()


# ------------------------------------------------------------------------ the photograph
def _patch_features(mosaic: np.ndarray, labels: np.ndarray, size: int = 32):
    """Colour (mean RGB) and brightness-free texture statistics of single-pigment patches."""
    feats, ys, parity = [], [], []
    img = mosaic.astype(np.float32)
    for y in range(0, labels.shape[0] - size + 1, size):
        for x in range(0, labels.shape[1] - size + 1, size):
            lab = labels[y : y + size, x : x + size]
            if (lab != lab[0, 0]).any():
                continue
            p = img[y : y + size, x : x + size]
            lum = p.mean(axis=-1)
            lum = lum / lum.mean()
            hp = lum - gaussian_filter(lum, 1)  # pixel-scale grain
            bp = gaussian_filter(lum, 1) - gaussian_filter(lum, 4)  # particle scale
            gy, gx = np.gradient(gaussian_filter(lum, 1.5))
            ev = np.linalg.eigvalsh(np.cov(np.stack([gy.ravel(), gx.ravel()]), bias=True))
            tex = [np.log(hp.std()), np.log(bp.std()), skew(bp.ravel()), (ev[1] - ev[0]) / (ev[1] + ev[0])]
            feats.append(list(p.reshape(-1, 3).mean(axis=0)) + tex)
            ys.append(int(lab[0, 0]))
            parity.append((y // size + x // size) % 2)
    return np.asarray(feats), np.asarray(ys), np.asarray(parity) == 0


def _nearest_centroid_accuracy(f, y, train, cols, classes=None):
    sel = np.ones(len(y), bool) if classes is None else np.isin(y, classes)
    x, yy, tr = f[sel][:, cols], y[sel], train[sel]
    x = (x - x.mean(0)) / x.std(0)
    cls = np.unique(yy[tr])
    cent = np.stack([x[tr & (yy == c)].mean(0) for c in cls])
    pred = cls[np.argmin(((x[~tr][:, None] - cent[None]) ** 2).sum(-1), axis=1)]
    return float((pred == yy[~tr]).mean())


def test_pigments_differ_in_colour_and_texture(gt, mosaic):
    """Held-out patches (checkerboard split, no shared pixels) are told apart by pigment."""
    f, y, train = _patch_features(mosaic, gt.labels[2])
    assert len(np.unique(y)) >= 8
    colour, texture = [0, 1, 2], [3, 4, 5, 6]
    assert _nearest_centroid_accuracy(f, y, train, colour) >= 0.85
    # texture alone, brightness removed: far above chance (1 / n_pigments)
    assert _nearest_centroid_accuracy(f, y, train, texture) >= 0.4
    # pigments of similar colour differ in microstructure
    for a, b in [("azurite", "smalt"), ("vermilion", "red ochre"), ("lead-tin yellow", "orpiment")]:
        acc = _nearest_centroid_accuracy(f, y, train, texture, [pigment_index(a), pigment_index(b)])
        assert acc >= 0.75, (a, b, acc)


def test_photograph_shows_surface_not_ground(gt, mosaic):
    # mean colour per surface region follows the pigment's colour, not the white ground
    for name in ("vermilion", "azurite", "bone black"):
        m = gt.labels[2] == pigment_index(name)
        mean = mosaic[m].mean(axis=0)
        ref = np.asarray(PIGMENTS[pigment_index(name)].rgb, float)
        assert np.abs(mean - ref).max() < 45, (name, mean, ref)
    # craquelure: a thin network of lines, darker than the paint beside them
    from scipy.ndimage import binary_dilation

    assert 0.002 < gt.cracks.mean() < 0.05
    lum = mosaic.mean(axis=-1)
    beside = binary_dilation(gt.cracks, iterations=6) & ~binary_dilation(gt.cracks, iterations=3)
    assert lum[gt.cracks].mean() < 0.7 * lum[beside].mean()


def test_tile_labels(gt):
    boxes = np.array([[0, 0, 64, 64], [448, 448, 512, 512], [100, 37, 164, 101]])
    lab, pur = gt.tile_labels(boxes)
    for (y0, x0, y1, x1), la, pu in zip(boxes, lab, pur, strict=True):
        vals, n = np.unique(gt.labels[2][y0:y1, x0:x1], return_counts=True)
        assert la == vals[np.argmax(n)] and pu == pytest.approx(n.max() / n.sum())
    lab0, pur0 = gt.tile_labels(boxes, layer=0)
    assert (lab0 == pigment_index("lead white")).all() and (pur0 == 1).all()


def test_family_counts_match_the_cube(gt, cube, synthetic_store):
    """The expected per-family counts add up to the cube's counts in a clean line window."""
    from napari_nightwatch.xrf.model import Detector, family_template

    e = synthetic_store.xrf_energies()
    fam = get_family("Cu-K")
    t = family_template(fam, e, Detector())
    c = int(round(_channel(_line("Cu-K"))))
    # expected Cu-K counts in a +-2 channel window vs the measured window minus its local baseline
    expected = gt.family_counts("Cu-K") * t[c - 2 : c + 3].sum()
    base = 0.5 * (_window(cube, _line("Cu-K") - 0.35) + _window(cube, _line("Cu-K") + 0.35))
    measured = _window(cube, _line("Cu-K")) - base
    hot = gt.concentration("Cu") > 0.5 * gt.concentration("Cu").max()
    assert hot.sum() > 20
    ratio = measured[hot].sum() / expected[hot].sum()
    assert 0.93 < ratio < 1.07, ratio
    with pytest.raises(NightwatchError, match="not simulated"):
        gt.family_counts("Zn-K")


def test_pure_xrf_pixels_have_a_pure_neighbourhood(gt):
    sl, sp = gt.surface_labels_xrf, gt.surface_purity_xrf
    found = 0
    for p in np.unique(sl):
        yy, xx = gt.pure_xrf_pixels(p)
        for y, x in zip(yy, xx, strict=True):
            assert (sl[y - 1 : y + 2, x - 1 : x + 2] == p).all() and sp[y, x] >= 0.99
            assert 0 < y < sl.shape[0] - 2 and 0 < x < sl.shape[1] - 2
        found += len(yy)
    assert found > 0
