"""sparseseg: whole-slide nucleus/cell segmentation trained from sparse annotations."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sparseseg")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
