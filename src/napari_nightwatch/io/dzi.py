"""Deep Zoom (DZI) images: the form in which the Rijksmuseum publishes the Night Watch.

A DZI is an XML descriptor ``NAME.dzi`` plus a ``NAME_files/LEVEL/COL_ROW.FORMAT`` tile
tree, on disk or over HTTP(S)/S3. :class:`DeepZoomImage` exposes the finest level as a
lazy ``(y, x, c)`` array that :func:`~napari_nightwatch.io.mosaic.write_mosaic_array`
streams region by region, and every level (:meth:`DeepZoomImage.levels`) for viewers.
A remote DZI is read tile by tile on demand, never downloaded whole; tiles fetched once
may be kept in a local cache folder the user names.
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import threading
from collections import OrderedDict
from pathlib import Path

import numpy as np

from ..core.errors import NightwatchError
from .remote import fetch, fetch_many, is_url, join, url_path

DZI_SUFFIXES = (".dzi", ".xml")
#: compressed tile bytes kept in memory for a remote DZI without a cache folder: enough for a band
#: of tiles across a wide image (so a tile row shared by two chunk rows is not fetched twice),
#: bounded whatever the image size
REMOTE_BYTES_CACHE = 64 << 20


class DeepZoomImage:
    """A Deep Zoom (DZI) pyramid; indexing reads its finest level as a lazy ``(y, x, c)`` array.

    A DZI is an XML descriptor (``NAME.dzi``: TileSize, Overlap, Format, Size) beside a
    ``NAME_files/LEVEL/COL_ROW.FORMAT`` tile tree; the finest level is
    ``ceil(log2(max(width, height)))`` and level ``L`` is the finest halved ``finest - L``
    times (sizes rounded up). Tiles carry ``Overlap`` extra pixels on each inner edge, which
    are cropped. No library reads DZI regions lazily, so this is by hand. Recently decoded
    tiles are cached (bounded count) because store chunks and DZI tiles rarely align.

    Parameters
    ----------
    source
        The ``.dzi`` descriptor: a local path or an ``http(s)://`` / ``s3://`` URL (the tile
        tree is then read from ``NAME_files/`` beside it over the same protocol).
    cache_tiles
        Decoded tiles kept in memory (all levels together).
    cache_dir
        Remote DZIs only: a local folder where fetched tiles are kept as files and reused by
        later reads (created if missing; one sub-folder per image). Local DZIs ignore it.

    Notes
    -----
    Remote reads go through :func:`~napari_nightwatch.io.remote.fetch` (retries with back-off;
    403/404/timeouts are one sentence naming the URL). Reads may come from several threads
    (dask in napari); the caches are guarded by a lock.
    """

    def __init__(self, source: str | Path, cache_tiles: int = 64, cache_dir: str | Path | None = None) -> None:
        self.remote = is_url(source)
        self.location = str(source)
        #: the descriptor: a Path for a local DZI, the URL (str) for a remote one
        self.path: Path | str = self.location if self.remote else Path(source)
        text = self._descriptor_bytes()
        self.descriptor = text
        self._parse(text)
        self.max_level = math.ceil(math.log2(max(self.width, self.height))) if max(self.width, self.height) > 1 else 0
        self.level = self.max_level  # the finest level, which indexing reads
        stem = self._stem()
        if self.remote:
            base = self.location.rsplit("/", 1)[0]
            self.tiles_root: Path | str = join(base, f"{stem}_files")
            self.tile_dir: Path | str = join(self.tiles_root, str(self.level))
        else:
            self.tiles_root = self.path.parent / f"{stem}_files"
            self.tile_dir = self.tiles_root / str(self.level)
            if not self.tile_dir.is_dir():
                raise NightwatchError(f"The Deep Zoom image {self.path} has no finest-level tile folder {self.tile_dir}.")
        self.cache_dir: Path | None = None
        if self.remote and cache_dir is not None:
            # one folder per image (URL and descriptor), so two DZIs, or a re-published one, never mix tiles
            key = hashlib.sha1(self.location.encode() + b"\0" + text).hexdigest()[:16]
            self.cache_dir = Path(cache_dir) / key
            try:
                self.cache_dir.mkdir(parents=True, exist_ok=True)
                (self.cache_dir / "SOURCE.txt").write_text(self.location + "\n")
            except OSError as exc:
                raise NightwatchError(f"The tile cache folder {cache_dir} could not be written ({exc}); "
                                      "expected a writable folder.") from exc
        self.n_cols = math.ceil(self.width / self.tile_size)
        self.n_rows = math.ceil(self.height / self.tile_size)
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int, int], np.ndarray] = OrderedDict()
        self._cache_tiles = max(1, int(cache_tiles))
        self._bytes: OrderedDict[tuple[int, int, int], bytes] = OrderedDict()
        self._bytes_total = 0
        #: tiles read from the server (not from a cache), for tests and benchmarks
        self.fetched = 0
        first = self._tile(self.level, 0, 0)
        self.dtype = first.dtype
        self.shape = (self.height, self.width, int(first.shape[2]))
        self.ndim = 3

    # ---- descriptor ---------------------------------------------------------------
    def _stem(self) -> str:
        name = url_path(self.location).rsplit("/", 1)[-1] if self.remote else self.path.name
        return name.rsplit(".", 1)[0] if "." in name else name

    def _descriptor_bytes(self) -> bytes:
        if self.remote:
            return fetch(self.location, "read as a Deep Zoom descriptor")
        try:
            return Path(self.path).read_bytes()
        except OSError as exc:
            raise NightwatchError(f"{self.path} is not a readable Deep Zoom descriptor (XML): {exc}.") from exc

    def _parse(self, text: bytes) -> None:
        import xml.etree.ElementTree as ET

        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise NightwatchError(f"{self.path} is not a readable Deep Zoom descriptor (XML): {exc}.") from exc
        size = next((el for el in root.iter() if el.tag.endswith("Size")), None)
        if not root.tag.endswith("Image") or size is None:
            raise NightwatchError(f"{self.path} is not a Deep Zoom descriptor; expected <Image TileSize=..><Size Width=.. Height=../>.")
        try:
            self.tile_size = int(root.get("TileSize"))
            self.overlap = int(root.get("Overlap", 0))
            self.format = root.get("Format", "jpg")
            self.width, self.height = int(size.get("Width")), int(size.get("Height"))
        except (TypeError, ValueError) as exc:
            raise NightwatchError(f"{self.path} lacks a valid TileSize, Width or Height attribute.") from exc
        if self.tile_size < 1 or self.width < 1 or self.height < 1:
            raise NightwatchError(f"{self.path} gives TileSize {self.tile_size} and size {self.width}x{self.height}; "
                                  "expected positive numbers.")

    # ---- levels -------------------------------------------------------------------
    def level_shape(self, level: int) -> tuple[int, int]:
        """``(height, width)`` of DZI level ``level`` (the finest is :attr:`max_level`)."""
        f = 2 ** (self.max_level - int(level))
        return -(-self.height // f), -(-self.width // f)

    def levels(self, min_side: int | None = None) -> list[DeepZoomLevel]:
        """Lazy ``(y, x, c)`` views of the pyramid's levels, finest first.

        Parameters
        ----------
        min_side
            Stop after the first level whose long side is at most this (default: the tile
            size, so the coarsest level is one tile).
        """
        stop = self.tile_size if min_side is None else int(min_side)
        out = [DeepZoomLevel(self, self.max_level)]
        for level in range(self.max_level - 1, -1, -1):
            if max(out[-1].shape[:2]) <= stop:
                break
            out.append(DeepZoomLevel(self, level))
        return out

    # ---- tiles ----------------------------------------------------------------------
    def tile_location(self, level: int, col: int, row: int) -> Path | str:
        """Where tile ``COL_ROW`` of ``level`` lives (path or URL)."""
        name = f"{col}_{row}.{self.format}"
        if self.remote:
            return join(self.tiles_root, str(level), name)
        return self.tiles_root / str(level) / name

    def _cache_file(self, level: int, col: int, row: int) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / str(level) / f"{col}_{row}.{self.format}"

    def _held_bytes(self, level: int, col: int, row: int) -> bytes | None:
        """A tile's bytes from the cache folder or the in-memory store of fetched tiles, else None."""
        cached = self._cache_file(level, col, row)
        if cached is not None:
            try:
                return cached.read_bytes()
            except OSError:
                return None
        key = (level, col, row)
        with self._lock:
            if key in self._bytes:
                self._bytes.move_to_end(key)
                return self._bytes[key]
        return None

    def _keep(self, level: int, col: int, row: int, data: bytes) -> None:
        """Keep fetched tile bytes: as a file in the cache folder, else in memory (bounded)."""
        cached = self._cache_file(level, col, row)
        with self._lock:
            self.fetched += 1
        if cached is not None:
            # write beside, then rename: a reader in another thread or process never sees half a tile
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.part")
            try:
                tmp.write_bytes(data)
                os.replace(tmp, cached)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                raise NightwatchError(f"The tile cache folder {self.cache_dir} could not be written ({exc}); "
                                      "expected a writable folder with free space.") from exc
            return
        with self._lock:
            self._bytes[(level, col, row)] = data
            self._bytes_total += len(data)
            while self._bytes_total > REMOTE_BYTES_CACHE and len(self._bytes) > 1:
                _, old = self._bytes.popitem(last=False)
                self._bytes_total -= len(old)

    def _remote_tile_bytes(self, level: int, col: int, row: int) -> bytes:
        data = self._held_bytes(level, col, row)
        if data is None:
            data = fetch(str(self.tile_location(level, col, row)), "read as a Deep Zoom tile")
            self._keep(level, col, row, data)
        return data

    def _prefetch(self, level: int, tiles: list[tuple[int, int]]) -> None:
        """Fetch the remote tiles a region needs that no cache holds, concurrently (one round of
        requests instead of one after another: on a real network the latency, not the bytes, dominates)."""
        with self._lock:
            todo = [(c, r) for c, r in tiles if (level, c, r) not in self._cache]
        todo = [(c, r) for c, r in todo if self._held_bytes(level, c, r) is None]
        if len(todo) < 2:
            return  # a single tile is fetched (with its retries) when it is decoded
        urls = {str(self.tile_location(level, c, r)): (c, r) for c, r in todo}
        for url, data in fetch_many(list(urls), "read as a Deep Zoom tile").items():
            self._keep(level, *urls[url], data)

    def tile_bytes(self, level: int, col: int, row: int) -> bytes:
        """The stored (compressed) bytes of one tile, from the cache folder or memory where held."""
        if self.remote:
            return self._remote_tile_bytes(level, col, row)
        return Path(self.tile_location(level, col, row)).read_bytes()

    def _decode(self, level: int, col: int, row: int) -> np.ndarray:
        from PIL import Image

        where = self.tile_location(level, col, row)
        try:
            src = io.BytesIO(self._remote_tile_bytes(level, col, row)) if self.remote else where
            with Image.open(src) as im:
                if im.mode not in ("L", "RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                tile = np.asarray(im)
        except NightwatchError:
            raise
        except OSError as exc:
            what = "missing or unreadable" if not self.remote else "not a readable image"
            raise NightwatchError(f"Deep Zoom tile {where} is {what}; expected a {self.format} tile there.") from exc
        return tile[..., None] if tile.ndim == 2 else tile

    def _tile(self, level: int, col: int, row: int) -> np.ndarray:
        key = (level, col, row)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        tile = self._decode(level, col, row)
        h, w = self.level_shape(level)
        ts, ov = self.tile_size, self.overlap
        # crop the overlap so the cached tile covers exactly its own grid cell
        ty0, tx0 = (ov if row > 0 else 0), (ov if col > 0 else 0)
        th, tw = min(ts, h - row * ts), min(ts, w - col * ts)
        tile = tile[ty0 : ty0 + th, tx0 : tx0 + tw]
        if tile.shape[:2] != (th, tw):
            raise NightwatchError(
                f"Deep Zoom tile {self.tile_location(level, col, row)} is {tile.shape[1]}x{tile.shape[0]} px after "
                f"cropping the overlap; expected {tw}x{th}."
            )
        with self._lock:
            self._cache[key] = tile
            while len(self._cache) > self._cache_tiles:
                self._cache.popitem(last=False)
        return tile

    def read(self, level: int, ys: slice, xs: slice) -> np.ndarray:
        """Pixels ``[ys, xs]`` of ``level`` as ``(y, x, c)``, reading only the tiles they touch."""
        h, w = self.level_shape(level)
        y0, y1, _ = ys.indices(h)
        x0, x1, _ = xs.indices(w)
        y1, x1 = max(y1, y0), max(x1, x0)
        ts, c = self.tile_size, self.shape[2]
        out = np.empty((y1 - y0, x1 - x0, c), self.dtype)
        if y1 == y0 or x1 == x0:
            return out
        if self.remote:
            self._prefetch(level, [(col, row) for row in range(y0 // ts, (y1 - 1) // ts + 1)
                                   for col in range(x0 // ts, (x1 - 1) // ts + 1)])
        for row in range(y0 // ts, (y1 - 1) // ts + 1):
            for col in range(x0 // ts, (x1 - 1) // ts + 1):
                tile = self._tile(level, col, row)
                if tile.shape[2] != c:
                    raise NightwatchError(f"Deep Zoom tile {self.tile_location(level, col, row)} has {tile.shape[2]} "
                                          f"channels; expected {c}.")
                gy0, gx0 = max(y0, row * ts), max(x0, col * ts)
                gy1, gx1 = min(y1, row * ts + tile.shape[0]), min(x1, col * ts + tile.shape[1])
                out[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0] = tile[gy0 - row * ts : gy1 - row * ts, gx0 - col * ts : gx1 - col * ts]
        return out

    def __getitem__(self, key) -> np.ndarray:
        return _index(self.read(self.level, key[0], key[1]), key)


def _index(block: np.ndarray, key) -> np.ndarray:
    """Apply the channel part of an index (dask passes one) to a block read for ``key[:2]``."""
    if isinstance(key, tuple) and len(key) > 2:
        return block[:, :, key[2]]
    return block


class DeepZoomLevel:
    """One level of a :class:`DeepZoomImage` as a lazy ``(y, x, c)`` array (dask ``from_array`` takes it)."""

    def __init__(self, image: DeepZoomImage, level: int) -> None:
        self.image = image
        self.level = int(level)
        h, w = image.level_shape(level)
        self.shape = (h, w, image.shape[2])
        self.dtype = image.dtype
        self.ndim = 3

    def __getitem__(self, key) -> np.ndarray:
        return _index(self.image.read(self.level, key[0], key[1]), key)


def find_dzi(path: str | Path) -> Path | str | None:
    """The ``.dzi`` descriptor for a path: the file itself, its ``NAME_files`` folder, or a folder holding one.

    For a URL (no listing over HTTP): the URL itself when it names a ``.dzi``/``.xml``
    descriptor, ``NAME.dzi`` beside a ``NAME_files`` URL, else None.
    """
    if is_url(path):
        url = str(path).rstrip("/")
        p = url_path(url).lower()
        if p.endswith(DZI_SUFFIXES):
            return url
        if p.endswith("_files"):
            return url[: -len("_files")] + ".dzi"
        return None
    path = Path(path)
    if path.is_file() and path.suffix.lower() in DZI_SUFFIXES:
        return path
    if path.is_dir():
        if path.name.endswith("_files"):
            for suffix in DZI_SUFFIXES:
                cand = path.parent / (path.name[: -len("_files")] + suffix)
                if cand.exists():
                    return cand
        dzis = sorted(path.glob("*.dzi"))
        if len(dzis) == 1:
            return dzis[0]
    return None
