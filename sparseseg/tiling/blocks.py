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
pixel of its bounding box) - and only the owner keeps it. All regions are clipped to the image.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

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


@dataclass(frozen=True)
class Block:
    index: tuple[int, int]
    core: Window
    context: Window   # core + margin (instances)
    read: Window      # context + halo (network input)

    @property
    def name(self) -> str:
        return f"{self.index[0]}_{self.index[1]}"

    def ownership(self, bbox: np.ndarray, image_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """(owned, may be cut): bool arrays for objects with (n, 4) context-relative boxes (y0, x0, y1, x1).

        An owned object is anchored (box top-left) in the core; one reaching an edge of the context
        that is not the image edge may extend beyond it, so it may be cut.
        """
        top, left = bbox[:, 0] + self.context[0].start, bbox[:, 1] + self.context[1].start
        owned = ((self.core[0].start <= top) & (top < self.core[0].stop)
                 & (self.core[1].start <= left) & (left < self.core[1].stop))
        return owned, owned & near_inner_edges(bbox, self.context, image_shape)[0]

    def owned_objects(self, labels: np.ndarray, image_shape: tuple[int, int]
                      ) -> Iterator[tuple[int, tuple[slice, slice], bool]]:
        """(label, bounding box, may be cut) of each object of the context ``labels`` this block owns."""
        boxes = ndi.find_objects(labels)
        found = [k for k, box in enumerate(boxes) if box is not None]
        bbox = np.array([[boxes[k][0].start, boxes[k][1].start, boxes[k][0].stop, boxes[k][1].stop] for k in found],
                        np.int64).reshape(-1, 4)
        owned, cut = self.ownership(bbox, image_shape)
        for i in np.flatnonzero(owned):
            yield found[i] + 1, boxes[found[i]], bool(cut[i])

    def context_in_read(self) -> Window:
        """The label context in read-region coordinates (where to crop the network output)."""
        return (slice(self.context[0].start - self.read[0].start, self.context[0].stop - self.read[0].start),
                slice(self.context[1].start - self.read[1].start, self.context[1].stop - self.read[1].start))


@dataclass(frozen=True)
class BlockPlan:
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

    def amplification(self) -> float:
        """Network input pixels read per output pixel written (the halo and margin overhead)."""
        read = sum((b.read[0].stop - b.read[0].start) * (b.read[1].stop - b.read[1].start) for b in self.blocks())
        return read / (self.shape[0] * self.shape[1])


def tiles(shape: tuple[int, int], tile: int, chunk: int | None = None) -> list[Block]:
    """Tiles of about ``tile`` px covering ``shape`` without overlap, row by row (core = context = read).

    With ``chunk`` (the array's chunk width), ``tile`` is rounded down to a multiple of it, so each
    chunk is read once.
    """
    size = tile // chunk * chunk if chunk and 0 < chunk <= tile else tile
    return list(BlockPlan(shape=tuple(shape), block=size, margin=0, halo=0, factor=1).blocks())


def array_tiles(array, tile: int) -> list[Block]:
    """``tiles`` of a zarr or dask array's (Y, X) shape, aligned to its chunks."""
    chunks = getattr(array, "chunksize", None) or getattr(array, "chunks", None)
    return tiles(tuple(array.shape[-2:]), tile, int(chunks[-1]) if chunks else None)


def canvas_shape(shape_yx: tuple[int, int], factor: int) -> tuple[int, int]:
    """The image zero-extended at the bottom/right to multiples of the network's downsampling ``factor``."""
    return tuple(-(-s // factor) * factor for s in shape_yx)  # type: ignore[return-value]


def read_canvas(image: np.ndarray, rows: slice, cols: slice) -> np.ndarray:
    """(C, h, w) float32 window of the zero-extended canvas (zeros beyond the image's bottom/right)."""
    out = np.zeros((image.shape[0], rows.stop - rows.start, cols.stop - cols.start), np.float32)
    part = image[:, rows.start: min(rows.stop, image.shape[1]), cols.start: min(cols.stop, image.shape[2])]
    out[:, : part.shape[1], : part.shape[2]] = part
    return out
