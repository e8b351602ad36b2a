"""Refuse JPEG tiles of a TIFF level that decode only with libjpeg warnings (corrupt entropy-coded data).

tifffile decodes JPEG tiles through imagecodecs, which turns libjpeg's warnings ("Corrupt JPEG data: premature
end of data segment") into a silently garbled tile. OpenSlide treats them as errors; so does this check, which
decodes each tile once more with libjpeg-turbo in strict mode (simplejpeg), at 1/8 scale, before its pixels are
used. Each process verifies a tile once.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from functools import lru_cache

import simplejpeg
import tifffile

from sparseseg.errors import InputError

#: TIFF compression code of (new-style) JPEG.
_JPEG = 7


@dataclass
class JpegTiles:
    """Where one TIFF level's JPEG tiles (or strips) lie in the file, and which were verified already."""

    path: str
    tables: bytes
    offsets: tuple[int, ...]
    counts: tuple[int, ...]
    tile: tuple[int, int]  # (rows, columns) of one tile or strip
    grid: tuple[int, int]  # tiles down, tiles across
    verified: set[int] = field(default_factory=set)

    def verify(self, rows: slice, cols: slice) -> None:
        """Strictly decode every not yet verified tile that the window (rows, cols) reads."""
        ty, tx = self.tile
        ny, nx = self.grid
        todo = [(iy * nx + ix, iy, ix) for iy in range(rows.start // ty, min(ny, -(-rows.stop // ty)))
                for ix in range(cols.start // tx, min(nx, -(-cols.stop // tx))) if iy * nx + ix not in self.verified]
        if not todo:
            return
        with open(self.path, "rb") as handle:
            for index, iy, ix in todo:
                if self.counts[index]:  # a tile the file does not store reads as empty in tifffile
                    self._verify_one(os.pread(handle.fileno(), self.counts[index], self.offsets[index]), index, iy, ix)
                self.verified.add(index)

    def _verify_one(self, data: bytes, index: int, iy: int, ix: int) -> None:
        stream = self.tables[:-2] + data[2:] if self.tables else data  # tables' SOI..EOI, then the tile's body
        try:
            # at 1/8 scale: libjpeg still entropy-decodes every block (where corruption shows), skips most IDCT
            simplejpeg.decode_jpeg(stream, strict=True, min_factor=8, min_width=1, min_height=1)
        except ValueError as exc:
            ty, tx = self.tile
            raise InputError(self.path, f"JPEG tile {index} (rows {iy * ty}-{(iy + 1) * ty}, columns "
                                        f"{ix * tx}-{(ix + 1) * tx} of its level) is corrupt ({exc})") from None


@lru_cache(maxsize=32)
def jpeg_tiles(path: str, series: int, level: int, mtime_ns: int) -> JpegTiles | None:
    """The level's JPEG tile layout, or None when it is not one 8-bit, interleaved, JPEG-compressed page."""
    with tifffile.TiffFile(path) as tif:
        if tif.is_ndpi:  # NDPI's JPEG strips are decoded by restart interval (tifffile's McuStarts): not checked
            return None
        pages = tif.series[series].levels[level].pages
        page = pages[0] if len(pages) == 1 else None
        if not isinstance(page, tifffile.TiffPage) or page.compression != _JPEG or page.bitspersample != 8:
            return None
        if page.planarconfig != 1 or page.samplesperpixel not in (1, 3) or len(page.chunks) < 2:
            return None
        return JpegTiles(path=path, tables=bytes(page.jpegtables or b""), offsets=tuple(page.dataoffsets),
                         counts=tuple(page.databytecounts), tile=tuple(page.chunks[:2]),
                         grid=tuple(page.chunked[:2]))
