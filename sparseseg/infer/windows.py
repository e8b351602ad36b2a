"""Network fields on windows of a large image, bitwise equal to the whole image's (the tiling guarantee).

The network only ever runs on the image's fixed tile grid (``infer.tiles``): a window's fields are
cut from the outputs of the tiles that cover it, so any window (a block's context, a large-object
window, the whole image) gets the same values to the bit. Tile outputs are kept in a small
least-recently-used cache, so neighbouring windows in one worker share the tiles they have in common.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from sparseseg.infer.tiles import DEFAULT_TILE, TileGrid
from sparseseg.tiling.blocks import Window

#: Pixels of network input per forward on a GPU when ``batch`` is not set (several tiles at once).
GPU_BATCH_PIXELS = 16 * 2**20
#: Tile outputs (float32 values) a ``NetworkFields`` keeps for reuse by the next windows.
CACHE_VALUES = 128 * 2**20


@dataclass
class Prepared:
    """A window's input, read: ``canvas`` (C, h, w) holds the pixels of the global region ``crop``, and ``tiles``
    lists the tiles whose outputs cover the window; for array sources, ``canvas`` is the window's fields."""

    context: Window
    canvas: np.ndarray
    crop: Window
    tiles: list = field(default_factory=list)
    tiles_run: int = 0   # set by ``compute``: network tiles it ran for this window (not taken from the cache)


class Network(Protocol):
    """What the tile grid needs of a network (``Predictor`` is one)."""

    device: str
    halo: int
    downsampling: int

    def forward(self, canvases: np.ndarray) -> np.ndarray: ...


class FieldSource(Protocol):
    """Where a segmentation's distance + flow come from: windows are loaded (I/O), then computed (the device)."""

    device: str

    def load(self, context: Window) -> Prepared: ...

    def compute(self, prepared: list[Prepared]) -> list[np.ndarray]: ...

    def free_extent(self, context: Window) -> Window: ...


class ArrayFields:
    """Fields given as a whole (3, H, W) array (exact targets, or a network output computed once): the same
    stitching without a network."""

    device = "cpu"

    def __init__(self, fields: np.ndarray):
        self.fields = fields

    def load(self, context: Window) -> Prepared:
        return Prepared(context, self.fields[(slice(None), *context)], (slice(None), slice(None)))

    def compute(self, prepared: list[Prepared]) -> list[np.ndarray]:
        return [p.canvas for p in prepared]

    def free_extent(self, context: Window) -> Window:
        """Every window costs the same here: the whole image."""
        return tuple(slice(0, n) for n in self.fields.shape[1:])  # type: ignore[return-value]


