"""Read SVS, OME-TIFF (SubIFD pyramids), generic tiled/pyramidal and plain TIFF lazily via tifffile.

tifffile's zarr stores cannot be pickled, so the dask graph carries only (path, series, level):
each process opens the file once and keeps it in a small per-process cache.
"""

from __future__ import annotations

import logging
import os
import re
from functools import lru_cache
from pathlib import Path

import dask.array as da
import numpy as np
import tifffile
import zarr

from sparseseg.errors import InputError
from sparseseg.io.jpeg_check import jpeg_tiles
from sparseseg.io.slide import Slide, default_channel_names

log = logging.getLogger(__name__)

_UNIT_TO_UM = {"pm": 1e-6, "nm": 1e-3, "µm": 1.0, "um": 1.0, "micron": 1.0, "micrometer": 1.0,
               "mm": 1e3, "cm": 1e4, "m": 1e6}
#: A recorded pixel size above this is a screen/print default (e.g. 72 dpi), not a microscope's.
_MAX_PLAUSIBLE_PIXEL_UM = 100.0


@lru_cache(maxsize=32)
def _open_level(path: str, series: int, level: int, mtime_ns: int) -> zarr.Array:
    """The TIFF level as a read-only zarr array (Y, X[, S]) or (C, Y, X), opened once per process."""
    store = tifffile.imread(path, aszarr=True, series=series, level=level)
    return zarr.open_array(store, mode="r")


class TiffLevel:
    """Picklable array-like over one pyramid level; dask calls ``__getitem__`` per block."""

    def __init__(self, path: Path, series: int, level: int, shape: tuple[int, ...], dtype: np.dtype):
        self.path = str(path)
        self.series = series
        self.level = level
        self.shape = tuple(shape)
        self.dtype = np.dtype(dtype)
        self.ndim = len(self.shape)
        self.mtime_ns = os.stat(path).st_mtime_ns

    def __getitem__(self, key):
        tiles = jpeg_tiles(self.path, self.series, self.level, self.mtime_ns)
        if tiles is not None:
            rows, cols = (slice(*k.indices(n)[:2]) for k, n in zip(_as_slices(key, self.ndim), self.shape))
            tiles.verify(rows, cols)
        return _open_level(self.path, self.series, self.level, self.mtime_ns)[key]

    def __dask_tokenize__(self):
        return ("TiffLevel", self.path, self.series, self.level, self.mtime_ns)


def _as_slices(key, ndim: int) -> tuple[slice, ...]:
    """The (rows, columns) slices of an indexing key (dask passes a tuple of slices; an int picks one row)."""
    key = key if isinstance(key, tuple) else (key,)
    key = key + (slice(None),) * (ndim - len(key))
    return tuple(k if isinstance(k, slice) else slice(int(k), int(k) + 1) for k in key[:2])


def _check_declared_size(path: Path, page) -> None:
    """Refuse a page that declares no pixels, or more tiles/strips than its tables list (a forged or damaged
    header: reading it would allocate and write the declared size from almost nothing)."""
    if 0 in (page.imagewidth, page.imagelength):
        raise InputError(path, f"declares an empty image (ImageWidth {page.imagewidth}, ImageLength "
                               f"{page.imagelength})")
    declared = int(np.prod(page.chunked)) if page.chunked else 0
    if len(page.dataoffsets) < declared:
        kind = "tiles" if page.is_tiled else "strips"
        raise InputError(path, f"declares a {page.imagewidth} x {page.imagelength} px image in {declared} {kind}, "
                               f"but its {kind} tables list only {len(page.dataoffsets)} (a damaged or forged header)")


def _check_not_truncated(path: Path, tif: tifffile.TiffFile, series: tifffile.TiffPageSeries) -> None:
    """Refuse files whose declared size their tile/strip tables do not back (forged or damaged headers), and files
    whose data runs past their end (interrupted copies): before anything is allocated or written."""
    size = os.path.getsize(path)
    for level in series.levels:
        for page in level.pages:
            if page is None:
                continue
            if isinstance(page, tifffile.TiffPage):  # a TiffFrame shares its key page's header
                _check_declared_size(path, page)
            ends = [o + n for o, n in zip(page.dataoffsets, page.databytecounts) if n]
            if not ends and page.shape and np.prod(page.shape) > 0:
                raise InputError(path, "truncated or corrupt TIFF: a page has no image data")
            if ends and max(ends) > size:
                raise InputError(path, f"truncated TIFF: image data extends to byte {max(ends)} "
                                       f"but the file has {size} bytes")


def _pixel_size_from_ome(tif: tifffile.TiffFile) -> tuple[float, float] | None:
    xml = tif.ome_metadata or ""
    pixels = re.search(r"<Pixels\b[^>]*>", xml)
    if not pixels:
        return None
    attrs = dict(re.findall(r'(\w+)="([^"]*)"', pixels.group(0)))
    try:
        sx, sy = float(attrs["PhysicalSizeX"]), float(attrs["PhysicalSizeY"])
    except (KeyError, ValueError):
        return None
    ux = _UNIT_TO_UM.get(attrs.get("PhysicalSizeXUnit", "µm"))
    uy = _UNIT_TO_UM.get(attrs.get("PhysicalSizeYUnit", "µm"))
    if ux is None or uy is None:
        return None
    return (sy * uy, sx * ux)


