"""The labelled pixels of a label image, found without visiting the background, in compiled loops.

On a slide most pixels are background: ``object_pixels`` lists only the labelled ones (flat
index, row, column, object number), and everything per object (boxes, features, outlines) works
on that list. The loops are numba-compiled and release the GIL, so tiles run in parallel threads.
"""

from __future__ import annotations

from dataclasses import dataclass

import numba
import numpy as np


def compiled(function):
    """``numba.njit`` releasing the GIL, cached on disk (compiled once per install) where a cache folder is
    writable; in a read-only install with no writable home, compiled once per process instead."""
    try:
        return numba.njit(cache=True, nogil=True)(function)
    except RuntimeError:  # numba: "cannot cache function ...: no locator available"
        return numba.njit(nogil=True)(function)


@dataclass(frozen=True)
class ObjectPixels:
    """The pixels of objects 1..n of a (H, W) label image, in raster order.

    ``flat``: flat indices (ascending), ``rows``/``cols``: their coordinates, ``objects``: the
    object number (1..n) of each pixel. Every object 1..n has at least one pixel.
    """

    shape: tuple[int, int]
    flat: np.ndarray
    rows: np.ndarray
    cols: np.ndarray
    objects: np.ndarray
    n: int

    def subset(self, keep: np.ndarray) -> ObjectPixels:
        """The pixels of the objects numbered ``keep`` (ascending), renumbered 1..len(keep)."""
        renumber = np.zeros(self.n + 1, np.int64)
        renumber[keep] = np.arange(1, len(keep) + 1)
        objects = renumber[self.objects]
        inside = objects > 0
        return ObjectPixels(self.shape, self.flat[inside], self.rows[inside], self.cols[inside], objects[inside],
                            len(keep))

    def occupied(self, origin: tuple[int, int], block: tuple[int, int]) -> np.ndarray:
        """bool (ny, nx): which blocks of the grid of ``block`` (h, w) px from (0, 0) hold a pixel, over the
        blocks the image covers when placed at ``origin``: an image chunk grid, for instance."""
        (y0, x0), (by, bx) = origin, block
        grid = ((y0 + self.shape[0] - 1) // by - y0 // by + 1, (x0 + self.shape[1] - 1) // bx - x0 // bx + 1)
        return _occupied_blocks(self.rows, self.cols, y0, x0, by, bx, *grid)

    def image(self) -> np.ndarray:
        """The int32 label image (H, W) of the objects, numbered 1..n."""
        local = np.zeros(self.shape, np.int32)
        local.ravel()[self.flat] = self.objects
        return local


def compact_values(values: np.ndarray, size_hint: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids, numbers): the sorted distinct nonzero ``values`` with 0 prepended, and each value's index in it.

    A lookup table over the id range when the ids are dense (segmentation output: consecutive global
    ids, at most ``4 * size_hint`` apart), a sort only for sparse id sets.
    """
    if not values.size:
        return np.zeros(1, values.dtype), np.zeros(0, np.int64)
    low, high = int(values.min()), int(values.max())
    if high - low < 4 * size_hint:
        lut = np.zeros(high - low + 1, np.int64)
        offset = values - values.dtype.type(low)
        lut[offset] = 1
        ids = np.flatnonzero(lut) + low
        lut[ids - low] = np.arange(1, ids.size + 1)
        numbers = lut[offset]
    else:
        ids, inverse = np.unique(values, return_inverse=True)
        numbers = inverse.astype(np.int64) + 1
    return np.concatenate([[0], ids]).astype(values.dtype), numbers


@compiled
def _occupied_blocks(rows, cols, y0, x0, by, bx, ny, nx):
    """``ObjectPixels.occupied``: rows ascending, so each band of blocks is left once all of its blocks are hit."""
    occupied = np.zeros((ny, nx), np.bool_)
    i = 0
    for band in range(ny):
        band_stop = (y0 // by + band + 1) * by - y0  # first local row of the next band
        hit = 0
        while i < rows.size and rows[i] < band_stop:
            j = (cols[i] + x0) // bx - x0 // bx
            if not occupied[band, j]:
                occupied[band, j] = True
                hit += 1
                if hit == nx:
                    i = np.searchsorted(rows, band_stop)
                    break
            i += 1
    return occupied


@compiled
def _labelled(values, count):
    """Flat indices and values of the ``count`` nonzero ``values`` (1-d), in order.

    Runs of 64 zeros are skipped with one OR; inside a run with labels every pixel is written and
    the cursor moves on the labelled ones only (no unpredictable branch per pixel).
    """
    run = 64
    flat, found = np.empty(count + run, np.int64), np.empty(count + run, values.dtype)
    j, whole = 0, values.size - values.size % run
    for start in range(0, whole, run):
        any_set = values[start]
        for i in range(start + 1, start + run):  # a fixed trip count: vectorised
            any_set |= values[i]
        if any_set:
            for i in range(start, start + run):
                flat[j], found[j] = i, values[i]
                j += values[i] != 0
    for i in range(whole, values.size):
        flat[j], found[j] = i, values[i]
        j += values[i] != 0
    return flat[:count], found[:count]


def object_pixels(labels: np.ndarray) -> tuple[np.ndarray, ObjectPixels]:
    """(ids, pixels): the distinct labels of ``labels`` (ids[0] = 0) and the pixels of each, numbered 1..n."""
    values = np.ascontiguousarray(labels).ravel()
    flat, found = _labelled(values, np.count_nonzero(values))
    ids, objects = compact_values(found, labels.size)
    rows, cols = np.divmod(flat, labels.shape[1])
    return ids, ObjectPixels(tuple(labels.shape), flat, rows, cols, objects, ids.size - 1)


_FAR = 2**62  # "no pixel yet" for minima


@compiled
def _boxes(rows, cols, objects, n):
    box = np.empty((n, 4), np.int64)
    box[:, :2] = _FAR
    box[:, 2:] = -1
    for i in range(objects.size):
        k, r, c = objects[i] - 1, rows[i], cols[i]
        box[k, 0] = min(box[k, 0], r)
        box[k, 1] = min(box[k, 1], c)
        box[k, 2] = max(box[k, 2], r + 1)
        box[k, 3] = max(box[k, 3], c + 1)
    return box


def bounding_boxes(rows: np.ndarray, cols: np.ndarray, objects: np.ndarray, n: int) -> np.ndarray:
    """int64 (n, 4): row start, column start, row stop, column stop of objects 1..n (regionprops' bbox)."""
    return _boxes(rows, cols, objects, n)


def pixel_values(image: np.ndarray, flat: np.ndarray) -> np.ndarray:
    """(C, M) values of ``image`` (C, H, W) at the flat pixel indices ``flat``."""
    return image.reshape(image.shape[0], -1)[:, flat]
