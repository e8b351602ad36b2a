"""Read small non-tiled images (PNG, JPEG): decoded whole, then served as a chunked dask array."""

from __future__ import annotations

from pathlib import Path

import dask.array as da
import imageio.v3 as iio
import numpy as np

from sparseseg.errors import InputError
from sparseseg.io.slide import Slide, default_channel_names


def read_plain_image(path: Path) -> np.ndarray:
    """Decode a PNG/JPEG to (C, Y, X); PNG/JPEG cannot be read by region, so keep them small."""
    try:
        pixels = iio.imread(path)
    except Exception as exc:  # imageio raises many types for corrupt files
        raise InputError(path, f"cannot decode image ({exc})") from None
    if pixels.ndim == 2:
        return pixels[None]
    if pixels.ndim == 3 and pixels.shape[2] in (1, 2, 3, 4):
        if pixels.shape[2] == 4:  # drop alpha: it is transparency, not a stain
            pixels = pixels[..., :3]
        return np.ascontiguousarray(pixels.transpose(2, 0, 1))
    raise InputError(path, f"unsupported image shape {pixels.shape} (expected 2D grey or RGB)")


def open_plain_image(path: Path, chunk: int = 1024) -> Slide:
    pixels = read_plain_image(path)
    lazy = da.from_array(pixels, chunks=(pixels.shape[0], chunk, chunk))
    return Slide(path=path, source_format=path.suffix.lstrip(".").lower() or "image", levels=(lazy,),
                 pixel_size_um=None, channel_names=default_channel_names(pixels.shape[0]))
