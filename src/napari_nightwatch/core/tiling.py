"""Tile grids over a mosaic pyramid level, addressed in level-0 pixels.

A grid is defined by the pyramid level it reads, the tile size and stride in that
level's pixels, and the level-0 shape of the mosaic. Tiles are numbered row-major;
an optional keep-mask (one bool per tile) skips background tiles.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .errors import NightwatchError


@dataclass(frozen=True)
class TileGrid:
    """A regular grid of square tiles on one pyramid level.

    Parameters
    ----------
    mosaic_shape
        (height, width) of the mosaic at level 0, in pixels.
    level
        Pyramid level the tiles are read from (0 = full resolution).
    tile
        Tile edge in pixels *of that level*.
    stride
        Step between tile origins in pixels of that level (``stride < tile`` overlaps).
    downsample
        Level-0 pixels per pixel of ``level`` (``2**level`` for a factor-2 pyramid).
    """

    mosaic_shape: tuple[int, int]
    level: int = 0
    tile: int = 224
    stride: int = 224
    downsample: int = 1
    keep: np.ndarray | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.tile < 1 or self.stride < 1:
            raise NightwatchError(
                f"Tile size ({self.tile}) and stride ({self.stride}) must be positive pixels."
            )
        h, w = self.level_shape
        if h < self.tile or w < self.tile:
            raise NightwatchError(
                f"Tile size {self.tile} px does not fit in pyramid level {self.level} "
                f"({h} x {w} px); choose a smaller tile or a finer level."
            )
        if self.keep is not None and self.keep.shape != (self.n_rows * self.n_cols,):
            raise NightwatchError(
                f"Tile keep-mask has {self.keep.shape} entries; expected {self.n_rows * self.n_cols}."
            )

    # ---- geometry -----------------------------------------------------------------
    @property
    def level_shape(self) -> tuple[int, int]:
        d = self.downsample
        return (-(-self.mosaic_shape[0] // d), -(-self.mosaic_shape[1] // d))

    @property
    def n_rows(self) -> int:
        return (self.level_shape[0] - self.tile) // self.stride + 1

    @property
    def n_cols(self) -> int:
        return (self.level_shape[1] - self.tile) // self.stride + 1

    @property
    def shape(self) -> tuple[int, int]:
        """(rows, cols) of the full grid."""
        return (self.n_rows, self.n_cols)

    @property
    def n_tiles(self) -> int:
        return self.n_rows * self.n_cols

    @property
    def grid_id(self) -> str:
        """A short stable name, e.g. ``L0-t224-s224``."""
        return f"L{self.level}-t{self.tile}-s{self.stride}"

    def indices(self) -> np.ndarray:
        """Tile indices kept by the mask (all tiles when there is none)."""
        if self.keep is None:
            return np.arange(self.n_tiles)
        return np.flatnonzero(self.keep)

    def row_col(self, index: np.ndarray | int) -> tuple[np.ndarray, np.ndarray]:
        idx = np.asarray(index)
        return idx // self.n_cols, idx % self.n_cols

    def boxes_level(self, index: np.ndarray | None = None) -> np.ndarray:
        """(N, 4) int boxes ``y0, x0, y1, x1`` in pixels of the grid's level."""
        idx = np.arange(self.n_tiles) if index is None else np.asarray(index)
        r, c = self.row_col(idx)
        y0 = r * self.stride
        x0 = c * self.stride
        return np.stack([y0, x0, y0 + self.tile, x0 + self.tile], axis=-1).astype(np.int64)

    def boxes(self, index: np.ndarray | None = None) -> np.ndarray:
        """(N, 4) boxes ``y0, x0, y1, x1`` in level-0 pixels."""
        return self.boxes_level(index) * self.downsample

    def centers(self, index: np.ndarray | None = None) -> np.ndarray:
        """(N, 2) tile centres ``y, x`` in level-0 pixels."""
        b = self.boxes(index).astype(np.float64)
        return np.stack([(b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2], axis=-1)

    def tiles_in_box(self, box_level0: tuple[float, float, float, float], fully: bool = True) -> np.ndarray:
        """Indices of tiles inside (``fully``) or overlapping a level-0 box."""
        y0, x0, y1, x1 = box_level0
        b = self.boxes()
        if fully:
            sel = (b[:, 0] >= y0) & (b[:, 1] >= x0) & (b[:, 2] <= y1) & (b[:, 3] <= x1)
        else:
            sel = (b[:, 0] < y1) & (b[:, 2] > y0) & (b[:, 1] < x1) & (b[:, 3] > x0)
        return np.flatnonzero(sel)

    def tile_at(self, y: float, x: float) -> int:
        """Index of the tile whose centre is nearest to level-0 point (y, x) along each axis."""
        d = self.downsample
        r = int(np.clip(np.rint((y / d - self.tile / 2) / self.stride), 0, self.n_rows - 1))
        c = int(np.clip(np.rint((x / d - self.tile / 2) / self.stride), 0, self.n_cols - 1))
        return r * self.n_cols + c

    def to_map(self, values: np.ndarray, fill: float = np.nan, index: np.ndarray | None = None) -> np.ndarray:
        """Scatter per-tile values into a (rows, cols) image (one pixel per tile)."""
        values = np.asarray(values)
        out = np.full((self.n_tiles,) + values.shape[1:], fill, dtype=np.float32)
        idx = self.indices() if index is None else np.asarray(index)
        out[idx] = values
        return out.reshape(self.shape + values.shape[1:])

    def map_transform(self) -> tuple[tuple[float, float], tuple[float, float]]:
        """(scale, translate) in level-0 pixels that place a :meth:`to_map` image.

        Pixel (r, c) of the map is centred on the centre of tile (r, c).
        """
        step = float(self.stride * self.downsample)
        half = self.tile * self.downsample / 2.0
        # napari places pixel centres at translate + scale * index
        return (step, step), (half - 0.5, half - 0.5)

    # ---- (de)serialisation ----------------------------------------------------------
    def to_attrs(self) -> dict:
        return {
            "mosaic_shape": [int(v) for v in self.mosaic_shape],
            "level": int(self.level),
            "tile": int(self.tile),
            "stride": int(self.stride),
            "downsample": int(self.downsample),
            "grid_id": self.grid_id,
        }

    @classmethod
    def from_attrs(cls, d: dict, keep: np.ndarray | None = None) -> TileGrid:
        return cls(
            mosaic_shape=tuple(int(v) for v in d["mosaic_shape"]),
            level=int(d["level"]),
            tile=int(d["tile"]),
            stride=int(d["stride"]),
            downsample=int(d["downsample"]),
            keep=keep,
        )

    def with_keep(self, keep: np.ndarray | None) -> TileGrid:
        return TileGrid(self.mosaic_shape, self.level, self.tile, self.stride, self.downsample, keep)
