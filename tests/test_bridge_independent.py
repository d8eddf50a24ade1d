"""The XRF bridge on a painting it was not built from (issue 13): the independent
generator of ``bridge_independent.py`` (smooth pigment mixtures, Kubelka-Munk colours
with per-pigment grains and near-metamers, self-absorbed XRF counts with Poisson noise).

One module-scoped store: 48 x 48 map pixels, 8 photo px each (384 px), 16-px tiles
embedded by the tiny CLIP config at random weights, one training run and one prediction.
"""

from __future__ import annotations

import numpy as np
import pytest

from bridge_independent import KS, make_painting


@pytest.fixture(scope="module")
def independent(tmp_path_factory):
    from bridge_independent import painting_store
    from napari_nightwatch.ml import bridge as B
    from napari_nightwatch.ml.clip import load_clip
    from napari_nightwatch.ml.embed import embed_store
    from napari_nightwatch.store.tiles import make_grid

    store, painting = painting_store(tmp_path_factory.mktemp("indep") / "i.nightwatch.zarr", seed=0, size=48)
    with pytest.warns(UserWarning, match="RANDOM weights"):
        engine = load_clip("nightwatch-tiny", "none", device="cpu")
    grid = make_grid(store, tile=16, mask="none")
    embed_store(store, engine, grid, batch_size=256, num_workers=1)
    trained = B.train_xrf_bridge(store, epochs=30, threads=1)
    predicted = B.predict_xrf_maps(store)
    return store, painting, trained, predicted


def test_generator_makes_near_metamers_and_poisson_maps():
    p = make_painting(seed=1, size=24, px=4)
    assert p.photo.shape == (96, 96, 3) and p.photo.dtype == np.uint8
    # smalt and azurite, umber and bone black: K/S within 10 % in every band
    for a, b in (("smalt", "azurite"), ("umber", "bone black")):
        assert np.all(np.abs(np.subtract(KS[a], KS[b])) <= 0.1 * np.maximum(KS[a], KS[b])), (a, b)
    # the measured maps are Poisson draws around the generator's expected counts:
    # mean of (m - t)^2 / t is 1 for Poisson (4 sigma of its mean over ~600 pixels is about 0.25)
    for fam in ("Pb-L", "Hg-L", "Cu-K"):
        t, m = p.truth[fam].astype(np.float64), p.maps[fam].astype(np.float64)
        ok = t > 5
        assert abs(np.mean((m[ok] - t[ok]) ** 2 / t[ok]) - 1.0) < 0.25, fam


def test_bridge_beats_colour_statistics_on_the_independent_painting(independent):
    """Fails if the predictor is replaced by the colour-statistics kNN."""
    store, painting, trained, predicted = independent
    val = predicted["validation"]
    els = [el for el in ("Hg-L", "Pb-L", "Fe-K", "Ca-K", "Cu-K", "Co-K", "Mn-K", "Sn-L") if el in val]
    gain = [val[el]["r"] - val[el]["r_colour_knn"] for el in els]
    best = [val[el]["r"] - max(val[el]["r_colour_knn"], val[el]["r_descriptor_ridge"]) for el in els]
    for el, g, b in zip(els, gain, best, strict=True):
        print(f"{el}: kept {val[el]['method']} r={val[el]['r']:.3f}, colour kNN {val[el]['r_colour_knn']:.3f}, "
              f"col+tex ridge {val[el]['r_descriptor_ridge']:.3f} (gain {g:+.3f}, over best {b:+.3f})")
    # measured at this size: mean gain over colour kNN +0.18, over the better baseline per
    # element +0.13 (each element +0.04 to +0.23); the mean thresholds are half of that, and
    # no element may fall more than 0.03 below the better baseline (the rule)
    assert np.mean(gain) >= 0.09, gain
    assert np.mean(best) >= 0.06, best
    assert min(best) >= -0.03, best
