"""Per-pixel fitting (napari_nightwatch.xrf.fit, .background) on scenes with known truth."""

from __future__ import annotations

import numpy as np
import pytest

from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.xrf.background import snip
from napari_nightwatch.xrf.fit import batched_nnls, build_fit_model, fit_cube, fit_spectra
from napari_nightwatch.xrf.lines import get_family
from napari_nightwatch.xrf.model import Detector, continuum, simulate_spectra
from napari_nightwatch.xrf.scene import painted_scene

MAJORS = ["Pb-L", "As-K", "Hg-L", "Fe-K", "Ca-K", "Cu-K"]
PAIRS = [("Pb-L", "As-K"), ("S-K", "Pb-M"), ("S-K", "Hg-M"), ("Pb-M", "Hg-M")]


@pytest.fixture(scope="module")
def scene():
    return painted_scene(32, seed=0)


@pytest.fixture(scope="module")
def fitted(scene):
    y = scene.cube.reshape(-1, scene.cube.shape[-1])
    model = build_fit_model(scene.energies_kev, scene.families, detector=scene.detector, mean_spectrum=y.mean(0))
    return model, fit_spectra(y, model)


def _r(a, b):
    return float(np.corrcoef(a, b)[0, 1])


def test_major_maps_correlate_with_truth(scene, fitted):
    _, res = fitted
    truth = scene.truth.reshape(-1, len(scene.names))
    for name in MAJORS:
        i = scene.names.index(name)
        assert _r(res.areas[:, i], truth[:, i]) >= 0.98, name
        # counts, not arbitrary units: the mean is unbiased to 2 %
        assert abs(res.areas[:, i].mean() / truth[:, i].mean() - 1) < 0.02, name


def test_overlapping_families_are_separated(scene, fitted):
    _, res = fitted
    truth = scene.truth.reshape(-1, len(scene.names))
    for a, b in PAIRS:
        ia, ib = scene.names.index(a), scene.names.index(b)
        assert _r(res.areas[:, ia], truth[:, ia]) >= 0.9, a
        assert _r(res.areas[:, ib], truth[:, ib]) >= 0.9, b
        # where only one of the pair is painted, the other stays below 5 % of its typical value
        # (vermilion brings Hg with S, so for S-K/Hg-M only S alone exists: gypsum)
        checked = 0
        for this, other in ((ia, ib), (ib, ia)):
            alone = (truth[:, this] > 0) & (truth[:, other] == 0)
            if alone.sum() == 0:
                continue
            typical = np.median(truth[truth[:, other] > 0, other])
            leak = res.areas[alone, other].mean()
            assert leak < 0.05 * typical, (scene.names[this], scene.names[other], leak, typical)
            assert np.percentile(res.areas[alone, other], 90) < 0.15 * typical
            checked += 1
        assert checked >= 1


def test_uncertainty_and_chi2_are_calibrated():
    # 3000 noisy copies of one spectrum: the reported sigma must match the scatter
    e = np.arange(1024) * 0.02 + 0.01
    fams = [get_family(n) for n in ("Pb-L", "As-K", "Fe-K", "S-K", "Pb-M")]
    areas = np.tile([[2000.0, 800.0, 1500.0, 400.0, 1000.0]], (3000, 1))
    y = simulate_spectra(e, fams, areas, continuum_areas=np.full(3000, 3000.0), rng=3)
    model = build_fit_model(e, fams, mean_spectrum=y.mean(0))
    res = fit_spectra(y, model)
    ratio = res.areas.std(axis=0) / res.uncertainty.mean(axis=0)
    assert np.all((ratio > 0.9) & (ratio < 1.1)), ratio
    assert 0.9 < np.median(res.chi2) < 1.1
    # a missing family shows in chi-square
    wrong = build_fit_model(e, fams[:2] + fams[3:], mean_spectrum=y.mean(0))
    assert np.median(fit_spectra(y[:100], wrong).chi2) > 3.0


