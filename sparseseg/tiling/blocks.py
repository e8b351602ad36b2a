"""Blocks and tiles of a 2D image: which pixels each block reads, predicts, labels, owns and writes.

One tiler for every stage: ``segment`` (blocks with a label margin and a network halo),
``measure``, ``export`` and accuracy (``tiles``: chunk-aligned, no overlap).

A block's *core* is a tile of the model grid (origins on multiples of the block size, itself a
multiple of the network's downsampling factor and of the output chunk). Around it:
- the *label context* adds ``margin`` px: instances are computed on core + margin, so any object
  smaller than the margin that is anchored in the core lies entirely inside it;
- the *read region* adds the network ``halo`` on top: the network output on the label context
  then equals whole-image output (halo >= receptive field, origins aligned).
Every object is *owned* by exactly one block - the one whose core holds its anchor (the top-left
corner of its bounding box, ``BlockGrid.owner``) - and only the owner keeps it. All regions are
clipped to the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

Window = tuple[slice, slice]


def _clip(start: int, stop: int, size: int) -> slice:
    return slice(max(0, start), min(size, stop))


def near_inner_edges(bbox: np.ndarray, window: Window, image_shape: tuple[int, int], reach: int = 0
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(near any, near the bottom, near the right): objects with (n, 4) ``window``-relative boxes (y0, x0, y1, x1)
    that come within ``reach`` px (0: touch) of an edge of ``window`` that is not the image edge."""
    (y0, y1), (x0, x1) = (window[0].start, window[0].stop), (window[1].start, window[1].stop)
    bottom = (bbox[:, 2] >= y1 - y0 - reach) & (y1 < image_shape[0])
    right = (bbox[:, 3] >= x1 - x0 - reach) & (x1 < image_shape[1])
    near = bottom | right | ((bbox[:, 0] <= reach) & (y0 > 0)) | ((bbox[:, 1] <= reach) & (x0 > 0))
    return near, bottom, right


def open_edges(window: Window, image_shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
    """Which edges of ``window`` (top, left, bottom, right) lie inside the image (beyond them is more image)."""
    return (window[0].start > 0, window[1].start > 0, window[0].stop < image_shape[0], window[1].stop < image_shape[1])


@dataclass(frozen=True)
class Block:
    index: tuple[int, int]
    core: Window
    context: Window   # core + margin (instances)
    read: Window      # context + halo (network input)

    @property
    def name(self) -> str:
        return f"{self.index[0]}_{self.index[1]}"

    def open_edges(self, image_shape: tuple[int, int]) -> tuple[bool, bool, bool, bool]:
        """Which edges of the label context (top, left, bottom, right) are not the image's."""
        return open_edges(self.context, image_shape)


@dataclass(frozen=True)
class BlockGrid:
    shape: tuple[int, int]
    block: int
    margin: int
    halo: int
    factor: int

    def __post_init__(self):
        for name, value in (("block", self.block), ("margin", self.margin), ("halo", self.halo)):
            if value % self.factor:
                raise ValueError(f"{name}={value} must be a multiple of the network's downsampling factor "
                                 f"{self.factor} (tile origins must align with its pooling grid)")
        if self.block <= 0:
            raise ValueError(f"block must be positive, got {self.block}")

    @property
    def grid(self) -> tuple[int, int]:
        return tuple(-(-s // self.block) for s in self.shape)  # type: ignore[return-value]

    def blocks(self) -> Iterator[Block]:
        """Every block, row by row."""
        for by in range(self.grid[0]):
            for bx in range(self.grid[1]):
                yield self.at((by, bx))

    def at(self, index: tuple[int, int]) -> Block:
        """The block at grid position ``index`` (row, column)."""
        by, bx = index
        h, w = self.shape
        y0, x0 = by * self.block, bx * self.block
        y1, x1 = y0 + self.block, x0 + self.block
        m, r = self.margin, self.margin + self.halo
        return Block(index=(by, bx), core=(_clip(y0, y1, h), _clip(x0, x1, w)),
                     context=(_clip(y0 - m, y1 + m, h), _clip(x0 - m, x1 + m, w)),
                     read=(_clip(y0 - r, y1 + r, h), _clip(x0 - r, x1 + r, w)))

    def owner(self, y: int, x: int) -> tuple[int, int]:
        """Grid index of the block whose core holds pixel (y, x)."""
        return y // self.block, x // self.block

    def blocks_touching(self, window: Window) -> list[Block]:
        """Blocks whose label context intersects ``window`` (their objects may reach into it).

        Found by index arithmetic: block k's context spans [k B - m, (k + 1) B + m).
        """
        ranges = []
        for sl, n in zip(window, self.grid):
            first = max(0, (sl.start - self.margin) // self.block)
            last = min(n - 1, (sl.stop - 1 + self.margin) // self.block)
            ranges.append(range(first, last + 1))
        return [self.at((by, bx)) for by in ranges[0] for bx in ranges[1]]


def aligned_window(window: Window, shape: tuple[int, int], factor: int) -> Window:
    """``window`` clipped to the image and widened to the pooling grid (starts and stops on multiples of
    ``factor``, or the image edge)."""
    out = []
    for sl, n in zip(window, shape):
        start = max(0, sl.start // factor * factor)
        stop = min(n, -(-sl.stop // factor) * factor)
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


def tiles(shape: tuple[int, int], tile: int, chunk: int | None = None) -> list[Block]:
    """Tiles of about ``tile`` px covering ``shape`` without overlap, row by row (core = context = read).

    With ``chunk`` (the array's chunk width), ``tile`` is rounded down to a multiple of it, so each
    chunk is read once.
    """
    size = tile // chunk * chunk if chunk and 0 < chunk <= tile else tile
    return list(BlockGrid(shape=tuple(shape), block=size, margin=0, halo=0, factor=1).blocks())


def array_tiles(array, tile: int) -> list[Block]:
    """``tiles`` of a zarr or dask array's (Y, X) shape, aligned to its chunks."""
    chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)
    return tiles(tuple(array.shape[-2:]), tile, int(chunks[-1]) if chunks else None)
