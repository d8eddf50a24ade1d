"""Every NGFF image the package writes validates with ome-zarr-models and lands where it belongs (issue 16, item 2).

ome-zarr-models (an independent implementation of the NGFF 0.5 schema) validates each image
group: the mosaic pyramid, ``xrf/total`` (from a cube and from imported element maps), the
fitted ``xrf_maps`` and an element map saved from napari. The placement check is exact:
the NGFF translation of an XRF-grid image equals the registered offset of XRF pixel (0, 0)
in micrometres, and for a rotated registration (which NGFF 0.5 cannot express) the image
centre lands where the affine puts it and the metadata says what was left out.
"""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ome_zarr_models", reason="ome-zarr-models is a test-only reference (testing extras)")


def _validated(group):
    """The ome-zarr-models Image of a zarr group (raises on any schema violation)."""
    from ome_zarr_models.v05.image import Image

    return Image.from_zarr(group)


def _transforms(group) -> tuple[list[float], list[float]]:
    model = _validated(group)
    ct = model.attributes.ome.multiscales[0].datasets[0].coordinateTransformations
    kinds = [t.type for t in ct]
    assert kinds == ["scale", "translation"], kinds
    return [float(v) for v in ct[0].scale], [float(v) for v in ct[1].translation]


def _level0_um(store) -> np.ndarray:
    from napari_nightwatch.core.geometry import micrometre_affine

    return micrometre_affine(store.xrf_affine, store.mosaic_pixel_size_um)


def test_mosaic_pyramid_validates_with_translation_and_rgb_hints(tmp_path):
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_mosaic_array

    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (1100, 700, 3), dtype=np.uint8)  # short side 700 > 512: two levels
    store = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    write_mosaic_array(store, img, pixel_size_um=4.0, source="test", chunk=256)
    g = store.root["mosaic"]
    model = _validated(g)
    datasets = model.attributes.ome.multiscales[0].datasets
    assert len(datasets) == 2
    s0, t0 = (list(t.scale if t.type == "scale" else t.translation) for t in datasets[0].coordinateTransformations)
    s1, t1 = (list(t.scale if t.type == "scale" else t.translation) for t in datasets[1].coordinateTransformations)
    assert s0 == [1.0, 4.0, 4.0] and t0 == [0.0, 0.0, 0.0]
    # level-1 pixel 0 is the mean of level-0 pixels 0 and 1, centred half a level-0 pixel (2 um) in
    assert s1 == [1.0, 8.0, 8.0] and t1 == [0.0, 2.0, 2.0]
    omero = dict(g.attrs)["ome"]["omero"]
    assert omero["rdefs"]["model"] == "color"
    assert [c["color"] for c in omero["channels"]] == ["FF0000", "00FF00", "0000FF"]


def test_rgba_mosaic_hides_alpha_in_other_viewers(tmp_path):
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import write_mosaic_array

    store = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    write_mosaic_array(store, np.zeros((40, 50, 4), np.uint8), pixel_size_um=4.0, source="test")
    _validated(store.root["mosaic"])
    channels = dict(store.root["mosaic"].attrs)["ome"]["omero"]["channels"]
    assert [c["active"] for c in channels] == [True, True, True, False]


def test_xrf_total_translation_is_the_registered_offset(synthetic_store_rw):
    """Unregistered (nominal) and translation-only registrations are exact in NGFF 0.5."""
    from napari_nightwatch.store.sources import sync_xrf_placement

    store = synthetic_store_rw
    scale, trans = _transforms(store.root["xrf/total"])
    a = _level0_um(store)
    assert scale == [a[0, 0], a[1, 1]] and trans == [a[0, 2], a[1, 2]]
    # the synthetic painting: 8 mosaic px of 5 um per XRF pixel, XRF pixel 0 centred on mosaic px 3.5
    assert trans == [17.5, 17.5]

    moved = store.xrf_affine.copy()
    moved[:2, 2] += (3.0, -2.0)  # a registration that shifts by (3, -2) mosaic pixels
    store.set_xrf_affine(moved, method="test shift")
    rec = sync_xrf_placement(store)
    assert rec["xrf/total"]["ngff_exact"] is True and rec["xrf/total"]["note"] is None
    scale, trans = _transforms(store.root["xrf/total"])
    assert trans == [17.5 + 3.0 * 5.0, 17.5 - 2.0 * 5.0]
    assert store.root["xrf/total"].attrs["nightwatch"]["placement"]["affine_um"] == _level0_um(store).tolist()