@pytest.mark.parametrize("background", ["basis", "snip"])
def test_overlap_error_correlation_matches_the_scatter(background):
    # Pb-L and As-K (As-Ka 10.54 keV on Pb-La 10.55 keV) in 3000 Poisson copies of one pixel:
    # the per-pixel error correlation the fit reports must match the correlation of the fitted
    # areas across the copies (the ground truth). Standard error of a sample correlation
    # with n = 3000 is (1 - rho^2) / sqrt(n) < 0.02, so 0.06 is three of them.
    e = np.arange(1024) * 0.02 + 0.01
    fams = [get_family(n) for n in ("Pb-L", "As-K", "Fe-K", "S-K", "Pb-M")]
    for amounts in ([2000.0, 800.0, 1500.0, 400.0, 1000.0], [4000.0, 100.0, 800.0, 1200.0, 2500.0]):
        areas = np.tile([amounts], (3000, 1))
        y = simulate_spectra(e, fams, areas, continuum_areas=np.full(3000, 3000.0), rng=7)
        model = build_fit_model(e, fams, mean_spectrum=y.mean(0), background=background)
        names = model.overlap_names
        assert "Pb-L/As-K" in names and "S-K/Pb-M" in names
        res = fit_spectra(y, model)
        assert res.correlation.shape == (3000, len(names))
        for k, (i, j) in enumerate(model.overlap_pairs):
            if res.areas[:, i].min() <= 0 or res.areas[:, j].min() <= 0:
                continue  # the non-negativity bound truncates the scatter: not a Gaussian error any more
            empirical = np.corrcoef(res.areas[:, i], res.areas[:, j])[0, 1]
            reported = float(np.median(res.correlation[:, k]))
            assert abs(reported - empirical) < 0.06, (names[k], reported, empirical)
        pa = names.index("Pb-L/As-K")
        assert np.median(res.correlation[:, pa]) < -0.2  # the overlap is real: errors anti-correlate
    # fit_block appends the correlations after chi-square only when asked
    from napari_nightwatch.xrf.fit import fit_block

    blk = y[:6].reshape(2, 3, -1)
    assert fit_block(blk, model).shape == (2, 3, 11)
    assert fit_block(blk, model, with_correlation=True).shape == (2, 3, 11 + len(names))


def test_batched_nnls_matches_scipy():
    from scipy.optimize import nnls

    rng = np.random.default_rng(5)
    a = np.abs(rng.normal(size=(60, 8))) + np.eye(60, 8)
    a[:, 1] = 0.9 * a[:, 0] + 0.1 * a[:, 1]  # strongly overlapping columns, like Pb-L / As-K
    x_true = np.clip(rng.normal(size=(500, 8)), 0, None)
    y = x_true @ a.T + 0.3 * rng.normal(size=(500, 60))
    got = batched_nnls(a.T @ a, y @ a)
    ref = np.stack([nnls(a, yi)[0] for yi in y])
    np.testing.assert_allclose(got, ref, atol=1e-6)
    # free terms (background) may go negative, constrained ones may not
    free = np.array([True] * 6 + [False] * 2)
    got2 = batched_nnls(a.T @ a, y @ a, nonneg=free)
    assert got2[:, :6].min() >= 0 and got2[:, 6:].min() < 0


def test_nan_and_negative_pixels_are_masked_not_fatal(scene, fitted):
    model, res = fitted
    y = scene.cube.reshape(-1, scene.cube.shape[-1])[:64].copy()
    y[3, 100] = np.nan
    y[7, 200] = -5
    out = fit_spectra(y, model)
    assert np.isnan(out.areas[[3, 7]]).all() and np.isnan(out.chi2[[3, 7]]).all()
    assert not out.valid[3] and not out.valid[7]
    ok = np.setdiff1d(np.arange(64), [3, 7])
    # a pixel's areas do not depend on its batch: float64 accumulation leaves ~1e-12 counts,
    # so 1e-3 of the fitted uncertainty is a bound with nine orders of magnitude to spare
    assert np.all(np.abs(out.areas[ok] - res.areas[:64][ok]) <= 1e-3 * res.uncertainty[:64][ok])


def test_fit_cube_dask_equals_in_memory(scene, fitted):
    import dask.array as da

    model, res = fitted
    cube = da.from_array(scene.cube, chunks=(16, 8, 256))  # re-chunked to whole spectra inside
    out = fit_cube(cube, model).compute()
    nf = len(scene.names)
    assert out.shape == (32, 32, 2 * nf + 1)
    got = out[..., :nf].reshape(-1, nf).astype(np.float64)
    # fit_cube stores float32: rounding to float32 moves a value by <= 2^-24 relative (6e-8);
    # the fit itself agrees to ~1e-12 counts (float64 accumulation), far below 1e-3 sigma
    bound = 2.0**-24 * np.abs(res.areas) + 1e-3 * res.uncertainty
    assert np.all(np.abs(got - res.areas) <= bound)


@pytest.mark.parametrize("batch", [1, 7, 128, 4096])
def test_fit_does_not_depend_on_batch(scene, fitted, batch):
    # a pixel's fitted areas must not depend on which other pixels share its batch (the
    # BLAS summation order changes with the batch size and the CPU's kernel)
    model, res = fitted
    y = scene.cube.reshape(-1, scene.cube.shape[-1])
    areas = np.concatenate([fit_spectra(y[i : i + batch], model).areas for i in range(0, len(y), batch)])
    # float64 accumulation leaves ~1e-11 counts of difference; 1e-3 sigma is the bound
    assert np.all(np.abs(areas - res.areas) <= 1e-3 * res.uncertainty)


