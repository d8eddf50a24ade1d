"""A painting store opens from napari's File > Open with napari-ome-zarr installed (issue 16, item 1).

npe2 offers every folder to every reader that accepts directories, so napari's builtins,
napari-ome-zarr and this plugin all claim ``*.nightwatch.zarr`` and napari asks which to use
(``MultipleReaderError``) until ``plugins.extension2reader`` names one.
:func:`prefer_nightwatch_reader` sets that preference; these tests open a synthetic store
through ``viewer.open(..., plugin=None)``, the call behind File > Open and drag-and-drop.
"""

from __future__ import annotations

import numpy as np
import pytest

from _napari_support import private_config_dir  # noqa: F401 (fixture)


@pytest.fixture
def napari_settings(make_napari_viewer):
    """napari's settings for this test, never saved to the user's settings file (reset by make_napari_viewer)."""
    from napari.settings import get_settings

    settings = get_settings()
    saved = dict(settings.plugins.extension2reader)
    settings._save_on_change = False  # a pydantic private attribute: monkeypatch cannot see it
    settings.plugins.extension2reader = {}
    yield settings
    settings.plugins.extension2reader = saved
    settings._save_on_change = True


def test_three_readers_claim_a_store(synthetic_store, make_napari_viewer, napari_settings):
    from napari.errors import MultipleReaderError
    from napari.plugins import _npe2

    viewer = make_napari_viewer()
    path = str(synthetic_store.path)
    assert {"napari", "napari-ome-zarr", "napari-nightwatch"} <= set(_npe2.get_readers(path))
    with pytest.raises(MultipleReaderError):
        viewer.open(path, plugin=None)


@pytest.mark.parametrize("suffix", ["", "/"])
def test_file_open_uses_our_reader_once_preferred(synthetic_store, make_napari_viewer, napari_settings, suffix):
    from napari_nightwatch._napari.reader import STORE_READER_PATTERN, prefer_nightwatch_reader, store_layers

    viewer = make_napari_viewer()
    assert prefer_nightwatch_reader(napari_settings) is True
    assert napari_settings.plugins.extension2reader[STORE_READER_PATTERN] == "napari-nightwatch"
    added = viewer.open(str(synthetic_store.path) + suffix, plugin=None)
    expected = store_layers(synthetic_store.path)
    assert [ly.name for ly in added] == [meta["name"] for _, meta, _ in expected]
    mosaic, xrf = added
    level0 = mosaic.data[0] if mosaic.multiscale else mosaic.data
    want = expected[0][0][0] if isinstance(expected[0][0], list) else expected[0][0]
    assert mosaic.rgb and level0.shape == (512, 512, 3)
    np.testing.assert_array_equal(np.asarray(level0), np.asarray(want))
    # the XRF layer is placed by the store's affine (8 mosaic px of 5 um per XRF pixel, centred)
    np.testing.assert_allclose(xrf.scale, [40.0, 40.0])
    np.testing.assert_allclose(xrf.translate, [17.5, 17.5])


def test_a_users_own_choice_is_kept(napari_settings):
    from napari_nightwatch._napari.reader import STORE_READER_PATTERN, prefer_nightwatch_reader

    napari_settings.plugins.extension2reader = {STORE_READER_PATTERN: "napari-ome-zarr"}
    assert prefer_nightwatch_reader(napari_settings) is False
    assert napari_settings.plugins.extension2reader[STORE_READER_PATTERN] == "napari-ome-zarr"
    assert prefer_nightwatch_reader(napari_settings, replace=True) is True
    assert napari_settings.plugins.extension2reader[STORE_READER_PATTERN] == "napari-nightwatch"


def test_napari_ome_zarr_shows_the_mosaic_in_colour(synthetic_store, make_napari_viewer):
    """napari-ome-zarr opens ``mosaic/`` as red, green and blue channels blended additively: the colour image."""
    viewer = make_napari_viewer()
    layers = viewer.open(str(synthetic_store.path / "mosaic"), plugin="napari-ome-zarr")
    assert [ly.colormap.name for ly in layers] == ["red", "green", "blue"]
    # the first channel is drawn over the canvas, the others add onto it
    assert [ly.blending for ly in layers][1:] == ["additive", "additive"]
    np.testing.assert_allclose(layers[0].scale, [5.0, 5.0])
