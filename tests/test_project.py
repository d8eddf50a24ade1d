"""The painting store: creation, schema checks, completeness markers, provenance."""

from __future__ import annotations

import json

import numpy as np
import pytest

from napari_nightwatch import __version__
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.store import SCHEMA_VERSION, PaintingStore, file_signature


def test_create_open_and_complete_markers(tmp_path):
    p = tmp_path / "p.nightwatch.zarr"
    s = PaintingStore.create(p)
    assert s.name == "p"
    assert not s.is_complete("mosaic")
    s.mark_complete("mosaic", source="x.tif", shape=np.array([3, 4]))
    s2 = PaintingStore.open(p)
    assert s2.is_complete("mosaic")
    rec = s2.completed()["mosaic"]
    assert rec["source"] == "x.tif" and rec["shape"] == [3, 4] and rec["package_version"] == __version__
    s3 = PaintingStore.open(p, mode="r+")
    s3.mark_incomplete("mosaic")
    assert not PaintingStore.open(p).is_complete("mosaic")


def test_read_only_store_refuses_writes(tmp_path):
    p = tmp_path / "p.nightwatch.zarr"
    PaintingStore.create(p)
    s = PaintingStore.open(p)
    with pytest.raises(NightwatchError, match="read-only"):
        s.group("grids", create=True)


def test_create_refuses_to_clobber(tmp_path):
    p = tmp_path / "p.nightwatch.zarr"
    PaintingStore.create(p)
    with pytest.raises(NightwatchError, match="already exists"):
        PaintingStore.create(p)
    other = tmp_path / "other.nightwatch.zarr"
    other.mkdir()
    (other / "precious.txt").write_text("keep me")
    with pytest.raises(NightwatchError, match="not a nightwatch store"):
        PaintingStore.create(other, overwrite=True)
    assert (other / "precious.txt").read_text() == "keep me"


def test_newer_schema_is_refused_with_a_sentence(tmp_path):
    p = tmp_path / "p.nightwatch.zarr"
    PaintingStore.create(p)
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["nightwatch"]["schema_version"] = SCHEMA_VERSION + 1
    (p / "zarr.json").write_text(json.dumps(meta))
    with pytest.raises(NightwatchError, match="newer than"):
        PaintingStore.open(p)


def test_older_schema_is_upgraded(tmp_path, monkeypatch):
    from napari_nightwatch.store import painting

    p = tmp_path / "p.nightwatch.zarr"
    PaintingStore.create(p)
    meta = json.loads((p / "zarr.json").read_text())
    meta["attributes"]["nightwatch"]["schema_version"] = SCHEMA_VERSION - 1
    (p / "zarr.json").write_text(json.dumps(meta))
    seen = []
    monkeypatch.setitem(painting.UPGRADES, SCHEMA_VERSION - 1, lambda store: seen.append(store.path))
    s = PaintingStore.open(p)
    assert seen == [p]
    assert s.meta["schema_version"] == SCHEMA_VERSION


def test_not_a_store(tmp_path):
    with pytest.raises(NightwatchError, match="not a painting store"):
        PaintingStore.open(tmp_path / "nothing.nightwatch.zarr")


def test_missing_parts_say_what_to_do(tmp_path):
    s = PaintingStore.create(tmp_path / "p.nightwatch.zarr")
    with pytest.raises(NightwatchError, match="import-mosaic"):
        s.mosaic_levels()
    with pytest.raises(NightwatchError, match="import-xrf"):
        s.xrf_cube()
    assert any("mosaic" in step for step in s.summary()["next_steps"])


def test_file_signature_changes_with_content(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(b"abc" * 1000)
    s1 = file_signature(f)
    assert s1 == file_signature(f)
    f.write_bytes(b"abd" * 1000)
    assert file_signature(f) != s1