def test_normal_matrix_is_well_conditioned(fitted):
    # the smooth background terms are orthonormalised and the solve is Jacobi-scaled: the
    # matrix the solver sees was ~4e4 (1.8e5 unscaled) before; what remains is the real
    # overlap of the line families (Pb-L / As-K, S-K / Pb-M / Hg-M), about 10
    model, _ = fitted
    assert model.condition_number < 1e3
    n_bg = sum(name.startswith("background-") for name in model.term_names)
    b = model.design[:, -n_bg:]
    np.testing.assert_allclose(b.T @ (b * model.weights[:, None]), np.eye(n_bg), atol=1e-9)


def test_snip_background_batched():
    e = np.arange(1024) * 0.02 + 0.01
    base = 5000 * continuum(e)[None] * np.array([[1.0], [3.0]])
    peaks = simulate_spectra(e, [get_family("Fe-K"), get_family("Pb-L")], np.array([[4e4, 2e4], [1e4, 5e4]]), rng=None)
    y = base + peaks
    bg = snip(y, width=20, smooth=0)
    region = (e > 2) & (e < 16)
    # the continuum is recovered under the peaks to a few per cent of the peak heights
    assert np.abs(bg - base)[:, region].max() < 0.05 * peaks.max()
    np.testing.assert_allclose(bg[1], snip(y[1], width=20, smooth=0))
    with pytest.raises(NightwatchError, match="NaN"):
        snip(np.array([[np.nan] * 100]))


def test_snip_mode_fits_majors(scene):
    y = scene.cube.reshape(-1, scene.cube.shape[-1])
    model = build_fit_model(scene.energies_kev, scene.families, detector=scene.detector,
                            mean_spectrum=y.mean(0), background="snip")
    res = fit_spectra(y, model)
    truth = scene.truth.reshape(-1, len(scene.names))
    for name in ("Pb-L", "Fe-K", "Ca-K", "Hg-L"):
        i = scene.names.index(name)
        assert _r(res.areas[:, i], truth[:, i]) >= 0.98, name


def test_bad_fit_inputs():
    e = np.arange(1024) * 0.02 + 0.01
    with pytest.raises(NightwatchError, match="No line families"):
        build_fit_model(e, [])
    with pytest.raises(NightwatchError, match="twice"):
        build_fit_model(e, [get_family("Fe-K"), get_family("Fe-K")])
    with pytest.raises(NightwatchError, match="does not reach"):
        build_fit_model(np.arange(300) * 0.01, [get_family("Pb-L")])
    model = build_fit_model(e, [get_family("Fe-K")])
    with pytest.raises(NightwatchError, match="1024"):
        fit_spectra(np.zeros((2, 512)), model)
    with pytest.raises(NightwatchError, match="background"):
        build_fit_model(e, [get_family("Fe-K")], background="poly")
    with pytest.raises(NightwatchError, match="mean spectrum"):
        build_fit_model(e, [get_family("Fe-K")], mean_spectrum=np.full(1024, np.nan))
    # an all-zero spectrum fits to zero, not to an error
    zero = fit_spectra(np.zeros((1, 1024)), model)
    assert zero.areas[0, 0] == 0.0 and Detector().escape


def test_pileup_terms_absorb_sum_peaks():
    from napari_nightwatch.xrf.model import pileup_template

    e = np.arange(1024) * 0.02 + 0.01
    fams = [get_family(n) for n in ("Fe-K", "Pb-L", "Ca-K")]
    lam = simulate_spectra(e, fams, np.tile([[5000.0, 1000.0, 2000.0]], (400, 1)),
                           continuum_areas=np.full(400, 2000.0), rng=None)
    lam += 100.0 * pileup_template(fams[0], fams[0], e)[None]  # Fe+Fe at 12.8 keV, under Pb L-beta
    y = np.random.default_rng(0).poisson(lam).astype(np.float32)
    plain = fit_spectra(y, build_fit_model(e, fams, mean_spectrum=y.mean(0)))
    model = build_fit_model(e, fams, mean_spectrum=y.mean(0), pileup=True)
    assert any(t.startswith("pileup-Fe-K+Fe-K") for t in model.term_names)
    fixed = fit_spectra(y, model)
    assert abs(fixed.areas[:, 1].mean() - 1000.0) < abs(plain.areas[:, 1].mean() - 1000.0)
    assert abs(np.median(fixed.chi2) - 1.0) < 0.05 < abs(np.median(plain.chi2) - 1.0)
