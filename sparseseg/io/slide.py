"""One lazy view of a slide, whatever its source format: channel-first dask levels + pixel size."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import dask.array as da
import numpy as np

from sparseseg.errors import InputError

#: Pixel types sparseseg ingests; others are refused rather than silently converted.
SUPPORTED_DTYPES = (np.dtype("uint8"), np.dtype("uint16"), np.dtype("int16"), np.dtype("float32"))

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"


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


#: Readers ``open_slide`` can use; "auto" picks tifffile wherever it reads the file itself.
READERS = ("auto", "tifffile", "openslide", "wsidicom", "zarr", "image")
#: OpenSlide vendors whose TIFF files tifffile reads itself (the rest go through OpenSlide).
_TIFFFILE_VENDORS = (None, "aperio", "generic-tiff", "hamamatsu")


def sniff_format(path: Path) -> str:
    """'tiff', 'png', 'jpeg', 'zarr', 'dicom' or 'openslide' from the file's content (not its suffix)."""
    from sparseseg.io.dicom import is_dicom
    from sparseseg.io.openslide import openslide_format

    if path.is_dir():
        if any((path / name).exists() for name in (".zgroup", "zarr.json", ".zattrs")):
            return "zarr"
        if is_dicom(path):
            return "dicom"
        raise InputError(path, "is a directory but neither a zarr group (no .zgroup or zarr.json) nor a DICOM "
                               "whole-slide image (no .dcm file)")
    if not path.exists():
        raise InputError(path, "no such file or directory")
    with path.open("rb") as fh:
        head = fh.read(8)
    if head[:4] in _TIFF_MAGIC:
        return "tiff" if openslide_format(path) in _TIFFFILE_VENDORS else "openslide"
    if head == _PNG_MAGIC:
        return "png"
    if head[:3] == _JPEG_MAGIC:
        return "jpeg"
    if is_dicom(path):
        return "dicom"
    if openslide_format(path) is not None:  # MRXS, VMS, SVSLIDE, ...
        return "openslide"
    raise InputError(path, "not a supported image file (expected a slide OpenSlide or tifffile reads, a DICOM WSI, "
                           "PNG, JPEG or an OME-Zarr directory)")


def open_slide(path: str | Path, chunk: int = 1024, fill_missing: bool = False, reader: str = "auto") -> Slide:
    """Open any supported slide lazily; ``chunk`` sets the dask block edge of every level.

    ``reader``: "auto" (tifffile for the TIFFs it reads itself, OpenSlide for vendor formats,
    wsidicom for DICOM WSI) or one of ``READERS`` to force it. ``fill_missing``: read chunks missing
    from an OME-Zarr source as its fill value (default: refuse).
    """
    path = Path(path)
    if reader not in READERS:
        raise InputError(None, f"--reader must be one of {', '.join(READERS)}, got {reader!r}")
    kind = sniff_format(path) if reader == "auto" else {"tifffile": "tiff", "wsidicom": "dicom",
                                                        "image": "png"}.get(reader, reader)
    if kind == "tiff":
        from sparseseg.io.tiff import open_tiff_slide

        slide = open_tiff_slide(path, chunk=chunk)
    elif kind == "openslide":
        from sparseseg.io.openslide import open_openslide_slide

        slide = open_openslide_slide(path, chunk=chunk)
    elif kind == "dicom":
        from sparseseg.io.dicom import open_dicom_slide

        slide = open_dicom_slide(path, chunk=chunk)
    elif kind == "zarr":
        from sparseseg.io.omezarr import open_omezarr_slide

        slide = open_omezarr_slide(path, chunk=chunk, fill_missing=fill_missing)
    else:
        from sparseseg.io.plain import open_plain_image

        slide = open_plain_image(path, chunk=chunk)
    check_dtype(path, slide.dtype)
    return slide
