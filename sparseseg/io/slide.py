"""One lazy view of a slide, whatever its source format: channel-first dask levels + pixel size."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import dask.array as da
import numpy as np

from sparseseg.errors import InputError

#: Pixel types sparseseg ingests; others are refused rather than silently converted.
SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("int16"), np.dtype("float32"))



@dataclass(frozen=True)
class Slide:
    """A multi-resolution image as lazy dask arrays of shape (C, Y, X), finest level first.

    ``pixel_size_um`` is the level-0 (y, x) pixel size in micrometres, or None when the
    source does not record it. ``levels`` are picklable: workers re-open the file themselves.
    """

    path: Path
    source_format: str
    levels: tuple[da.Array, ...]
    pixel_size_um: tuple[float, float] | None
    channel_names: tuple[str, ...]

    @property
    def dtype(self) -> np.dtype:
        return self.levels[0].dtype

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.levels[0].shape)  # type: ignore[return-value]

    @property
    def n_channels(self) -> int:
        return self.levels[0].shape[0]

    def with_pixel_size(self, pixel_size_um: float | tuple[float, float] | None) -> Slide:
        """The same slide with its pixel size overridden (None keeps the recorded one)."""
        if pixel_size_um is None:
            return self
        if np.isscalar(pixel_size_um):
            pixel_size_um = (float(pixel_size_um), float(pixel_size_um))
        if min(pixel_size_um) <= 0:
            raise InputError(None, f"--pixel-size must be positive, got {pixel_size_um}")
        return replace(self, pixel_size_um=tuple(float(v) for v in pixel_size_um))


def default_channel_names(n_channels: int) -> tuple[str, ...]:
    if n_channels == 3:
        return ("R", "G", "B")
    return tuple(f"C{i}" for i in range(n_channels))


def select_channels(requested: tuple[str, ...] | None, names: tuple[str, ...], source) -> tuple[int, ...] | None:
    """Indices of the ``requested`` channels (OME names, or numbers) among ``names``, in the order asked;
    None (all channels) when nothing is requested."""
    if not requested:
        return None
    indices = []
    for item in requested:
        if item in names:
            indices.append(names.index(item))
        elif str(item).isdigit() and int(item) < len(names):
            indices.append(int(item))
        else:
            raise InputError(source, f"has no channel {item!r} (channels: {', '.join(names)})")
    return tuple(indices)


def check_finite(path, pixels: np.ndarray) -> None:
    """Refuse float pixels holding NaN or infinity (a network would turn them into garbage silently)."""
    if np.issubdtype(np.asarray(pixels).dtype, np.floating) and not np.isfinite(pixels).all():
        bad = int((~np.isfinite(pixels)).sum())
        raise InputError(path, f"{bad} pixel values are NaN or infinite; replace them (e.g. by 0) first")


def check_dtype(path: Path, dtype: np.dtype) -> None:
    if np.dtype(dtype) not in SUPPORTED_DTYPES:
        names = ", ".join(str(d) for d in SUPPORTED_DTYPES)
        raise InputError(path, f"unsupported pixel type {np.dtype(dtype)} (supported: {names}); "
                               "convert the image first")
