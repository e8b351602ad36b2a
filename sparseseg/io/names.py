"""Slide file names: which suffixes are slides, and a slide's name without them (for its outputs' names)."""

from __future__ import annotations

from pathlib import Path

SLIDE_SUFFIXES = (".svs", ".tif", ".tiff", ".ndpi", ".scn")


def slide_stem(path: Path) -> str:
    """``path``'s name without its slide suffix: dots inside the name stay (``x_0.98.ome.zarr`` -> ``x_0.98``)."""
    name = Path(path).name
    for suffix in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif") + SLIDE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(path).stem
