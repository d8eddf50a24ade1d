"""Remote mosaic sources read in place (issue 15, item 1): OME-Zarr over HTTP and S3, Deep Zoom over HTTP.

Every server is started by the tests on 127.0.0.1 (``tests/_remote_support.py``). The HTTP
handler used here records each request and, like object storage and most static web servers,
never lists a folder, so nothing passes that needs a listing. Pixels imported from a URL are
compared bit for bit with the import of the same files from disk (same bytes, same decoders).
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import json
import math
from pathlib import Path

import numpy as np
import pytest
import zarr

from _remote_support import HttpFolder, http_folder, s3_server  # noqa: F401
from napari_nightwatch.cli import main
from napari_nightwatch.core.errors import NightwatchError
from napari_nightwatch.store import PaintingStore
from napari_nightwatch.store.sources import changed_reference, import_mosaic


# ------------------------------------------------------------------------ servers and sources
class RecordingHandler(http.server.SimpleHTTPRequestHandler):
    """Static files only (no folder listing, 404 for a folder), each request path recorded;
    paths under a ``forbidden`` prefix are answered 403, as a private bucket would."""

    def __init__(self, *args, record: list, forbidden: tuple = (), **kwargs) -> None:
        self.record, self.forbidden = record, forbidden
        super().__init__(*args, **kwargs)

    def send_head(self):
        self.record.append(self.path)
        if self.path.startswith(self.forbidden) if self.forbidden else False:
            self.send_error(403)
            return None
        if Path(self.translate_path(self.path)).is_dir():
            self.send_error(404)
            return None
        return super().send_head()

    def log_message(self, *args) -> None:
        pass


def recording(folder: HttpFolder, forbidden: tuple = ()) -> list:
    """Make ``folder`` record its requests (and refuse ``forbidden`` prefixes); returns the record."""
    record: list = []
    folder.server.RequestHandlerClass = functools.partial(
        RecordingHandler, directory=str(folder.root), record=record, forbidden=forbidden)
    return record


def painting_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """Smooth colour fields plus noise (uint8 RGB), so every chunk and tile differs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = (np.sin(yy / 31.0) + np.cos(xx / 17.0) + 2) / 4
    img = np.stack([base * (0.5 + 0.2 * k) for k in range(3)], -1) * 220 + rng.integers(0, 30, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def write_ngff(path: Path, img: np.ndarray, version: str) -> Path:
    """An OME-Zarr written by ome-zarr-py: NGFF 0.4 (zarr v2) or 0.5 (zarr v3), two levels, 0.8 um pixels."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = FormatV04() if version == "0.4" else FormatV05()
    g = zarr.open_group(str(path), mode="w", zarr_format=fmt.zarr_format)
    write_image(img.transpose(2, 0, 1), g, axes="cyx", fmt=fmt, scale_factors=[2], scale={"c": 1.0, "y": 0.8, "x": 0.8},
                axes_units={"y": "micrometer", "x": "micrometer"}, storage_options={"chunks": (3, 128, 128)})
    return path


def write_dzi(folder: Path, img: np.ndarray, tile: int = 256, overlap: int = 1, name: str = "painting") -> Path:
    """Cut ``img`` into a complete Deep Zoom pyramid with PIL (every level, PNG tiles), as dzsave does.

    Coarser levels are made with ``Image.reduce(2)`` so each level differs from what a
    reader would compute itself (a viewer must show the DZI's own levels).
    """
    from PIL import Image

    h, w = img.shape[:2]
    top = math.ceil(math.log2(max(h, w)))
    im = Image.fromarray(img)
    for level in range(top, -1, -1):
        d = folder / f"{name}_files" / str(level)
        d.mkdir(parents=True)
        lw, lh = im.size
        for row in range(math.ceil(lh / tile)):
            for col in range(math.ceil(lw / tile)):
                box = (max(col * tile - overlap, 0), max(row * tile - overlap, 0),
                       min((col + 1) * tile + overlap, lw), min((row + 1) * tile + overlap, lh))
                im.crop(box).save(d / f"{col}_{row}.png")
        if level:
            im = im.resize(((lw + 1) // 2, (lh + 1) // 2), Image.Resampling.BOX)
    dzi = folder / f"{name}.dzi"
    dzi.write_text('<?xml version="1.0" encoding="UTF-8"?>\n'
                   f'<Image xmlns="http://schemas.microsoft.com/deepzoom/2008" Format="png" Overlap="{overlap}" '
                   f'TileSize="{tile}"><Size Height="{h}" Width="{w}"/></Image>')
    return dzi


def digest(folder: Path) -> str:
    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + f.read_bytes())
    return h.hexdigest()


def levels_of(store: PaintingStore) -> list[np.ndarray]:
    return [np.asarray(lv.compute()) for lv in store.mosaic_levels()]


def assert_same_mosaic(remote: PaintingStore, local: PaintingStore) -> None:
    a, b = levels_of(remote), levels_of(local)
    assert [x.shape for x in a] == [x.shape for x in b]
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert remote.mosaic_pixel_size_um == local.mosaic_pixel_size_um


def tile_requests(record: list, level: int | None = None) -> list[str]:
    return [p for p in record if "_files/" in p and (level is None or f"_files/{level}/" in p)]


# ------------------------------------------------------------------------ OME-Zarr over HTTP
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_ome_zarr_over_http_is_used_in_place_and_equals_local(http_folder, tmp_path, version):  # noqa: F811
    img = painting_image(600, 700, seed=1)
    src = write_ngff(http_folder.root / f"img{version}.ome.zarr", img, version)
    before = digest(src)
    record = recording(http_folder)
    local = import_mosaic(src, tmp_path / "local.nightwatch.zarr")
    url = http_folder.url(src.name)
    remote = import_mosaic(url, tmp_path / "remote.nightwatch.zarr")

    info = remote.mosaic_info
    assert info["reference"] == url and info["source"] == url  # the URL, never a local copy
    assert not list(remote.root["mosaic"].array_keys())
    assert info["source_signature"].startswith("urlc:") and info["ngff_version"] == (version if version == "0.5" else "0.4")
    assert info["pixel_size_um"] == pytest.approx(0.8) and info["downsamples"] == [1, 2]
    assert_same_mosaic(PaintingStore.open(remote.path), local)
    np.testing.assert_array_equal(levels_of(remote)[0], img)
    assert record and not any(p.endswith("/") for p in record)  # nothing needed a folder listing
    assert changed_reference(remote) is None
    assert digest(src) == before  # read only

    # an edited level-0 chunk (the first is always in the sample) makes the store say its mosaic is stale
    arr = zarr.open_group(str(src), mode="r+")["s0"]
    arr[:, 0:4, 0:4] = 0
    reason = changed_reference(remote)
    assert reason is not None and url in reason and "was changed since it was imported" in reason
    assert "mosaic" in PaintingStore.open(remote.path).summary()["stale"]


class FlakyHandler(RecordingHandler):
    """Answers 503 (Service Unavailable) to every third request for a chunk, as a busy server does."""

    def __init__(self, *args, counter: dict, **kwargs) -> None:
        self.counter = counter
        super().__init__(*args, **kwargs)

    def send_head(self):
        if "/c/" in self.path or self.path.rsplit("/", 1)[-1][:1].isdigit():  # zarr v3 / v2 chunk keys
            self.counter["chunks"] += 1
            if self.counter["chunks"] % 3 == 0:
                self.counter["refused"] += 1
                self.send_error(503)
                return None
        return super().send_head()


def test_chunk_reads_of_a_busy_server_are_retried_not_fatal(http_folder, tmp_path):  # noqa: F811
    # a job reads a remote OME-Zarr chunk by chunk for hours: a refused chunk is retried with
    # back-off, and the pixels are exactly those of the files
    img = painting_image(600, 700, seed=11)
    src = write_ngff(http_folder.root / "busy.ome.zarr", img, "0.5")
    counter = {"chunks": 0, "refused": 0}
    http_folder.server.RequestHandlerClass = functools.partial(
        FlakyHandler, directory=str(http_folder.root), record=[], counter=counter)
    store = import_mosaic(http_folder.url(src.name), tmp_path / "busy.nightwatch.zarr")
    np.testing.assert_array_equal(levels_of(PaintingStore.open(store.path))[0], img)
    assert counter["refused"] >= 3  # the server really refused chunk reads along the way
    # dask sends such arrays to cluster workers: the retrying store travels with them
    import pickle

    lv = PaintingStore.open(store.path).mosaic_levels()[1]
    np.testing.assert_array_equal(np.asarray(pickle.loads(pickle.dumps(lv)).compute()), np.asarray(lv.compute()))


def test_bioformats2raw_layout_found_without_listing(http_folder, tmp_path):  # noqa: F811
    img = painting_image(300, 260, seed=2)
    root = http_folder.root / "b2r.ome.zarr"
    g = zarr.open_group(str(root), mode="w", zarr_format=3)
    g.attrs["ome"] = {"version": "0.5", "bioformats2raw.layout": 3}
    write_ngff(root / "0", img, "0.5")
    record = recording(http_folder)
    store = import_mosaic(http_folder.url("b2r.ome.zarr"), tmp_path / "p.nightwatch.zarr")
    assert store.mosaic_info["reference"] == http_folder.url("b2r.ome.zarr/0")
    np.testing.assert_array_equal(levels_of(store)[0], img)
    assert not any(p.endswith("/") for p in record)


# ------------------------------------------------------------------------ OME-Zarr on S3
def test_ome_zarr_on_s3_equals_local_and_etag_signature(s3_server, tmp_path):  # noqa: F811
    import fsspec

    bucket = s3_server.make_bucket("lab-images")
    img = painting_image(400, 500, seed=3)
    for version in ("0.4", "0.5"):
        src = write_ngff(tmp_path / f"img{version}.ome.zarr", img, version)
        url = f"{bucket}/{src.name}"
        s3_server.upload_folder(src, url)
        local = import_mosaic(src, tmp_path / f"local{version}.nightwatch.zarr")
        remote = import_mosaic(url, tmp_path / f"remote{version}.nightwatch.zarr")
        assert remote.mosaic_info["reference"] == url
        assert_same_mosaic(remote, local)
        assert changed_reference(remote) is None
        # credentials come from the environment and are never written into the store
        text = "".join(p.read_text(errors="replace") for p in remote.path.rglob("*.json"))
        assert "AWS" not in text and "testing" not in text and s3_server.endpoint not in text

    # rewrite the last chunk of level 0 on the server (different bytes, new ETag): noticed
    fs = fsspec.filesystem("s3", endpoint_url=s3_server.endpoint)
    keys = sorted(k for k in fs.find(url.removeprefix("s3://") + "/s0") if "/c/" in k)
    data = bytearray(fs.cat_file(keys[-1]))
    arr = zarr.open_group(str(src), mode="r+")["s0"]
    arr[:, -4:, -4:] = 255  # the same edit on disk gives the new chunk bytes
    last = sorted(p for p in (src / "s0" / "c").rglob("*") if p.is_file())[-1]
    assert last.read_bytes() != bytes(data)
    fs.pipe_file(keys[-1], last.read_bytes())
    assert "was changed since it was imported" in changed_reference(remote)


def test_napari_reader_on_s3_image_and_s3_store(s3_server, tmp_path):  # noqa: F811
    from napari_nightwatch._napari.reader import napari_get_reader

    bucket = s3_server.make_bucket("lab-images")
    img = painting_image(300, 400, seed=11)
    src = write_ngff(tmp_path / "img.ome.zarr", img, "0.5")
    s3_server.upload_folder(src, f"{bucket}/img.ome.zarr")
    [(data, kwargs, _)] = napari_get_reader(f"{bucket}/img.ome.zarr")(f"{bucket}/img.ome.zarr")
    assert [d.shape for d in data] == [(300, 400, 3), (150, 200, 3)] and kwargs["scale"] == pytest.approx((0.8, 0.8))
    np.testing.assert_array_equal(np.asarray(data[0]), img)

    # a painting store on S3 whose mosaic is that OME-Zarr, used in place: the reader opens the store
    store_url = f"{bucket}/painting.nightwatch.zarr"
    import_mosaic(f"{bucket}/img.ome.zarr", store_url)
    [(data, kwargs, _)] = napari_get_reader(store_url)(store_url)
    assert kwargs["metadata"]["nightwatch_kind"] == "mosaic"
    np.testing.assert_array_equal(np.asarray(data[0]), img)


# ------------------------------------------------------------------------ Deep Zoom over HTTP
def test_dzi_over_http_reads_only_finest_tiles_once_and_cache_is_reused(http_folder, tmp_path):  # noqa: F811
    img = painting_image(500, 700, seed=4)
    dzi = write_dzi(http_folder.root / "dz", img, tile=256, overlap=1)
    record = recording(http_folder)
    local = import_mosaic(dzi, tmp_path / "local.nightwatch.zarr", chunk=256)
    url = http_folder.url("dz/painting.dzi")
    cache = tmp_path / "tile-cache"
    remote = import_mosaic(url, tmp_path / "remote.nightwatch.zarr", chunk=256, cache_dir=cache)
    assert_same_mosaic(remote, local)
    np.testing.assert_array_equal(levels_of(remote)[0], img)
    info = remote.mosaic_info
    assert info["source"] == url and info["source_format"] == "dzi" and info["source_signature"].startswith("dziu:")
    finest = tile_requests(record, 10)
    # 3 x 2 tiles at the finest level (10), each fetched once; no other level is downloaded
    assert sorted(finest) == sorted(f"/dz/painting_files/10/{c}_{r}.png" for c in range(3) for r in range(2))
    assert tile_requests(record) == finest
    assert len(list(cache.rglob("*.png"))) == 6

    # the second read (through the CLI) takes every tile from the cache folder: no tile request at all
    record.clear()
    rc = main(["import-mosaic", url, str(tmp_path / "again.nightwatch.zarr"), "--cache-dir", str(cache), "--json"])
    assert rc == 0
    assert tile_requests(record) == [] and record == ["/dz/painting.dzi"]
    assert_same_mosaic(PaintingStore.open(tmp_path / "again.nightwatch.zarr"), local)


def test_openseadragon_dzi_served_in_place_equals_local(shared_data, tmp_path):
    folder = shared_data / "openseadragon-dzi"
    srv = HttpFolder(folder)  # serves the shared folder where it lies; nothing is copied
    try:
        for name in ("wide", "tall"):
            local = import_mosaic(folder / f"{name}.dzi", tmp_path / f"l-{name}.nightwatch.zarr")
            remote = import_mosaic(srv.url(f"{name}.dzi"), tmp_path / f"r-{name}.nightwatch.zarr")
            assert_same_mosaic(remote, local)
            assert remote.mosaic_shape == ((500, 2000) if name == "wide" else (2000, 500))
    finally:
        srv.close()


# ------------------------------------------------------------------------ failures: one sentence, nothing left
def test_missing_forbidden_and_vanishing_sources(http_folder, tmp_path, capsys):  # noqa: F811
    img = painting_image(500, 700, seed=5)
    write_dzi(http_folder.root / "dz", img, tile=256, overlap=1)
    write_ngff(http_folder.root / "secret" / "img.ome.zarr", img, "0.5")
    write_dzi(http_folder.root / "secret", img, tile=256, overlap=1)
    recording(http_folder, forbidden=("/secret/",))
    store = tmp_path / "p.nightwatch.zarr"

    cases = [
        (http_folder.url("nope.dzi"), r"nope\.dzi was not found \(404\)"),
        (http_folder.url("nope.ome.zarr"), r"nope\.ome\.zarr has no zarr metadata .* not found \(404\)"),
        (http_folder.url("secret/img.ome.zarr"), r"secret/img\.ome\.zarr.* refused access \(403\)"),
        (http_folder.url("secret/painting.dzi"), r"secret/painting\.dzi refused access \(403\)"),
    ]
    for url, pattern in cases:
        with pytest.raises(NightwatchError, match=pattern) as err:
            import_mosaic(url, store)
        assert "\n" not in str(err.value)
        assert not store.exists()
        assert main(["import-mosaic", url, str(store)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and "error:" in lines[0]
        assert not store.exists()

    # the server goes away after the first chunk: retried with back-off, then one sentence, no store
    def stop_after_first(done, total, stage):
        if done == 1:
            http_folder.close()

    url = http_folder.url("dz/painting.dzi")
    with pytest.raises(NightwatchError, match=r"painting_files/10/\d_\d\.png could not be read as a Deep Zoom tile "
                                              r"\(.*\) after 4 attempts; is the server reachable\?"):
        import_mosaic(url, store, chunk=256, progress=stop_after_first)
    assert not store.exists()


def test_failed_remote_reimport_keeps_the_previous_mosaic(http_folder, tmp_path):  # noqa: F811
    old = painting_image(300, 300, seed=6)
    src = write_dzi(tmp_path / "old", old, tile=128, overlap=1)
    store = import_mosaic(src, tmp_path / "p.nightwatch.zarr", chunk=128)
    write_dzi(http_folder.root / "dz", painting_image(500, 700, seed=7), tile=256, overlap=1)
    url = http_folder.url("dz/painting.dzi")

    def stop_after_first(done, total, stage):
        if done == 1:
            http_folder.close()

    with pytest.raises(NightwatchError, match="is the server reachable"):
        import_mosaic(url, store, chunk=256, progress=stop_after_first)
    reopened = PaintingStore.open(store.path)
    assert reopened.has_mosaic and reopened.mosaic_info["source"] == str(src.resolve())
    np.testing.assert_array_equal(levels_of(reopened)[0], old)


# ------------------------------------------------------------------------ napari reader (no Qt)
def test_napari_reader_opens_urls_lazily(http_folder, tmp_path):  # noqa: F811
    from napari_nightwatch._napari.reader import napari_get_reader

    img = painting_image(500, 700, seed=8)
    write_ngff(http_folder.root / "img.ome.zarr", img, "0.5")
    write_dzi(http_folder.root / "dz", img, tile=256, overlap=1)
    record = recording(http_folder)

    reader = napari_get_reader(http_folder.url("img.ome.zarr"))
    assert reader is not None
    [(data, kwargs, kind)] = reader(http_folder.url("img.ome.zarr"))
    assert kind == "image" and kwargs["multiscale"] and kwargs["rgb"] and kwargs["scale"] == pytest.approx((0.8, 0.8))
    assert [d.shape for d in data] == [(500, 700, 3), (250, 350, 3)]
    np.testing.assert_array_equal(np.asarray(data[1]), zarr.open_group(str(http_folder.root / "img.ome.zarr"))["s1"][...]
                                  .transpose(1, 2, 0))

    record.clear()
    url = http_folder.url("dz/painting.dzi")
    [(data, kwargs, kind)] = napari_get_reader(url)(url)
    # the DZI's own levels 10, 9, 8 (down to one tile), in pixels (a DZI carries no physical size)
    assert [d.shape for d in data] == [(500, 700, 3), (250, 350, 3), (125, 175, 3)]
    assert kwargs["metadata"]["dzi_levels"] == [10, 9, 8] and "scale" not in kwargs
    assert tile_requests(record) == ["/dz/painting_files/10/0_0.png"]  # opening reads one tile
    np.testing.assert_array_equal(np.asarray(data[0][256:300, 300:400]), img[256:300, 300:400])
    assert sorted(tile_requests(record)) == ["/dz/painting_files/10/0_0.png", "/dz/painting_files/10/1_1.png"]
    from PIL import Image

    level9 = np.asarray(Image.open(http_folder.root / "dz" / "painting_files" / "9" / "0_0.png"))[:250, :256]
    np.testing.assert_array_equal(np.asarray(data[1][:, :256]), level9)

    # what it cannot read: None, never an exception
    assert napari_get_reader(http_folder.url("photo.tif")) is None
    assert napari_get_reader(http_folder.url("missing.ome.zarr")) is None
    assert napari_get_reader(http_folder.url("dz")) is None  # a folder: no zarr metadata there


def test_napari_viewer_opens_a_dzi_url(http_folder, make_napari_viewer):  # noqa: F811
    img = painting_image(500, 700, seed=9)
    write_dzi(http_folder.root / "dz", img, tile=256, overlap=1)
    viewer = make_napari_viewer()
    [layer] = viewer.open(http_folder.url("dz/painting.dzi"), plugin="napari-nightwatch")
    assert layer.multiscale and layer.rgb and layer.data[0].shape == (500, 700, 3)
    np.testing.assert_array_equal(np.asarray(layer.data[0][:100, :100]), img[:100, :100])


def test_json_summary_names_the_url(http_folder, tmp_path):  # noqa: F811
    write_ngff(http_folder.root / "img.ome.zarr", painting_image(260, 300, seed=10), "0.5")
    url = http_folder.url("img.ome.zarr")
    store = import_mosaic(url, tmp_path / "p.nightwatch.zarr")
    summary = json.loads(json.dumps(store.summary(), default=str))
    assert summary["mosaic"]["reference"] == url and "stale" not in summary
