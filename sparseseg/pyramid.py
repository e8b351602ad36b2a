"""Pyramid geometry and 2x downsampling of channel-first dask arrays."""

from __future__ import annotations

import math

import dask.array as da
import numpy as np


def pyramid_shapes(shape_yx: tuple[int, int], chunk: int) -> list[tuple[int, int]]:
    """Level shapes, halving (rounding up) until a level fits in one ``chunk`` x ``chunk`` block."""
    shapes = [tuple(int(s) for s in shape_yx)]
    while max(shapes[-1]) > chunk:
        shapes.append(tuple(math.ceil(s / 2) for s in shapes[-1]))
    return shapes  # type: ignore[return-value]


def level_factors(shapes: list[tuple[int, int]]) -> list[tuple[float, float]]:
    """Nominal downsampling factor of each level relative to level 0 (powers of two)."""
    return [(float(2**k), float(2**k)) for k in range(len(shapes))]


def _pad_to_even(x: da.Array) -> da.Array:
    """Replicate the last row/column of odd-sized axes so 2x2 blocks cover the image edge."""
    pad = [(0, 0)] * (x.ndim - 2) + [(0, x.shape[-2] % 2), (0, x.shape[-1] % 2)]
    if not any(p[1] for p in pad):
        return x
    # da.pad appends the edge as its own 1-pixel chunk; restore an even block edge
    even_chunks = x.chunksize[:-2] + tuple(c + c % 2 for c in x.chunksize[-2:])
    return da.pad(x, pad, mode="edge").rechunk(even_chunks)


def _mean_2x2_block(block: np.ndarray) -> np.ndarray:
    """float32 mean of 2x2 blocks over the last two (even-sized) axes of one chunk."""
    *lead, y, x = block.shape
    return block.reshape(*lead, y // 2, 2, x // 2, 2).mean(axis=(-3, -1), dtype=np.float32)


def downsample_mean_2x(x: da.Array) -> da.Array:
    """Mean of 2x2 blocks over the last two axes; shape (..., ceil(Y/2), ceil(X/2)), dtype kept.

    Integer images are rounded to the nearest value; an odd edge averages its pixel with itself.
    """
    if any(c % 2 for c in x.chunks[-2][:-1] + x.chunks[-1][:-1]):
        raise ValueError(f"interior chunks must be even to downsample by 2, got {x.chunksize}")
    even = _pad_to_even(x)
    halved = even.chunks[:-2] + tuple(tuple(c // 2 for c in ax) for ax in even.chunks[-2:])
    mean = da.map_blocks(_mean_2x2_block, even, chunks=halved, dtype=np.float32)
    if np.issubdtype(x.dtype, np.integer):
        info = np.iinfo(x.dtype)
        mean = da.clip(da.round(mean), info.min, info.max)
    return mean.astype(x.dtype)