class NetworkFields:
    """Distance + flow of an image on any window, bitwise equal to the whole image's: cut from the outputs of the
    fixed tile grid (``infer.tiles``), tiles run in batches of one fixed size, zeros beyond the image."""

    def __init__(self, predictor: Network, shape: tuple[int, int], read, batch: int | None = None,
                 tile: int = DEFAULT_TILE):
        self.predictor, self.shape, self.read = predictor, tuple(shape), read
        self.grid = TileGrid(self.shape, tile, predictor.halo, predictor.downsampling)
        ay, ax = self.grid.axes
        self.batch = batch or (1 if predictor.device == "cpu" else max(1, GPU_BATCH_PIXELS // (ay.tile * ax.tile)))
        self.cache: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()
        self.tiles_computed = 0
        self._lock = threading.Lock()  # a worker with several threads runs tasks of one run side by side

    @property
    def device(self) -> str:
        return self.predictor.device

    def load(self, context: Window) -> Prepared:
        """Read (normalised, by ``read``) the input of the tiles that cover ``context`` and are not cached now;
        a tile evicted before ``compute`` is read there."""
        tiles = self.grid.covering(context)
        inputs = [self.grid.input_window(t) for t in tiles if t not in self.cache]
        if not inputs:
            return Prepared(context, np.zeros((0, 0, 0), np.float32), (slice(0, 0), slice(0, 0)), tiles)
        region = tuple(slice(min(w[a].start for w in inputs), min(n, max(w[a].stop for w in inputs)))
                       for a, n in enumerate(self.shape))
        return Prepared(context, np.asarray(self.read(region), np.float32), region, tiles)

    def free_extent(self, context: Window) -> Window:
        """The region the tiles computing ``context`` give (at least ``context``): windows inside it need no
        further tile while those tiles are cached."""
        tiles = [self.grid.output_window(t) for t in self.grid.covering(context)]
        return tuple(slice(min(w[a].start for w in tiles), max(w[a].stop for w in tiles))  # type: ignore[return-value]
                     for a in range(2))

    def _tile_input(self, prepared: Prepared, index: tuple[int, int]) -> np.ndarray:
        """A tile's input, zero beyond the image: from what ``load`` read, else read now."""
        rows, cols = self.grid.input_window(index)
        inside = tuple(slice(sl.start, min(sl.stop, n)) for sl, n in zip((rows, cols), self.shape))
        read = prepared.crop  # the region ``load`` read
        if all(r.start <= i.start and i.stop <= r.stop for r, i in zip(read, inside)):
            y0, x0 = inside[0].start - read[0].start, inside[1].start - read[1].start
            part = prepared.canvas[:, y0: y0 + inside[0].stop - inside[0].start, x0: x0 + inside[1].stop - inside[1].start]
        else:
            part = np.asarray(self.read(inside), np.float32)
        out = np.zeros((part.shape[0], rows.stop - rows.start, cols.stop - cols.start), np.float32)
        out[:, : part.shape[1], : part.shape[2]] = part
        return out

    def _run_tiles(self, todo: dict[tuple[int, int], np.ndarray]) -> dict[tuple[int, int], np.ndarray]:
        """Tile outputs (cropped to what each tile gives) in batches of ``self.batch``, padded with zero tiles."""
        done = {}
        keys = list(todo)
        for i in range(0, len(keys), self.batch):
            chunk = keys[i: i + self.batch]
            stack = np.stack([todo[k] for k in chunk])
            if len(chunk) < self.batch:
                stack = np.concatenate([stack, np.zeros((self.batch - len(chunk), *stack.shape[1:]), np.float32)])
            outputs = self.predictor.forward(stack)
            for k, out in zip(chunk, outputs):
                rows, cols = self.grid.output_window(k)
                origin = self.grid.input_window(k)
                done[k] = np.ascontiguousarray(out[:, rows.start - origin[0].start: rows.stop - origin[0].start,
                                                   cols.start - origin[1].start: cols.stop - origin[1].start])
            self.tiles_computed += len(chunk)
        return done

    def _remember(self, key: tuple[int, int], output: np.ndarray) -> None:
        self.cache[key] = output
        self.cache.move_to_end(key)
        while sum(v.size for v in self.cache.values()) > CACHE_VALUES and len(self.cache) > 1:
            self.cache.popitem(last=False)

    def compute(self, prepared: list[Prepared]) -> list[np.ndarray]:
        """Fields (distance, flow, class probabilities if any; (C, h, w)) on each prepared window, from cached or
        newly computed tiles."""
        with self._lock:
            return self._compute(prepared)

    def _compute(self, prepared: list[Prepared]) -> list[np.ndarray]:
        todo = {}
        for p in prepared:
            p.tiles_run = 0
            for key in p.tiles:
                if key not in self.cache and key not in todo:
                    todo[key] = self._tile_input(p, key)
                    p.tiles_run += 1
        outputs = dict(self._run_tiles(todo))
        results = []
        for p in prepared:
            rows, cols = p.context
            out = None
            for key in p.tiles:
                tile = outputs.get(key)
                if tile is None:
                    tile = outputs[key] = self.cache[key]
                if out is None:
                    out = np.empty((tile.shape[0], rows.stop - rows.start, cols.stop - cols.start), np.float32)
                t_rows, t_cols = self.grid.output_window(key)
                r0, r1 = max(rows.start, t_rows.start), min(rows.stop, t_rows.stop)
                c0, c1 = max(cols.start, t_cols.start), min(cols.stop, t_cols.stop)
                out[:, r0 - rows.start: r1 - rows.start, c0 - cols.start: c1 - cols.start] = \
                    tile[:, r0 - t_rows.start: r1 - t_rows.start, c0 - t_cols.start: c1 - t_cols.start]
            results.append(out)
        for key, tile in outputs.items():
            self._remember(key, tile)
        return results
