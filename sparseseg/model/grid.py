"""The model grid: data resampled to the model's pixel size, for training, calibration and segmentation alike.

One tolerance decides whether data is resampled at all (``grid_scale``), so a slide is trained,
calibrated and segmented on the same grid.

Model-grid pixel i has its centre at level-0 coordinate (i + 0.5) / s - 0.5 (s = slide pixel size
/ model pixel size). Every block computes its interpolation weights from these *global*
coordinates, so any window of the model grid equals the same window of the whole resampled
image; labels map back to level 0 by taking the model pixel under each level-0 pixel centre.
"""

from __future__ import annotations

import numpy as np


#: Pixel sizes within this relative difference count as equal: no resampling for scanner-to-scanner jitter.
PIXEL_SIZE_TOLERANCE = 0.03


def grid_scale(data_um: float | None, model_um: float | None) -> float:
    """Model-grid pixels per data pixel (data pixel size / the model's); 1 where either is unknown or they are
    within ``PIXEL_SIZE_TOLERANCE``."""
    if not data_um or not model_um:
        return 1.0
    scale = data_um / model_um
    return 1.0 if abs(scale - 1.0) <= PIXEL_SIZE_TOLERANCE else scale


def model_grid_shape(shape_yx: tuple[int, int], scale: float) -> tuple[int, int]:
    return tuple(max(1, int(round(n * scale))) for n in shape_yx)  # type: ignore[return-value]


def linear_taps(start: int, stop: int, scale: float, source_size: int
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """For model indices [start, stop), centred at source position (i + 0.5) / scale - 0.5: the nearest source
    index, the lower and upper ones and the upper one's bilinear weight."""
    centre = (np.arange(start, stop, dtype=np.float64) + 0.5) / scale - 0.5
    centre = np.clip(centre, 0, source_size - 1)
    lower = np.floor(centre).astype(np.int64)
    upper = np.minimum(lower + 1, source_size - 1)
    return np.rint(centre).astype(np.int64), lower, upper, (centre - lower).astype(np.float32)


def source_window(window: tuple[slice, slice], scale: float, source_shape: tuple[int, int]) -> tuple[slice, slice]:
    """The level-0 window a model-grid window's bilinear interpolation reads."""
    out = []
    for sl, size in zip(window, source_shape):
        _, lower, upper, _ = linear_taps(sl.start, sl.stop, scale, size)
        out.append(slice(int(lower.min()), int(upper.max()) + 1))
    return tuple(out)  # type: ignore[return-value]


def resample_window(pixels: np.ndarray, origin: tuple[int, int], window: tuple[slice, slice], scale: float,
                    source_shape: tuple[int, int]) -> np.ndarray:
    """Bilinear model-grid values (C, h, w) of ``window`` from ``pixels`` read at level-0 ``origin``."""
    out = pixels.astype(np.float32)
    for axis, (sl, size, offset) in enumerate(zip(window, source_shape, origin), start=1):
        _, lower, upper, weight = linear_taps(sl.start, sl.stop, scale, size)
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
