"""Element maps of the synthetic painting (nightwatch synth), whose amounts are known.

The painting's MA-XRF cube is simulated with the xrf forward model from per-element
effective concentrations (layers, absorption); every family of an element scales with
that element's concentration, so each fitted map must follow its element's map.
"""

from __future__ import annotations

import numpy as np
import pytest

from napari_nightwatch.xrf.identify import PRESENT_CONFIDENCE

OVERLAPS = [("Pb-L", "As-K"), ("S-K", "Pb-M"), ("S-K", "Hg-M")]


@pytest.fixture(scope="module")
def painting(tmp_path_factory):
    from napari_nightwatch.synth import load_ground_truth, synthesize_painting
    from napari_nightwatch.xrf.maps import fit_store, load_element_maps

    store = synthesize_painting(tmp_path_factory.mktemp("synth") / "p.nightwatch.zarr", size=512, seed=0)
    summary = fit_store(store, "auto")
    names, maps = load_element_maps(store)
    return summary, names, maps, load_ground_truth(store)


def _truth(gt, name):
    el = name.split("-")[0]
    return gt.concentrations[gt.elements.index(el)] * gt.counts_scale * gt.family_sensitivity[name]


def test_identification_finds_every_painted_family_and_no_other(painting):
    summary, names, _, gt = painting
    assert set(names) == set(gt.families)
    absent = [r for r in summary["identification"] if r["name"] not in gt.families]
    assert max((r["confidence"] for r in absent), default=0.0) < PRESENT_CONFIDENCE
    assert summary["calibration_max_residual_ev"] < 20


def test_maps_follow_the_true_concentrations(painting):
    _, names, maps, gt = painting
    for name in names:
        t = _truth(gt, name)
        r = float(np.corrcoef(maps[names.index(name)].ravel(), t.ravel())[0, 1])
        major = t.mean() >= 100.0  # counts per pixel
        assert r >= (0.98 if major else 0.9), (name, r)


def test_overlapped_families_are_separated(painting):
    _, names, maps, gt = painting
    checked = []
    for a, b in OVERLAPS:
        if a not in names or b not in names:
            continue
        ta, tb = _truth(gt, a), _truth(gt, b)
        for this, other, t_this, t_other in ((a, b, ta, tb), (b, a, tb, ta)):
            alone = (t_this > 0.05 * t_this.max()) & (t_other <= 1e-6 * max(t_other.max(), 1e-12))
            if alone.sum() < 20:
                continue
            typical = np.median(t_other[t_other > 0.05 * t_other.max()])
            leak = maps[names.index(other)][alone].mean()
            assert leak < 0.05 * typical, (this, other, leak, typical)
            checked.append((this, other))
    assert len(checked) >= 3, checked  # the painting has lead without arsenic, sulfur without lead, ...
