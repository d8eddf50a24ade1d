"""Deep Zoom (DZI) images: the form in which the Rijksmuseum publishes the Night Watch.

A DZI is an XML descriptor ``NAME.dzi`` plus a ``NAME_files/LEVEL/COL_ROW.FORMAT`` tile
tree. :class:`DeepZoomImage` exposes the finest level as a lazy ``(y, x, c)`` array that
:func:`~napari_nightwatch.io.mosaic.write_mosaic_array` streams region by region.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from ..core.errors import NightwatchError


class DeepZoomImage:
    """The finest level of a Deep Zoom (DZI) pyramid as a lazy ``(y, x, c)`` array.

    A DZI is an XML descriptor (``NAME.dzi``: TileSize, Overlap, Format, Size) beside a
    ``NAME_files/LEVEL/COL_ROW.FORMAT`` tile tree; the finest level is
    ``ceil(log2(max(width, height)))``. Tiles carry ``Overlap`` extra pixels on each inner
    edge, which are cropped. No library reads DZI regions lazily, so this is by hand.
    Recently decoded tiles are cached (bounded count) because store chunks and DZI
    tiles rarely align.
    """

    def __init__(self, dzi_path: Path, cache_tiles: int = 64) -> None:
        import xml.etree.ElementTree as ET

        self.path = Path(dzi_path)
        try:
            root = ET.parse(self.path).getroot()
        except (ET.ParseError, OSError) as exc:
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
        self.level = math.ceil(math.log2(max(self.width, self.height))) if max(self.width, self.height) > 1 else 0
        self.tile_dir = self.path.parent / f"{self.path.stem}_files" / str(self.level)
        if not self.tile_dir.is_dir():
            raise NightwatchError(f"The Deep Zoom image {self.path} has no finest-level tile folder {self.tile_dir}.")
        self.n_cols = math.ceil(self.width / self.tile_size)
        self.n_rows = math.ceil(self.height / self.tile_size)
        self._cache: dict[tuple[int, int], np.ndarray] = {}
        self._cache_tiles = int(cache_tiles)
        first = self._tile(0, 0)
        self.dtype = first.dtype
        self.shape = (self.height, self.width, int(first.shape[2]))
        self.ndim = 3

    def _tile(self, col: int, row: int) -> np.ndarray:
        key = (col, row)
        if key in self._cache:
            return self._cache[key]
        from PIL import Image

        p = self.tile_dir / f"{col}_{row}.{self.format}"
        try:
            with Image.open(p) as im:
                if im.mode not in ("L", "RGB", "RGBA"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                tile = np.asarray(im)
        except OSError as exc:
            raise NightwatchError(f"Deep Zoom tile {p} is missing or unreadable; expected a {self.format} tile there.") from exc
        if tile.ndim == 2:
            tile = tile[..., None]
        x_first = col * self.tile_size - (self.overlap if col > 0 else 0)
        y_first = row * self.tile_size - (self.overlap if row > 0 else 0)
        # crop the overlap so the cached tile covers exactly its own grid cell
        ty0, tx0 = row * self.tile_size - y_first, col * self.tile_size - x_first
        th = min(self.tile_size, self.height - row * self.tile_size)
        tw = min(self.tile_size, self.width - col * self.tile_size)
        tile = tile[ty0 : ty0 + th, tx0 : tx0 + tw]
        if tile.shape[:2] != (th, tw):
            raise NightwatchError(
                f"Deep Zoom tile {p} is {tile.shape[1]}x{tile.shape[0]} px after cropping the overlap; expected {tw}x{th}."
            )
        if len(self._cache) >= self._cache_tiles:
            self._cache.pop(next(iter(self._cache)))
        self._cache[key] = tile
        return tile

    def __getitem__(self, key) -> np.ndarray:
        ys, xs = key[0], key[1]
        y0, y1, _ = ys.indices(self.height)
        x0, x1, _ = xs.indices(self.width)
        ts = self.tile_size
        out = np.empty((y1 - y0, x1 - x0, self.shape[2]), self.dtype)
        for row in range(y0 // ts, (y1 - 1) // ts + 1):
            for col in range(x0 // ts, (x1 - 1) // ts + 1):
                tile = self._tile(col, row)
                if tile.shape[2] != self.shape[2]:
                    raise NightwatchError(f"Deep Zoom tile {col}_{row} of {self.path} has {tile.shape[2]} channels; expected {self.shape[2]}.")
                gy0, gx0 = max(y0, row * ts), max(x0, col * ts)
                gy1, gx1 = min(y1, row * ts + tile.shape[0]), min(x1, col * ts + tile.shape[1])
                out[gy0 - y0 : gy1 - y0, gx0 - x0 : gx1 - x0] = tile[gy0 - row * ts : gy1 - row * ts, gx0 - col * ts : gx1 - col * ts]
        return out


def find_dzi(path: Path) -> Path | None:
    """The ``.dzi`` descriptor for a path: the file itself, its ``NAME_files`` folder, or a folder holding one."""
    if path.is_file() and path.suffix.lower() in (".dzi", ".xml"):
        return path
    if path.is_dir():
        if path.name.endswith("_files"):
            for suffix in (".dzi", ".xml"):
                cand = path.parent / (path.name[: -len("_files")] + suffix)
                if cand.exists():
                    return cand
        dzis = sorted(path.glob("*.dzi"))
        if len(dzis) == 1:
            return dzis[0]
    return None
