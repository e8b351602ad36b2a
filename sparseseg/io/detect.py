"""Which reader opens a slide: its format sniffed from the content, then the reader module for it.

It sits above the readers, which import only ``io.slide`` (``Slide`` and the checks they share),
so no reader imports back the module that chooses it.
"""

from __future__ import annotations

from pathlib import Path

from sparseseg.errors import InputError
from sparseseg.io.dicom import is_dicom, open_dicom_slide
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.io.openslide import open_openslide_slide, openslide_format
from sparseseg.io.plain import open_plain_image
from sparseseg.io.slide import Slide, check_dtype
from sparseseg.io.tiff import open_tiff_slide

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"

#: Readers ``open_slide`` can use; "auto" picks tifffile wherever it reads the file itself.
READERS = ("auto", "tifffile", "openslide", "wsidicom", "zarr", "image")
#: OpenSlide vendors whose TIFF files tifffile reads itself (the rest go through OpenSlide).
_TIFFFILE_VENDORS = (None, "aperio", "generic-tiff", "hamamatsu")


def sniff_format(path: Path) -> str:
    """'tiff', 'png', 'jpeg', 'zarr', 'dicom' or 'openslide' from the file's content (not its suffix)."""
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
        slide = open_tiff_slide(path, chunk=chunk)
    elif kind == "openslide":
        slide = open_openslide_slide(path, chunk=chunk)
    elif kind == "dicom":
        slide = open_dicom_slide(path, chunk=chunk)
    elif kind == "zarr":
        slide = open_omezarr_slide(path, chunk=chunk, fill_missing=fill_missing)
    else:
        slide = open_plain_image(path, chunk=chunk)
    check_dtype(path, slide.dtype)
    return slide
