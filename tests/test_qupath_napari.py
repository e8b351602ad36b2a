"""What QuPath (0.5 and 0.6) and napari read from sparseseg's outputs, checked against their readers' rules."""

from __future__ import annotations

import json
import math
import uuid

import numpy as np
import pytest
import shapely
import tifffile
from conftest import DSB
from shapely.geometry import shape as to_shape

from sparseseg.cli import main

NAME = "he_65c8527c"


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    """A real H&E slide with its true nuclei as the label group, measured (the object table exists)."""
    from imageio import v3 as iio

    root = tmp_path_factory.mktemp("qupath")
    pixels = iio.imread(DSB / "images" / f"{NAME}.png")[..., :3]
    tifffile.imwrite(root / "he.tif", pixels, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER",
                     photometric="rgb")
    slide = root / "he.ome.zarr"
    assert main(["ingest", str(root / "he.tif"), str(slide), "-q"]) == 0
    truth = tifffile.imread(DSB / "labels" / f"{NAME}.tif").astype(np.uint32)
    tifffile.imwrite(root / "truth.tif", truth)
    assert main(["measure", str(slide), "--labels", str(root / "truth.tif"), "--out", str(root / "m"), "-q",
                 "--no-report"]) == 0
    return slide, root, truth


@pytest.mark.parametrize("object_type", ["detection", "cell"])
def test_geojson_follows_qupath_conventions_with_the_measurements(measured, object_type):
    slide, root, truth = measured
    out = root / f"{object_type}.geojson"
    assert main(["export", "geojson", str(slide), "--labels", str(root / "truth.tif"), "--out", str(out),
                 "--object-type", object_type, "--measurements", str(root / "m" / "objects.parquet")]) == 0
    collection = json.loads(out.read_text())
    assert collection["type"] == "FeatureCollection" and len(collection["features"]) == truth.max()
    ids = set()
    for feature in collection["features"]:
        uuid.UUID(feature["id"])  # QuPath >= 0.4 keeps an object's identity only from a UUID id
        ids.add(feature["id"])
        props = feature["properties"]
        assert props["objectType"] == object_type
        classification = props["classification"]  # what QuPath's PathClass adapter needs: name (or names) + colour
        assert classification["name"] == "Nucleus" and len(classification["color"]) == 3
        values = props["measurements"]  # a flat {name: number} object (QuPath >= 0.4), finite numbers only
        assert all(isinstance(v, float) and math.isfinite(v) for v in values.values())
        for name in ("Nucleus: Area µm^2", "Nucleus: Perimeter µm", "Nucleus: Circularity",
                     "Nucleus: Hematoxylin OD mean", "Nucleus: Eosin OD mean", "Nucleus: R mean"):
            assert name in values, name
        assert 0 < values["Nucleus: Circularity"] <= 1
        assert all(isinstance(v, str) for v in props["metadata"].values())  # QuPath 0.6 metadata: strings
        geometry = to_shape(feature["geometry"])
        assert shapely.is_valid(geometry) and geometry.geom_type == "Polygon"
        if object_type == "cell":
            assert to_shape(feature["nucleusGeometry"]).equals(geometry)
        else:
            assert "nucleusGeometry" not in feature
        k = props["id"]
        assert values["Nucleus: Area µm^2"] == pytest.approx((truth == k).sum() * 0.25, rel=1e-6)
    assert len(ids) == truth.max()  # distinct ids


def test_napari_ome_zarr_reads_image_and_labels_at_the_same_scale(measured):
    napari_ome_zarr = pytest.importorskip("napari_ome_zarr")
    slide, root, _ = measured
    reader = napari_ome_zarr.napari_get_reader(str(slide))
    layers = reader(str(slide))
    kinds = {kind: kwargs for _, kwargs, kind in layers}
    image, labels = kinds["image"], kinds["labels"]
    assert image["channel_axis"] == 0 and list(image["scale"]) == pytest.approx([0.5, 0.5])
    assert list(labels["scale"]) == pytest.approx(list(image["scale"]))
    assert (labels.get("translate") is None and image.get("translate") is None) or \
        list(labels["translate"]) == pytest.approx(list(image["translate"]))
    data = next(d for d, _, kind in layers if kind == "labels")
    assert len(data) == 1 and data[0].shape == (256, 320)  # the tissue mask at level 0 of the image
