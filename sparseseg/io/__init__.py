"""Reading slides from any supported format and writing OME-Zarr."""

from sparseseg.io.slide import Slide, open_slide

__all__ = ["Slide", "open_slide"]
