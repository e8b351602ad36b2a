"""Shared fixtures: paths to the committed CC0 test data."""

from __future__ import annotations

from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"
SVS = Path(__file__).parents[1] / "sparseseg" / "data" / "cmu_small_region.svs"
OME_TIFF = DATA / "slides" / "cmu_small_region.pyramid.ome.tif"
GENERIC_TIFF = DATA / "slides" / "cmu_small_region.pyramid.generic.tif"
DSB = DATA / "dsb2018"


@pytest.fixture(scope="session")
def dsb_pairs() -> list[tuple[Path, Path]]:
    """(image PNG, instance-label TIFF) pairs of the committed DSB2018 images."""
    return [(p, DSB / "labels" / f"{p.stem}.tif") for p in sorted((DSB / "images").glob("*.png"))]
