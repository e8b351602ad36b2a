"""Importing annotations: QuPath GeoJSON round trip on a real DSB image, label images, bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
import zarr
from conftest import DSB
from scipy import ndimage as ndi
from shapely.geometry import mapping

from sparseseg.annotations import compute_targets
from sparseseg.annotations.model import BACKGROUND
from sparseseg.annotations.store import read_annotation_patch
from sparseseg.cli import main
from sparseseg.geometry.polygons import mask_to_polygon
from sparseseg.ingest import ingest

NAME = "fluo_0402a81e"


@pytest.fixture()
def slide(tmp_path):
    """The real DSB image as an OME-Zarr slide with 128 px chunks (several chunks, 2 levels)."""
    return ingest(DSB / "images" / f"{NAME}.png", tmp_path / "slide.ome.zarr", pixel_size_um=0.5, chunk=128)


@pytest.fixture(scope="module")
def truth():
    return tifffile.imread(DSB / "labels" / f"{NAME}.tif").astype(np.int64)


def _feature(geometry, cls=None, object_type="annotation", name=None):
    props = {"objectType": object_type, "isLocked": False}
    if cls:
        props["classification"] = {"name": cls, "color": [200, 0, 0]}
    if name:
        props["name"] = name
    geometry = geometry if isinstance(geometry, dict) else mapping(geometry)
    return {"type": "Feature", "id": "f", "geometry": geometry, "properties": props}


def _touching_pair(truth):
    a, b = truth[:, :-1], truth[:, 1:]
    pairs = {(int(x), int(y)) for x, y in zip(a[(a != b) & (a > 0) & (b > 0)], b[(a != b) & (a > 0) & (b > 0)])}
    return sorted(pairs)[0]


def qupath_style_export(truth: np.ndarray, rng: np.random.Generator):
    """A realistic QuPath export: complete nuclei, background brushes, a foreground brush over two
    touching nuclei with the boundary drawn between them, seed points and an ignored region.
    Returns (features, expected partial map with placeholder ids for the stroke, expected points)."""
    ids = [int(k) for k in np.unique(truth) if k]
    first, second = _touching_pair(truth)
    others = [k for k in ids if k not in (first, second)]
    complete = others[:20]
    seeds = others[20:30]
    features = [_feature(mask_to_polygon(truth == k), "Nucleus", name=f"nucleus {k}") for k in complete]
    expected = np.zeros(truth.shape, np.int64)
    for new_id, k in enumerate(complete, start=2):
        expected[truth == k] = new_id
    yy, xx = np.mgrid[: truth.shape[0], : truth.shape[1]]
    for _ in range(6):  # brush strokes on glass: disks cut back where they would touch nuclei
        cy, cx = rng.integers(0, truth.shape[0]), rng.integers(0, truth.shape[1])
        brush = ((yy - cy) ** 2 + (xx - cx) ** 2 < 14**2) & (truth == 0)
        brush = ndi.binary_opening(brush, iterations=1)
        if brush.sum() < 30:
            continue
        for part in getattr(poly := mask_to_polygon(brush), "geoms", [poly]):
            features.append(_feature(part, "Background"))
        expected[brush] = BACKGROUND
    stroke = (truth == first) | (truth == second)
    features.append(_feature(mask_to_polygon(stroke), "Foreground"))
    expected[truth == first] = -1  # placeholders: the two pieces of the split stroke
    expected[truth == second] = -2
    interface = mask_to_polygon(truth == first).intersection(mask_to_polygon(truth == second))
    features.append(_feature(interface, "Boundary"))
    points = []
    for k in seeds:
        cy, cx = ndi.center_of_mass(truth == k)
        points.append((cy + 0.5, cx + 0.5))
    features.append(_feature({"type": "MultiPoint", "coordinates": [(x, y) for y, x in points]}, "Seed"))
    features.append(_feature({"type": "Polygon", "coordinates": [[(0, 0), (50, 0), (50, 40), (0, 40), (0, 0)]]},
                             "Region*"))
    return features, expected, np.asarray(points), len(complete)


def test_qupath_geojson_round_trip_reproduces_the_partial_map(slide, truth, tmp_path):
    features, expected, points, n_complete = qupath_style_export(truth, np.random.default_rng(1))
    assert features[-2]["geometry"]["type"] == "MultiPoint"
    path = tmp_path / "export.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert main(["annotations", "import", str(slide), str(path)]) == 0

    group = zarr.open_group(slide, mode="r")
    partial = group["labels/annotations/0"][...].astype(np.int64)
    fixed = expected >= 0
    np.testing.assert_array_equal(partial[fixed], expected[fixed])
    split_ids = {int(partial[expected == -1][0]), int(partial[expected == -2][0])}
    assert len(split_ids) == 2 and min(split_ids) > n_complete + 1  # two new, distinct, incomplete objects
    assert (partial[expected == -1] == partial[expected == -1][0]).all()
    assert (partial[expected == -2] == partial[expected == -2][0]).all()
    np.testing.assert_array_equal(group["tables/annotations/complete"][...], np.arange(2, n_complete + 2))
    table = group["tables/annotations/points"][...]
    np.testing.assert_allclose(table[:, :2], points)
    assert (table[:, 2] == 0).all()  # the seeds lie on unannotated pixels
    assert len(group["tables/annotations/boundaries"][...]) >= 2
    assert group["labels/annotations/1"].shape == group["1"].shape[1:]
    from ome_zarr_models.v04 import ImageLabel

    ImageLabel.from_zarr(group["labels/annotations"])

    # the stored annotation drives the targets: the drawn boundary separates the two nuclei
    window = (slice(0, truth.shape[0]), slice(0, truth.shape[1]))
    patch = read_annotation_patch(slide, window)
    targets = compute_targets(patch)
    assert targets.complete.sum() == (expected >= 2).sum()
    both = (expected == -1) | (expected == -2)
    assert targets.s1[both].all()


def _bad_geojson(tmp_path, features):
    path = tmp_path / "bad.geojson"
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


BOX = {"type": "Polygon", "coordinates": [[(10, 10), (30, 10), (30, 30), (10, 30), (10, 10)]]}


@pytest.mark.parametrize("features,problem", [
    ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[(300, 10), (400, 10), (400, 30),
                                                                          (300, 30), (300, 10)]]},
       "properties": {"classification": {"name": "Nucleus"}}}], "outside the 347x260"),
    ([_feature(BOX, "Background"), _feature(BOX, "Nucleus")], "opposite role"),
    ([{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[(0, 0), (10, 0), (20, 0), (0, 0)]]},
       "properties": {}}], "cannot be repaired"),
    ([_feature({"type": "LineString", "coordinates": [[10, 10], [20, 20]]}, "Tumor")], "unknown class 'Tumor'"),
    ([_feature(BOX, "Seed")], "means point but the geometry is a Polygon"),
])
def test_bad_geojson_is_rejected_and_nothing_is_written(slide, tmp_path, capsys, features, problem):
    path = _bad_geojson(tmp_path, features)
    assert main(["annotations", "import", str(slide), str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and problem in err and "Traceback" not in err
    assert "annotations" not in zarr.open_group(slide, mode="r").get("labels", {})
    assert not [p for p in (slide / "labels").iterdir() if ".partial-" in p.name]


def test_self_intersecting_polygon_is_repaired(slide, tmp_path):
    bowtie = {"type": "Polygon", "coordinates": [[(10, 10), (40, 40), (40, 10), (10, 40), (10, 10)]]}
    path = _bad_geojson(tmp_path, [_feature(bowtie, "Nucleus")])
    assert main(["annotations", "import", str(slide), str(path)]) == 0
    partial = zarr.open_group(slide, mode="r")["labels/annotations/0"][...]
    assert set(np.unique(partial)) == {0, 2} and 300 < (partial == 2).sum() < 500


def test_class_map_and_existing_annotations(slide, tmp_path, capsys):
    path = _bad_geojson(tmp_path, [_feature(BOX, "Tumor")])
    assert main(["annotations", "import", str(slide), str(path), "--class-map", "Tumor=background"]) == 0
    assert (zarr.open_group(slide, mode="r")["labels/annotations/0"][...] == BACKGROUND).sum() == 400
    assert main(["annotations", "import", str(slide), str(path)]) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(["annotations", "import", str(slide), str(path), "--overwrite", "--class-map", "tumor=object"]) == 0
    assert (zarr.open_group(slide, mode="r")["labels/annotations/0"][...] == 2).sum() == 400


def test_label_image_imports(slide, truth, tmp_path, capsys):
    dense = tmp_path / "dense.tif"
    tifffile.imwrite(dense, truth.astype(np.uint16))
    assert main(["annotations", "import", str(slide), str(dense), "--kind", "dense"]) == 0
    group = zarr.open_group(slide, mode="r")
    np.testing.assert_array_equal(group["labels/annotations/0"][...], np.where(truth > 0, truth + 1, 1))
    assert len(group["tables/annotations/complete"][...]) == truth.max()
    targets = compute_targets(read_annotation_patch(slide, (slice(0, 260), slice(0, 347))))
    assert targets.valid.all()

    partial = tmp_path / "partial.png"
    sparse = np.where(truth[:, :] % 3 == 0, 0, np.where(truth > 0, truth + 1, 1)).astype(np.uint16)
    import imageio.v3 as iio

    iio.imwrite(partial, sparse)
    assert main(["annotations", "import", str(slide), str(partial), "--overwrite"]) == 0
    np.testing.assert_array_equal(zarr.open_group(slide, mode="r")["labels/annotations/0"][...], sparse)

    assert main(["annotations", "import", str(slide), str(dense), "--kind", "foreground"]) == 0
    fg = zarr.open_group(slide, mode="r")["labels/foreground/0"][...]
    np.testing.assert_array_equal(fg, (truth > 0).astype(np.uint8))

    small = tmp_path / "small.tif"
    tifffile.imwrite(small, truth[:100].astype(np.uint16))
    assert main(["annotations", "import", str(slide), str(small), "--overwrite"]) == 2
    assert "label image is 100x347 but the slide's level 0 is 260x347" in capsys.readouterr().err
