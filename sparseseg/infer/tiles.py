"""The fixed global tile grid the network is evaluated on: every output pixel is computed from one input tile.

Convolution libraries pick kernels by input shape (PyTorch sends small convolutions to its native
path and larger ones to oneDNN; cuDNN chooses algorithms per shape and batch), and two kernels round
differently. So the network never sees a window-shaped input: along each axis the image is cut into
tiles of ``tile`` px read at origins ``i * stride`` (``stride = tile - 2 * halo``); tile ``i`` gives the
output rows ``[i * stride + halo, (i + 1) * stride + halo)`` (the first from 0, the last to the image
edge), zero-padded beyond the image. Any window, block, large-object window or the whole image then
gets bitwise the same values: the same input array through the same kernel, tiles in batches of
the same size. An axis no longer than one tile is one tile of its own canvas (the image zero-extended
to the downsampling factor), exactly the whole-image forward.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Default tile edge (px of network input) for whole images in memory (calibration, validation): few tiles.
#: The halo overhead is (tile / stride)^2; see docs/segment.md.
DEFAULT_TILE = 1024
#: `segment`'s default on slides: one-thread 512 px tiles stay in cache and run 1.4x faster per output pixel than
#: 1024 px ones despite more halo (bench/forward.py, docs/benchmarks.md).
SLIDE_TILE = 512


def round_up(n: int, factor: int) -> int:
    return -(-n // factor) * factor


@dataclass(frozen=True)
class AxisTiles:
    """The tiles along one image axis of ``size`` px."""

    size: int
    tile: int     # input extent of every tile on this axis
    stride: int   # input origin of tile i: i * stride
    halo: int

    @classmethod
    def make(cls, size: int, tile: int, halo: int, factor: int) -> AxisTiles:
        canvas = round_up(size, factor)
        if canvas <= tile:  # one tile: the whole axis
            return cls(size, canvas, canvas, 0)
        if tile % factor or tile <= 2 * halo:
            raise ValueError(f"tile {tile} must be a multiple of the downsampling factor {factor} and larger than "
                             f"twice the network halo {halo}")
        return cls(size, tile, tile - 2 * halo, halo)

    @property
    def count(self) -> int:
        if self.stride == self.tile:
            return 1
        return max(1, -(-(self.size - self.halo) // self.stride))

    def output(self, i: int) -> tuple[int, int]:
        """The output pixels [start, stop) tile ``i`` gives."""
        start = 0 if i == 0 else i * self.stride + self.halo
        stop = self.size if i == self.count - 1 else (i + 1) * self.stride + self.halo
        return start, min(stop, self.size)

    def input(self, i: int) -> tuple[int, int]:
        """The input pixels [start, start + tile) tile ``i`` reads (beyond the image: zeros)."""
        return i * self.stride, i * self.stride + self.tile

    def covering(self, start: int, stop: int) -> range:
        """Tiles whose outputs meet [start, stop)."""
        first = self._index(start)
        last = self._index(stop - 1)
        return range(first, last + 1)

    def _index(self, p: int) -> int:
        if self.count == 1 or p < self.stride + self.halo:
            return 0
        return min(self.count - 1, (p - self.halo) // self.stride)


@dataclass(frozen=True)
class TileGrid:
    """The tile grid of an image of ``shape`` for a network with ``halo`` and downsampling ``factor``."""

    shape: tuple[int, int]
    tile: int
    halo: int
    factor: int

    @property
    def axes(self) -> tuple[AxisTiles, AxisTiles]:
        return (AxisTiles.make(self.shape[0], self.tile, self.halo, self.factor),
                AxisTiles.make(self.shape[1], self.tile, self.halo, self.factor))

    def covering(self, window) -> list[tuple[int, int]]:
        """Tile indices (row, column) whose outputs meet ``window``."""
        ay, ax = self.axes
        return [(i, j) for i in ay.covering(window[0].start, window[0].stop)
                for j in ax.covering(window[1].start, window[1].stop)]

    def input_window(self, index: tuple[int, int]):
        """The input window of a tile: (rows, cols) slices, possibly beyond the image (zeros there)."""
        (ay, ax), (i, j) = self.axes, index
        return (slice(*ay.input(i)), slice(*ax.input(j)))

    def output_window(self, index: tuple[int, int]):
        (ay, ax), (i, j) = self.axes, index
        return (slice(*ay.output(i)), slice(*ax.output(j)))
