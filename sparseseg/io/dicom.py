"""DICOM whole-slide images (a folder of .dcm instances of one slide) through ``wsidicom``, read lazily."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import dask.array as da
import numpy as np

from sparseseg.errors import InputError
from sparseseg.io.slide import Slide, default_channel_names

_DICM_OFFSET = 128


def is_dicom(path: Path) -> bool:
    """A DICOM file (``DICM`` at byte 128), or a folder holding some."""
    candidates = [path] if path.is_file() else sorted(path.glob("*.dcm"))[:1] if path.is_dir() else []
    for candidate in candidates:
        try:
            with open(candidate, "rb") as fh:
                fh.seek(_DICM_OFFSET)
                if fh.read(4) == b"DICM":
                    return True
        except OSError:
            return False
    return False


@lru_cache(maxsize=8)
def _open(path: str, mtime_ns: int):
    from wsidicom import WsiDicom

    return WsiDicom.open(path)


class DicomLevel:
    """Picklable (Y, X, 3) uint8 array-like over one pyramid level of a DICOM WSI."""

    def __init__(self, folder: Path, level: int, shape: tuple[int, int]):
        self.path = str(folder)
        self.level = level
        self.shape = (int(shape[0]), int(shape[1]), 3)
        self.dtype = np.dtype(np.uint8)
        self.ndim = 3
        self.mtime_ns = os.stat(folder).st_mtime_ns

    def __getitem__(self, key):
        y0, y1, _ = key[0].indices(self.shape[0])
        x0, x1, _ = key[1].indices(self.shape[1])
        wsi = _open(self.path, self.mtime_ns)
        region = np.asarray(wsi.read_region((x0, y0), self.level, (x1 - x0, y1 - y0)).convert("RGB"))
        return region[(slice(None), slice(None), *key[2:])] if len(key) > 2 else region

    def __dask_tokenize__(self):
        return ("DicomLevel", self.path, self.level, self.mtime_ns)


def open_dicom_slide(path: Path, chunk: int = 1024) -> Slide:
    """Open a DICOM WSI folder (or one of its files): every pyramid level, pixel size from the instances."""
    from wsidicom import WsiDicom

    folder = path if path.is_dir() else path.parent
    try:
        wsi = WsiDicom.open(str(folder))
    except Exception as exc:  # wsidicom raises several types for incomplete or foreign series
        raise InputError(path, f"not a readable DICOM whole-slide image ({type(exc).__name__}: {exc})") from None
    with wsi:
        levels = []
        for level in wsi.levels:
            reader = DicomLevel(folder, level.level, (level.size.height, level.size.width))
            lazy = da.from_array(reader, chunks=(chunk, chunk, 3), asarray=True, meta=np.empty((0, 0, 0), np.uint8),
                                 name=f"dicom-{da.core.tokenize(reader)}")
            levels.append(lazy.transpose(2, 0, 1))
        mpp = wsi.levels[0].mpp
        pixel_size = (float(mpp.height), float(mpp.width)) if mpp is not None else None
    return Slide(path=folder, source_format="dicom-wsi (wsidicom)", levels=tuple(levels), pixel_size_um=pixel_size,
                 channel_names=default_channel_names(3))
