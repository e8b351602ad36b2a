"""Ingest of every source kind into OME-Zarr 0.4 and 0.5: validation, read-back, pixel size, pixels."""

from __future__ import annotations

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
import zarr
from conftest import DSB, GENERIC_TIFF, OME_TIFF, SVS
from ome_zarr.format import FormatV04, FormatV05
from ome_zarr.io import parse_url
from ome_zarr.reader import Reader
from ome_zarr.writer import write_image

from sparseseg.ingest import ingest
from sparseseg.pyramid import pyramid_shapes

CMU_PIXEL_UM = 0.499
FLUO_PNG = DSB / "images" / "fluo_0402a81e.png"
HE_PNG = DSB / "images" / "he_65c8527c.png"


def _ome_zarr_source(tmp_path, version: str):
    """An OME-Zarr written by ome-zarr-py itself (an independent writer), 0.25 um pixels."""
    pixels = iio.imread(HE_PNG).transpose(2, 0, 1)
    path = tmp_path / f"source-{version}.ome.zarr"
    fmt = FormatV04() if version == "0.4" else FormatV05()
    group = zarr.open_group(path, mode="w", zarr_format=2 if version == "0.4" else 3)
    write_image(pixels, group, axes="cyx", fmt=fmt, scale_factors=[{"y": 2, "x": 2}],
                scale={"c": 1.0, "y": 0.25, "x": 0.25}, axes_units={"y": "micrometer", "x": "micrometer"},
                storage_options={"chunks": (3, 128, 128)})
    return path, pixels, (0.25, 0.25)


def _source(kind: str, tmp_path):
    """(path, level-0 pixels as (C, Y, X), expected pixel size, extra ingest kwargs)."""
    if kind in ("svs", "ome-tiff", "generic-tiff"):
        path = {"svs": SVS, "ome-tiff": OME_TIFF, "generic-tiff": GENERIC_TIFF}[kind]
        return path, tifffile.imread(path).transpose(2, 0, 1), (CMU_PIXEL_UM, CMU_PIXEL_UM), {}
    if kind == "png":
        return FLUO_PNG, iio.imread(FLUO_PNG)[None], (0.65, 0.65), {"pixel_size_um": 0.65}
    path, pixels, size = _ome_zarr_source(tmp_path, kind.split("-")[-1])
    return path, pixels, size, {}


def _validate(path, ngff: str) -> None:
    """Validate image, labels container and tissue label against ome-zarr-models."""
    if ngff == "0.4":
        from ome_zarr_models.v04 import Image, ImageLabel, Labels
    else:
        from ome_zarr_models.v05 import Image, ImageLabel, Labels
    group = zarr.open_group(path, mode="r")
    Image.from_zarr(group)
    Labels.from_zarr(group["labels"])
    ImageLabel.from_zarr(group["labels/tissue"])


SOURCES = ["svs", "ome-tiff", "generic-tiff", "png", "ome-zarr-0.4", "ome-zarr-0.5"]


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
@pytest.mark.parametrize("kind", SOURCES)
def test_ingest_source_kinds(kind, ngff, tmp_path):
    src, pixels, pixel_size, kwargs = _source(kind, tmp_path)
    chunk = 256 if kind in ("png",) or kind.startswith("ome-zarr") else 1024
    dst = ingest(src, tmp_path / "out.ome.zarr", ngff=ngff, chunk=chunk, **kwargs)

    _validate(dst, ngff)
    nodes = list(Reader(parse_url(str(dst)))())
    image = nodes[0]
    expected_shapes = pyramid_shapes(pixels.shape[1:], chunk)
    assert [tuple(d.shape) for d in image.data] == [(pixels.shape[0], *s) for s in expected_shapes]
    assert len(image.data) >= 2 or max(pixels.shape[1:]) <= chunk
    np.testing.assert_array_equal(np.asarray(image.data[0]), pixels)
    transforms = image.metadata["coordinateTransformations"]
    for level, level_transforms in enumerate(transforms):
        scale = next(t["scale"] for t in level_transforms if t["type"] == "scale")
        np.testing.assert_allclose(scale[-2:], np.array(pixel_size) * 2**level)
    assert [a["name"] for a in image.metadata["axes"]] == ["c", "y", "x"]
    assert image.metadata["axes"][-1]["unit"] == "micrometer"
    # every coarser level is the 2x2 mean of the previous one (rounded)
    level1 = np.asarray(image.data[1]).astype(np.float32)
    level0 = np.asarray(image.data[0]).astype(np.float32)
    y, x = (s - s % 2 for s in level0.shape[1:])
    expected = level0[:, :y, :x].reshape(level0.shape[0], y // 2, 2, x // 2, 2).mean(axis=(2, 4))
    np.testing.assert_array_equal(level1[:, : y // 2, : x // 2], np.floor(expected + 0.5))


def test_tissue_labels_match_image_levels(tmp_path):
    dst = ingest(SVS, tmp_path / "slide.ome.zarr")
    group = zarr.open_group(dst, mode="r")
    for level in range(3):
        assert group[f"labels/tissue/{level}"].shape == group[str(level)].shape[1:]
        assert group[f"labels/tissue/{level}"].dtype == np.uint8
    mask = group["labels/tissue/0"][...]
    rgb = group["0"][...]
    # the CMU region is mostly tissue with glass at the rim: tissue darker than glass
    assert 0.3 < mask.mean() < 0.99
    assert rgb.mean(axis=0)[mask == 1].mean() < rgb.mean(axis=0)[mask == 0].mean() - 30


@pytest.mark.parametrize("mode,background,foreground", [("brightfield", 235, 90), ("fluorescence", 8, 160)])
def test_tissue_mask_recovers_a_synthetic_tissue_region(mode, background, foreground, tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:1500, :1300]
    tissue = (yy - 700) ** 2 / 500**2 + (xx - 600) ** 2 / 400**2 < 1
    grey = np.where(tissue, foreground, background) + rng.normal(0, 12, tissue.shape)
    grey = np.clip(grey, 0, 255).astype(np.uint8)
    pixels = np.stack([grey] * 3, -1) if mode == "brightfield" else grey
    src = tmp_path / "synthetic.tif"
    tifffile.imwrite(src, pixels, tile=(256, 256), resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    dst = ingest(src, tmp_path / "s.ome.zarr", chunk=512, tissue="auto")
    mask = zarr.open_group(dst, mode="r")["labels/tissue/0"][...].astype(bool)
    iou = (mask & tissue).sum() / (mask | tissue).sum()
    assert iou > 0.97
