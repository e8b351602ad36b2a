"""Reading slides from any supported format and writing OME-Zarr."""

from sparseseg.io.detect import open_slide
from sparseseg.io.slide import Slide

__all__ = ["Slide", "open_slide"]
