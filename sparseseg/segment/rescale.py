"""The model grid: the slide resampled to the model's pixel size, read and written block-exactly.

Model-grid pixel i has its centre at level-0 coordinate (i + 0.5) / s - 0.5 (s = slide pixel size
/ model pixel size). Every block computes its interpolation weights from these *global*
coordinates, so any window of the model grid equals the same window of the whole resampled
image; labels map back to level 0 by taking the model pixel under each level-0 pixel centre.
"""

from __future__ import annotations

import numpy as np


def model_grid_shape(shape_yx: tuple[int, int], scale: float) -> tuple[int, int]:
    return tuple(max(1, int(round(n * scale))) for n in shape_yx)  # type: ignore[return-value]


def _linear_taps(start: int, stop: int, scale: float, source_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For model indices [start, stop): lower source index, upper source index, upper weight."""
    centre = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale - 0.5
    centre = np.clip(centre, 0, source_size - 1)
    lower = np.floor(centre).astype(np.int64)
    upper = np.minimum(lower + 1, source_size - 1)
    return lower, upper, (centre - lower).astype(np.float32)


def source_window(window: tuple[slice, slice], scale: float, source_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The level-0 window a model-grid window's bilinear interpolation reads."""
    out = []
    for sl, size in zip(window, source_shape):
        lower, upper, _ = _linear_taps(sl.start, sl.stop, scale, size)
        out.append(slice(int(lower.min()), int(upper.max()) + 1))
    return tuple(out)  # type: ignore[return-value]


def resample_window(pixels: np.ndarray, origin: tuple[int, int], window: tuple[slice, slice], scale: float,
                    source_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear model-grid values (C, h, w) of ``window`` from ``pixels`` read at level-0 ``origin``."""
    out = pixels.astype(np.float32)
    for axis, (sl, size, offset) in enumerate(zip(window, source_shape, origin), start=1):
        lower, upper, weight = _linear_taps(sl.start, sl.stop, scale, size)
        a = np.take(out, lower - offset, axis=axis)
        b = np.take(out, upper - offset, axis=axis)
        shape = [1] * out.ndim
        shape[axis] = -1
        w = weight.reshape(shape)
        out = a + (b - a) * w
    return out


def level0_to_model_indices(start: int, stop: int, scale: float, model_size: int) -> np.ndarray:
    """Model-grid index under each level-0 pixel centre in [start, stop)."""
    return np.minimum(np.floor((np.arange(start, stop) + 0.5) * scale).astype(np.int64), model_size - 1)
