"""Vendor slide formats through OpenSlide (Hamamatsu NDPI/VMS, 3DHISTECH MRXS, Leica SCN, Ventana BIF,
Philips TIFF, Sakura SVSLIDE, Aperio SVS, generic tiled TIFF), read lazily region by region.

The ``openslide-bin`` wheel ships the library, so no system package is needed. Like the TIFF
levels, an ``OpenSlideLevel`` is a picklable array-like: each process opens the slide once.
"""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import dask.array as da
import numpy as np

from sparseseg.errors import InputError
from sparseseg.io.slide import Slide, default_channel_names


def openslide_format(path: Path) -> str | None:
    """The vendor OpenSlide recognises in ``path`` ('hamamatsu', 'mirax', ...), or None."""
    try:
        import openslide
    except ImportError:  # pragma: no cover - openslide-bin is a dependency
        return None
    try:
        return openslide.OpenSlide.detect_format(str(path))
    except Exception:  # unreadable files are simply not OpenSlide's
        return None


@lru_cache(maxsize=16)
def _open(path: str, mtime_ns: int):
    import openslide

    return openslide.OpenSlide(path)


class OpenSlideLevel:
    """Picklable (Y, X, 3) uint8 array-like over one OpenSlide level (RGBA regions, alpha dropped)."""

    def __init__(self, path: Path, level: int, shape: tuple[int, int], downsample: float):
        self.path = str(path)
        self.level = level
        self.shape = (int(shape[0]), int(shape[1]), 3)
        self.downsample = float(downsample)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.mtime_ns = os.stat(path).st_mtime_ns

    def __getitem__(self, key):
        rows, cols = key[0], key[1]
        y0, y1, _ = rows.indices(self.shape[0])
        x0, x1, _ = cols.indices(self.shape[1])
        slide = _open(self.path, self.mtime_ns)
        # OpenSlide takes level-0 coordinates; on a level whose downsample is not a whole number (odd level
        # sizes) the region may start between pixels and be interpolated. Level 0 is always exact, and it is
        # the only level ``ingest`` reads (it builds its own pyramid).
        location = (round(x0 * self.downsample), round(y0 * self.downsample))
        region = slide.read_region(location, self.level, (x1 - x0, y1 - y0))
        rgb = np.asarray(region)[..., :3]
        return rgb[(slice(None), slice(None), *key[2:])] if len(key) > 2 else rgb

    def __dask_tokenize__(self):
        return ("OpenSlideLevel", self.path, self.level, self.mtime_ns)


def open_openslide_slide(path: Path, chunk: int = 1024) -> Slide:
    """Open a slide with OpenSlide: levels as lazy (3, Y, X) dask arrays, pixel size from openslide.mpp-*."""
    import openslide

    try:
        slide = openslide.OpenSlide(str(path))
    except (openslide.OpenSlideError, openslide.OpenSlideUnsupportedFormatError) as exc:
        raise InputError(path, f"OpenSlide cannot read it ({exc})") from None
    with slide:
        levels = []
        for index, ((w, h), downsample) in enumerate(zip(slide.level_dimensions, slide.level_downsamples)):
            reader = OpenSlideLevel(path, index, (h, w), downsample)
            lazy = da.from_array(reader, chunks=(chunk, chunk, 3), asarray=True, meta=np.empty((0, 0, 0), np.uint8),
                                 name=f"openslide-{da.core.tokenize(reader)}")
            levels.append(lazy.transpose(2, 0, 1))
        props = slide.properties
        try:
            pixel_size = (float(props["openslide.mpp-y"]), float(props["openslide.mpp-x"]))
        except (KeyError, ValueError):
            pixel_size = None
        vendor = props.get("openslide.vendor", "unknown")
    if not levels or not levels[0].size:
        raise InputError(path, "OpenSlide found no image in it")
    return Slide(path=path, source_format=f"{vendor} (openslide)", levels=tuple(levels), pixel_size_um=pixel_size,
                 channel_names=default_channel_names(3))