def _pixel_size_from_svs(page: tifffile.TiffPage) -> tuple[float, float] | None:
    try:
        meta = tifffile.tifffile.svs_description_metadata(page.description)
    except ValueError:
        return None
    mpp = meta.get("MPP")
    return None if mpp is None else (float(mpp), float(mpp))


def _pixel_size_from_resolution(page: tifffile.TiffPage, plausible_um: float = _MAX_PLAUSIBLE_PIXEL_UM
                                ) -> tuple[float, float] | None:
    unit = page.tags.get("ResolutionUnit")
    xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
    if unit is None or xres is None or yres is None:
        return None
    per_unit_um = {2: 25400.0, 3: 10000.0}.get(int(unit.value))  # INCH, CENTIMETER
    if per_unit_um is None:
        return None
    (xn, xd), (yn, yd) = xres.value, yres.value
    if not (xn and yn):
        return None
    size = (per_unit_um * yd / yn, per_unit_um * xd / xn)
    if max(size) > plausible_um:
        log.info("%s: ignoring resolution tag (%.1f um/px is a display default)", page.parent.filehandle.name, size[0])
        return None
    return size


def _channel_first(path: Path, arr: da.Array, axes: str) -> da.Array:
    """Reorder a TIFF series to (C, Y, X), dropping leading singleton axes."""
    while len(axes) > 2 and axes[0] not in "CS" and arr.shape[0] == 1:
        arr, axes = arr[0], axes[1:]
    if axes == "YX":
        return arr[None]
    if axes == "YXS":
        return arr.transpose(2, 0, 1)
    if axes in ("CYX", "SYX"):
        return arr
    raise InputError(path, f"unsupported TIFF axes {axes!r} with shape {tuple(arr.shape)} "
                           "(expected 2D, RGB or channel-first 2D images)")


def open_tiff_slide(path: Path, chunk: int = 1024) -> Slide:
    """Open an SVS/OME-TIFF/pyramidal TIFF lazily: one dask array per pyramid level."""
    try:
        tif = tifffile.TiffFile(path)
    except (tifffile.TiffFileError, ValueError, OSError, EOFError) as exc:
        raise InputError(path, f"cannot read TIFF ({exc})") from None
    with tif:
        try:
            first = tif.pages.first
        except IndexError:  # no page at all: reported below as no readable series
            first = None
        if isinstance(first, tifffile.TiffPage):  # before the series are built from what it declares
            _check_declared_size(path, first)
        if not tif.series:
            raise InputError(path, "truncated or corrupt TIFF: no readable image series")
        series = tif.series[0]
        _check_not_truncated(path, tif, series)
        keyframe = series.keyframe
        if tif.is_svs:
            fmt, pixel_size = "svs", _pixel_size_from_svs(tif.pages[0])
        elif tif.is_ome:
            fmt, pixel_size = "ome-tiff", _pixel_size_from_ome(tif)
        elif tif.is_ndpi:
            fmt, pixel_size = "ndpi", _pixel_size_from_resolution(keyframe, plausible_um=_MAX_PLAUSIBLE_PIXEL_UM)
        else:
            fmt, pixel_size = "tiff", _pixel_size_from_resolution(keyframe)
        levels = []
        for index, level in enumerate(series.levels):
            reader = TiffLevel(path, 0, index, level.shape, level.dtype)
            lazy = da.from_array(reader, chunks=_yx_chunks(level.axes, level.shape, chunk),
                                 asarray=True, meta=np.empty((0,) * len(level.shape), level.dtype),
                                 name=f"tiff-{da.core.tokenize(reader)}")
            levels.append(_channel_first(path, lazy, level.axes))
        if not levels[0].size:
            raise InputError(path, "TIFF image is empty")
        names = _channel_names_from_ome(tif) if tif.is_ome else None
    n_channels = levels[0].shape[0]
    if not names or len(names) != n_channels:
        names = default_channel_names(n_channels)
    return Slide(path=path, source_format=f"{fmt} (tifffile)", levels=tuple(levels), pixel_size_um=pixel_size,
                 channel_names=tuple(names))


def _channel_names_from_ome(tif: tifffile.TiffFile) -> list[str] | None:
    """Channel names of the first image of an OME-TIFF (its <Channel Name=...> elements), if all are named."""
    xml = tif.ome_metadata or ""
    image = re.search(r"<Image\b.*?</Image>", xml, re.S)
    names = re.findall(r"<Channel\b[^>]*\bName=\"([^\"]*)\"", image.group(0) if image else "")
    return names if names and all(names) else None


def _yx_chunks(axes: str, shape: tuple[int, ...], chunk: int) -> tuple[int, ...]:
    return tuple(chunk if ax in "YX" else size for ax, size in zip(axes, shape))