def test_rotated_registration_keeps_the_affine_and_says_so(synthetic_store_rw):
    """The synthetic painting's true affine rotates by 0.2-0.4 degrees: NGFF gets the closest axis-aligned placement."""
    from napari_nightwatch.io.ngff import placement_from_affine
    from napari_nightwatch.store.sources import sync_xrf_placement
    from napari_nightwatch.synth import load_ground_truth

    store = synthetic_store_rw
    gt = load_ground_truth(store)
    store.set_xrf_affine(gt.true_affine, method="ground truth")
    rec = sync_xrf_placement(store)["xrf/total"]
    a = _level0_um(store)
    assert rec["ngff_exact"] is False and "rotation" in rec["note"]
    assert np.allclose(rec["affine_um"], a, rtol=0, atol=0)
    scale, trans = _transforms(store.root["xrf/total"])
    ny, nx = store.xrf_shape
    centre = np.array([(ny - 1) / 2, (nx - 1) / 2])
    # the image centre lands exactly where the registration puts it (float64 round-off: 1e-9 um)
    np.testing.assert_allclose(np.array(scale) * centre + trans, a[:2, :2] @ centre + a[:2, 2], rtol=0, atol=1e-9)
    # pixel steps keep their registered length
    np.testing.assert_allclose(scale, np.linalg.norm(a[:2, :2], axis=0), rtol=1e-12)
    # for a pure rotation by theta, a corner at distance d from the centre moves by 2 d sin(theta / 2):
    # the recorded bound is that analytic value (1e-9 relative: float64 round-off of the corner sums)
    theta = np.arctan2(a[1, 0], a[0, 0])
    half_diagonal_um = np.hypot(ny * scale[0], nx * scale[1]) / 2
    assert rec["max_error_um"] == pytest.approx(2 * half_diagonal_um * np.sin(abs(theta) / 2), rel=1e-9)
    assert rec["max_error_um"] == pytest.approx(placement_from_affine(a, (ny, nx))["max_error_um"], rel=1e-12)


def test_fitted_element_maps_validate_and_follow_the_registration(synthetic_store_rw):
    from napari_nightwatch.store.sources import sync_xrf_placement
    from napari_nightwatch.synth import load_ground_truth
    from napari_nightwatch.xrf.maps import fit_store

    store = synthetic_store_rw
    gt = load_ground_truth(store)
    fit_store(store, elements=list(gt.families)[:2], refine=False, workers=1)
    moved = store.xrf_affine.copy()
    moved[:2, 2] += (1.0, 4.0)
    store.set_xrf_affine(moved, method="test shift")
    sync_xrf_placement(store)
    a = _level0_um(store)
    scale, trans = _transforms(store.root["xrf_maps"])
    assert scale == [1.0, a[0, 0], a[1, 1]] and trans == [0.0, a[0, 2], a[1, 2]]
    # what the fit wrote beside the maps is kept
    assert "elements" in store.root["xrf_maps"].attrs["nightwatch"]


def test_imported_element_maps_validate(tmp_path):
    from napari_nightwatch.store import PaintingStore
    from napari_nightwatch.store.sources import import_element_maps, write_mosaic_array

    store = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    write_mosaic_array(store, np.zeros((64, 80, 3), np.uint8), pixel_size_um=10.0, source="test")
    rng = np.random.default_rng(1)
    import_element_maps(store, {"Pb-L": rng.random((16, 20)), "Hg-L": rng.random((16, 20))}, pixel_size_um=40.0)
    scale, trans = _transforms(store.root["xrf/total"])
    # 4 mosaic px per map pixel: map pixel 0 centred on mosaic px 1.5 = 15 um
    assert scale == [40.0, 40.0] and trans == [15.0, 15.0]


def test_saved_element_map_validates_with_its_placement(tmp_path):
    import zarr

    from napari_nightwatch._napari.writers import write_map_ome_zarr

    data = np.arange(12 * 10, dtype=np.float32).reshape(12, 10)
    out = write_map_ome_zarr(str(tmp_path / "m.ome.zarr"), data, {"name": "Pb-L", "scale": (40.0, 40.0),
                                                                  "translate": (17.5, -2.5)})
    scale, trans = _transforms(zarr.open_group(out[0], mode="r"))
    assert scale == [40.0, 40.0] and trans == [17.5, -2.5]

    theta = np.deg2rad(1.0)
    rot = np.array([[np.cos(theta), -np.sin(theta), 0.0], [np.sin(theta), np.cos(theta), 0.0], [0.0, 0.0, 1.0]])
    out = write_map_ome_zarr(str(tmp_path / "r.ome.zarr"), data, {"name": "Pb-L", "scale": (40.0, 40.0),
                                                                  "translate": (0.0, 0.0), "affine": rot})
    g = zarr.open_group(out[0], mode="r")
    _transforms(g)
    placement = g.attrs["nightwatch"]["placement"]
    assert placement["ngff_exact"] is False and "rotation" in placement["note"]
    np.testing.assert_allclose(placement["affine_um"], rot @ np.diag([40.0, 40.0, 1.0]), rtol=0, atol=1e-12)


def test_ome_zarr_py_reads_our_translation(synthetic_store):
    """ome-zarr-py (the reference reader) sees the scale and the translation of xrf/total."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(synthetic_store.path / "xrf" / "total")))()))
    ct = node.metadata["coordinateTransformations"][0]
    assert ct == [{"type": "scale", "scale": [40.0, 40.0]}, {"type": "translation", "translation": [17.5, 17.5]}]
