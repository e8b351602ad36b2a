"""Global intensity normalisation: per-channel percentiles of a whole (low-resolution) image.

Computed once per slide/image - never per tile, which would change results from tile to tile -
and recorded in the checkpoint (method and parameters) so inference normalises the same way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from sparseseg.errors import InputError

LOW_PERCENTILE = 1.0
HIGH_PERCENTILE = 99.8


@dataclass(frozen=True)
class Normalization:
    low: tuple[float, ...]
    high: tuple[float, ...]

    def apply(self, pixels: np.ndarray) -> np.ndarray:
        """(C, ...) -> float32, (x - low) / (high - low) per channel."""
        low = np.asarray(self.low, np.float32).reshape(-1, *([1] * (pixels.ndim - 1)))
        high = np.asarray(self.high, np.float32).reshape(low.shape)
        return ((pixels.astype(np.float32) - low) / np.maximum(high - low, 1e-6)).astype(np.float32)

    def to_dict(self) -> dict:
        return {"method": "percentile", "low_percentile": LOW_PERCENTILE, "high_percentile": HIGH_PERCENTILE,
                **{k: list(v) for k, v in asdict(self).items()}}


def percentile_normalization(pixels: np.ndarray) -> Normalization:
    """Percentiles per channel of a (C, H, W) image (a whole image or a slide's low level)."""
    flat = np.asarray(pixels).reshape(pixels.shape[0], -1)
    low, high = np.percentile(flat, [LOW_PERCENTILE, HIGH_PERCENTILE], axis=1)
    return Normalization(low=tuple(float(v) for v in low), high=tuple(float(v) for v in high))


def slide_normalization(levels, max_px: int = 2048, source=None) -> Normalization:
    """Percentiles of a slide's finest pyramid level that fits ``max_px`` (or its coarsest level).

    One rule for training and inference, computed once per slide, so both normalise identically.
    A level that cannot be read is an InputError naming ``source``.
    """
    index, low = next(((k, lv) for k, lv in enumerate(levels) if max(lv.shape[1:]) <= max_px),
                      (len(levels) - 1, levels[-1]))
    try:
        pixels = np.asarray(low)
    except Exception as exc:  # a corrupt chunk
        raise InputError(source, f"cannot read image level {index}: {type(exc).__name__}: {exc}") from None
    return percentile_normalization(pixels)
