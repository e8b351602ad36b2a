"""Measure stage on real DSB data: block-wise tables equal whole-image regionprops, metrics equal
StarDist's, regions partition the objects, GeoJSON round-trips, the report is written."""

from __future__ import annotations

import gzip
import json
import re

import imageio.v3
import numpy as np
import pandas as pd
import pytest
import shapely
import tifffile
import zarr
from conftest import DSB
from shapely.geometry import shape as to_shape
from skimage.color import rgb2hed
from skimage.measure import regionprops_table
from skimage.segmentation import find_boundaries
from helpers import perturbations

from sparseseg.io.labels import write_label_pyramid
from sparseseg.cli import main
from sparseseg.geometry.polygons import rasterize_polygon
from sparseseg.errors import InputError
from sparseseg.ingest import ingest
from sparseseg.measure.report import densest_window
from sparseseg.measure.run import OVERLAY_PX, measure_slide

NAME = "he_0121d675"
PIXEL = 0.5


@pytest.fixture()
def slide(tmp_path):
    """A real H&E image with its true nuclei as labels/cells and a perturbed copy as labels/pred."""
    path = ingest(DSB / "images" / f"{NAME}.png", tmp_path / "he.ome.zarr", pixel_size_um=PIXEL, chunk=64)
    truth = tifffile.imread(DSB / "labels" / f"{NAME}.tif").astype(np.uint32)
    write_label_pyramid(path, "cells", lambda w: truth[w], np.uint32, False, "test truth")
    pred = list(perturbations(truth.astype(np.int64), np.random.default_rng(0)))[3].astype(np.uint32)  # merges
    write_label_pyramid(path, "pred", lambda w: pred[w], np.uint32, False, "test prediction")
    return path, truth, pred


def test_blockwise_table_equals_whole_image_regionprops(slide, tmp_path):
    path, truth, _ = slide
    summary = measure_slide(path, labels="cells", regions="grid:40um", out=tmp_path / "m", block=64, margin=48,
                            progress=False)
    table = pd.read_parquet(tmp_path / "m" / "objects.parquet").sort_values("id").reset_index(drop=True)
    rgb = zarr.open_group(path, mode="r")["0"][...].transpose(1, 2, 0).astype(np.float32)
    hed = rgb2hed(np.clip(rgb / 255, 0, 1)).astype(np.float32)[..., :2]
    ref = pd.DataFrame(regionprops_table(truth, intensity_image=np.concatenate([rgb, hed], -1),
                                         properties=("label", "area", "centroid", "bbox", "perimeter", "eccentricity",
                                                     "solidity", "orientation", "equivalent_diameter_area",
                                                     "intensity_mean")))
    assert summary["cells"] == len(ref) == len(table) and table["id"].is_unique  # each object exactly once
    np.testing.assert_array_equal(table["id"], ref["label"])
    np.testing.assert_array_equal(table["area_px"], ref["area"])
    np.testing.assert_allclose(table["area_um2"], ref["area"] * PIXEL**2)
    np.testing.assert_allclose(table[["centroid_y_px", "centroid_x_px"]], ref[["centroid-0", "centroid-1"]])
    np.testing.assert_array_equal(table[["bbox_y0", "bbox_x0", "bbox_y1", "bbox_x1"]],
                                  ref[["bbox-0", "bbox-1", "bbox-2", "bbox-3"]])
    np.testing.assert_allclose(table["perimeter_um"], ref["perimeter"] * PIXEL)
    np.testing.assert_allclose(table["equivalent_diameter_um"], ref["equivalent_diameter_area"] * PIXEL)
    for ours, theirs in (("eccentricity", "eccentricity"), ("solidity", "solidity"), ("orientation_rad", "orientation"),
                         ("mean_R", "intensity_mean-0"), ("mean_B", "intensity_mean-2"),
                         ("hematoxylin_od", "intensity_mean-3"), ("eosin_od", "intensity_mean-4")):
        np.testing.assert_allclose(table[ours], ref[theirs], rtol=1e-5, atol=1e-6)
    crossing = ((table["bbox_y0"] // 64 != (table["bbox_y1"] - 1) // 64)
                | (table["bbox_x0"] // 64 != (table["bbox_x1"] - 1) // 64)).sum()
    assert crossing > 20  # many objects cross block borders and are still measured once, whole


@pytest.mark.parametrize("regions", ["grid:40um", "tissue", "rois"])
def test_per_region_counts_sum_to_the_global_count(slide, tmp_path, regions):
    path, truth, _ = slide
    if regions == "rois":
        rois = tmp_path / "rois.geojson"
        features = [{"type": "Feature", "properties": {"name": name},
                     "geometry": {"type": "Polygon", "coordinates": [coords]}}
                    for name, coords in (("left", [(0, 0), (150, 0), (150, 256), (0, 256), (0, 0)]),
                                         ("overlapping", [(100, 0), (320, 0), (320, 120), (100, 120), (100, 0)]))]
        rois.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
        regions = str(rois)
    summary = measure_slide(path, labels="cells", regions=regions, out=tmp_path / "m", block=128, progress=False)
    table = pd.read_csv(tmp_path / "m" / "regions.csv")
    objects = pd.read_parquet(tmp_path / "m" / "objects.parquet")
    assert table["cells"].sum() == summary["cells"] == len(np.unique(truth)) - 1
    np.testing.assert_array_equal(objects.groupby("region").size().reindex(table["region"], fill_value=0),
                                  table["cells"])
    dense = table[table["tissue_area_mm2"] > 0]
    np.testing.assert_allclose(dense["density_per_mm2"], dense["cells"] / dense["tissue_area_mm2"])
    for row in table[table["cells"] > 0].itertuples():  # area statistics straight from the objects
        areas = objects.loc[objects["region"] == row.region, "area_um2"].to_numpy()
        np.testing.assert_allclose([row.area_mean_um2, row.area_median_um2, row.area_std_um2],
                                   [areas.mean(), np.median(areas), areas.std()], rtol=1e-9)
    assert zarr.open_group(path / "labels" / "cells", mode="r").attrs["sparseseg_measure"]["cells"] == summary["cells"]


def test_accuracy_matches_stardist_and_a_direct_aji(slide, tmp_path, capsys):
    stardist_matching = pytest.importorskip("stardist.matching")
    path, truth, pred = slide
    assert main(["measure", str(path), "--labels", "pred", "--truth", "cells", "--regions", "grid:40um",
                 "--out", str(tmp_path / "m"), "-q"]) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "m" / "accuracy.csv")
    for _, row in table.iterrows():
        ref = stardist_matching.matching(truth, pred, thresh=row["threshold"])
        assert (row["tp"], row["fp"], row["fn"]) == (ref.tp, ref.fp, ref.fn)
        assert row["f1"] == pytest.approx(ref.f1, abs=1e-6)
        assert row["panoptic_quality"] == pytest.approx(ref.panoptic_quality, abs=1e-6)
    metrics = json.loads((tmp_path / "m" / "metrics.json").read_text())["accuracy"]
    assert f"f1@0.5 {metrics['f1@0.5']:.4f}" in printed
    assert metrics["aji"] == pytest.approx(direct_aji(truth, pred), abs=1e-9)
    per_region = pd.read_csv(tmp_path / "m" / "accuracy_regions.csv")
    assert per_region["tp"].sum() == table["tp"].iloc[0]
    assert (per_region["tp"] + per_region["fn"]).sum() == len(np.unique(truth)) - 1
    assert (per_region["tp"] + per_region["fp"]).sum() == len(np.unique(pred)) - 1
    report = (tmp_path / "m" / "report.html").read_text()
    assert "accuracy.png" in report and "density.png" in report and "thumbnail.png" in report
    for png in ("accuracy.png", "density.png", "thumbnail.png", "overlay.png"):
        assert (tmp_path / "m" / png).stat().st_size > 1000
    assert 'href="overlay.png"' in report


def test_the_overlay_is_a_full_resolution_crop_where_the_cells_are_most_crowded(slide, tmp_path):
    path, _, pred = slide
    assert main(["measure", str(path), "--labels", "pred", "--out", str(tmp_path / "m"), "-q"]) == 0
    overlay = imageio.v3.imread(tmp_path / "m" / "overlay.png")[..., :3]
    height, width = min(OVERLAY_PX, pred.shape[0]), min(OVERLAY_PX, pred.shape[1])
    assert overlay.shape[:2] == (height, 2 * width + 8)
    left, right = overlay[:, :width].astype(int), overlay[:, width + 8:].astype(int)
    objects = pd.read_parquet(tmp_path / "m" / "objects.parquet")
    window = densest_window(objects["centroid_y_px"].to_numpy(), objects["centroid_x_px"].to_numpy(), pred.shape,
                            OVERLAY_PX)
    outline = find_boundaries(pred[window], mode="inner")
    assert outline.sum() > 100
    assert (right[outline] == (0, 255, 51)).all()
    assert (right[~outline] == left[~outline]).all()


def test_compare_outlines_two_segmentations_on_the_same_crop(slide, tmp_path):
    """--compare: the report's crop outlined by the other segmentation (before) and by LABELS (after), with
    the object count of each in that crop; a missing comparison is refused in one line before anything."""
    path, truth, _ = slide
    pred = np.where(truth % 2 == 1, truth, 0).astype(np.uint32)  # "before": every other nucleus missed
    write_label_pyramid(path, "pred", lambda w: pred[w], np.uint32, True, "test prediction")
    assert main(["measure", str(path), "--labels", "cells", "--compare", "pred", "--out", str(tmp_path / "m"),
                 "-q"]) == 0
    objects = pd.read_parquet(tmp_path / "m" / "objects.parquet")
    window = densest_window(objects["centroid_y_px"].to_numpy(), objects["centroid_x_px"].to_numpy(), truth.shape,
                            OVERLAY_PX)
    figure = imageio.v3.imread(tmp_path / "m" / "before_after.png")[..., :3].astype(int)
    width = window[1].stop - window[1].start
    image, before, after = (figure[:, i * (width + 8): i * (width + 8) + width] for i in range(3))
    for panel, labels in ((before, pred), (after, truth)):
        outline = find_boundaries(labels[window], mode="inner")
        assert outline.sum() > 100 and (panel[outline] == (0, 255, 51)).all()
        assert (panel[~outline] == image[~outline]).all()
    assert not np.array_equal(before, after)
    report = (tmp_path / "m" / "report.html").read_text()
    assert 'src="before_after.png"' in report
    for name, labels in (("pred", pred), ("cells", truth)):
        count = len(np.unique(labels[window])) - 1
        assert f"{name} ({count} objects" in report
    assert main(["measure", str(path), "--compare", "nothing", "--out", str(tmp_path / "n"), "-q"]) == 2
    assert not (tmp_path / "n").exists()


def test_densest_window_is_centred_on_the_crowd():
    rng = np.random.default_rng(0)
    rows = np.concatenate([rng.uniform(0, 4000, 50), rng.normal(3000, 40, 400)])
    cols = np.concatenate([rng.uniform(0, 6000, 50), rng.normal(1000, 40, 400)])
    window = densest_window(rows, cols, (4000, 6000), 400)
    assert window[0].stop - window[0].start == 400 and window[1].stop - window[1].start == 400
    inside = ((rows >= window[0].start) & (rows < window[0].stop) & (cols >= window[1].start) & (cols < window[1].stop))
    assert inside.sum() >= 350
    assert densest_window(np.array([]), np.array([]), (100, 50), 400) == (slice(0, 100), slice(0, 50))


def test_no_report_writes_the_tables_only(slide, tmp_path, capsys):
    path, truth, _ = slide
    assert main(["measure", str(path), "--out", str(tmp_path / "m"), "--no-report", "-q"]) == 0
    assert f"{len(np.unique(truth)) - 1} cells" in capsys.readouterr().out
    written = {p.name for p in (tmp_path / "m").iterdir()}
    assert {"objects.parquet", "regions.parquet", "regions.csv", "metrics.json"} <= written
    assert not written & {"report.html", "thumbnail.png", "density.png"}


def test_objects_larger_than_tiles_are_measured_whole(slide, tmp_path):
    path, truth, _ = slide
    yy, xx = np.mgrid[:256, :320]
    rectangle = (yy >= 100) & (yy < 250) & (xx >= 30) & (xx < 200)  # spans 3 x 4 tiles of 64 px
    ring = (np.hypot(yy - 128, xx - 250) < 60) & (np.hypot(yy - 128, xx - 250) > 50)
    big = np.where(np.isin(truth, truth[rectangle | ring]), 0, truth)  # no nucleus left in pieces
    big[rectangle], big[ring] = truth.max() + 1, truth.max() + 2
    tifffile.imwrite(tmp_path / "big.tif", big)
    measure_slide(path, labels=str(tmp_path / "big.tif"), out=tmp_path / "m", block=64, margin=8, report=False,
                  progress=False)
    table = pd.read_parquet(tmp_path / "m" / "objects.parquet").set_index("id").sort_index()
    ref = pd.DataFrame(regionprops_table(big, properties=("label", "area", "bbox", "perimeter", "solidity",
                                                          "eccentricity"))).set_index("label")
    assert table.index.is_unique and (table.index == ref.index).all()
    for big_id in (truth.max() + 1, truth.max() + 2):
        assert table.loc[big_id, "area_px"] == ref.loc[big_id, "area"] > 3000
    np.testing.assert_allclose(table["perimeter_um"], ref["perimeter"] * PIXEL)
    np.testing.assert_allclose(table["solidity"], ref["solidity"], rtol=1e-12)
    np.testing.assert_allclose(table["eccentricity"], ref["eccentricity"], atol=1e-7)


def test_threads_and_shape_only_tables_agree_with_the_full_table(slide, tmp_path):
    path, _, _ = slide
    measure_slide(path, out=tmp_path / "full", block=64, report=False, progress=False, threads=1)
    measure_slide(path, out=tmp_path / "shapes", block=64, report=False, progress=False, threads=3, intensities=False)
    full = pd.read_parquet(tmp_path / "full" / "objects.parquet").sort_values("id").reset_index(drop=True)
    shapes = pd.read_parquet(tmp_path / "shapes" / "objects.parquet").sort_values("id").reset_index(drop=True)
    assert not [c for c in shapes.columns if c.startswith("mean_") or c.endswith("_od")]
    assert "mean_R" in full and "hematoxylin_od" in full
    pd.testing.assert_frame_equal(shapes, full[shapes.columns])
    with pytest.raises(InputError, match="--threads must be at least 1"):
        measure_slide(path, out=tmp_path / "x", threads=0, progress=False)


def test_an_object_in_far_apart_pieces_fails_and_keeps_the_previous_table(slide, tmp_path):
    path, truth, _ = slide
    out = tmp_path / "m"
    measure_slide(path, out=out, block=64, margin=8, report=False, progress=False)
    before = (out / "objects.parquet").read_bytes()
    split = truth.copy()
    split[:4, :4] = split[-4:, -4:] = truth.max() + 1  # one label in two corners: both measured would repeat its id
    tifffile.imwrite(tmp_path / "split.tif", split)
    with pytest.raises(InputError, match=f"label {truth.max() + 1} .* farther than --margin 8 px"):
        measure_slide(path, labels=str(tmp_path / "split.tif"), out=out, block=64, margin=8, report=False,
                      progress=False)
    assert (out / "objects.parquet").read_bytes() == before
    assert not [p.name for p in out.iterdir() if p.name.endswith(".partial")]


def test_image_chunks_without_objects_are_not_decoded(slide, tmp_path):
    """A corrupt image chunk where no object lies is never read; under an object it is an error naming the image."""
    path, truth, _ = slide
    image = zarr.open_group(path, mode="r")["0"]
    window = (slice(64, 128), slice(128, 192))  # image chunk (0, 1, 2) at chunk=64
    sparse = truth.copy()
    sparse[np.isin(sparse, np.unique(truth[window]))] = 0  # no object left in (or touching) the chunk
    tifffile.imwrite(tmp_path / "sparse.tif", sparse)
    intact = measure_slide(path, labels=str(tmp_path / "sparse.tif"), out=tmp_path / "intact", block=128,
                           report=False, progress=False)
    (path / "0" / image.metadata.encode_chunk_key((0, 1, 2))).write_bytes(b"not a blosc chunk")
    damaged = measure_slide(path, labels=str(tmp_path / "sparse.tif"), out=tmp_path / "damaged", block=128,
                            report=False, progress=False)
    assert damaged["cells"] == intact["cells"] == len(np.unique(sparse)) - 1 > 10
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "damaged" / "objects.parquet"),
                                  pd.read_parquet(tmp_path / "intact" / "objects.parquet"))
    with pytest.raises(InputError, match=re.escape(str(path / "0")) + r".*cannot read rows \d+:128, columns 128:"):
        measure_slide(path, out=tmp_path / "full", block=128, report=False, progress=False)


def test_a_corrupt_label_chunk_fails_measure_and_export_naming_the_labels(slide, tmp_path, capsys):
    """One line naming the label array and the window; no table, no GeoJSON, nothing partial left."""
    path, _, _ = slide
    labels = zarr.open_group(path, mode="r")["labels/cells/0"]
    (path / "labels" / "cells" / "0" / labels.metadata.encode_chunk_key((1, 2))).write_bytes(b"not a blosc chunk")
    out = tmp_path / "cells.geojson"
    assert main(["export", "geojson", str(path), "--out", str(out)]) == 2
    assert main(["measure", str(path), "--out", str(tmp_path / "m"), "--no-report", "-q"]) == 2
    errors = capsys.readouterr().err.strip().splitlines()
    assert len(errors) == 2
    for line in errors:
        assert str(path / "labels" / "cells") in line and "cannot read rows" in line
    assert not out.exists() and not list(tmp_path.glob("**/*.partial"))
    assert not (tmp_path / "m" / "objects.parquet").exists()


def direct_aji(truth: np.ndarray, pred: np.ndarray) -> float:
    """Kumar et al.'s AJI written out with dense masks (slow, independent of the sparse version)."""
    used, inter_sum, union_sum = set(), 0, 0
    for g in np.unique(truth[truth > 0]):
        mask = truth == g
        best, best_iou, best_inter, best_union = None, -1.0, 0, mask.sum()
        for s in np.unique(pred[mask & (pred > 0)]):
            other = pred == s
            inter, union = (mask & other).sum(), (mask | other).sum()
            if inter / union > best_iou:
                best, best_iou, best_inter, best_union = s, inter / union, inter, union
        inter_sum += best_inter
        union_sum += best_union
        if best is not None:
            used.add(best)
    for s in np.unique(pred[pred > 0]):
        if s not in used:
            union_sum += (pred == s).sum()
    return inter_sum / union_sum


@pytest.mark.parametrize("suffix", [".geojson", ".geojson.gz"])
def test_geojson_export_is_valid_and_rasterises_back(slide, tmp_path, suffix):
    path, truth, _ = slide
    out = tmp_path / f"cells{suffix}"
    assert main(["export", "geojson", str(path), "--labels", "cells", "--out", str(out)]) == 0
    opener = gzip.open if suffix.endswith(".gz") else open
    with opener(out, "rt") as fh:
        collection = json.load(fh)
    features = collection["features"]
    assert len(features) == len(np.unique(truth)) - 1
    rebuilt = np.zeros_like(truth)
    for feature in features:
        geometry = to_shape(feature["geometry"])
        assert shapely.is_valid(geometry) and feature["properties"]["objectType"] == "detection"
        rebuilt[rasterize_polygon(geometry, (slice(0, truth.shape[0]), slice(0, truth.shape[1])))] = \
            feature["properties"]["id"]
        assert feature["properties"]["measurements"]["Nucleus: Area µm^2"] == pytest.approx(
            (truth == feature["properties"]["id"]).sum() * PIXEL**2)
    for k in np.unique(truth[truth > 0]):
        a, b = truth == k, rebuilt == k
        assert (a & b).sum() / (a | b).sum() >= 0.95
    np.testing.assert_array_equal(rebuilt, truth)  # pixel-edge polygons round-trip exactly


def test_geojson_export_across_tile_seams_keeps_every_object_whole(tmp_path):
    """64 px tiles: nuclei on seams and objects spanning 3 x 4 tiles come out once and rasterise back exactly."""
    from sparseseg.export.geojson import export_geojson

    truth = tifffile.imread(DSB / "labels" / f"{NAME}.tif").astype(np.uint32)
    yy, xx = np.mgrid[:256, :320]
    rectangle = (yy >= 100) & (yy < 250) & (xx >= 30) & (xx < 200)
    ring = (np.hypot(yy - 128, xx - 250) < 60) & (np.hypot(yy - 128, xx - 250) > 50)
    big = np.where(np.isin(truth, truth[rectangle | ring]), 0, truth)
    big[rectangle], big[ring] = truth.max() + 1, truth.max() + 2
    count = export_geojson(big, tmp_path / "cells.geojson", block=64, margin=8)
    features = json.loads((tmp_path / "cells.geojson").read_text())["features"]
    ids = [feature["properties"]["id"] for feature in features]
    assert count == len(ids) == len(set(ids)) == len(np.unique(big)) - 1
    seams = np.concatenate([big[:, 63::64].ravel(), big[63::64, :].ravel()])  # the last row/column of each tile
    on_seams = set(np.unique(seams)) - {0}
    assert len(on_seams) > 10 and on_seams <= set(ids)
    rebuilt = np.zeros_like(big)
    for feature in features:
        geometry = to_shape(feature["geometry"])
        assert shapely.is_valid(geometry)
        rebuilt[rasterize_polygon(geometry, (slice(0, 256), slice(0, 320)))] = feature["properties"]["id"]
    np.testing.assert_array_equal(rebuilt, big)
    split = big.copy()
    split[:4, :4] = split[-4:, -4:] = big.max() + 1  # one label in two far corners
    with pytest.raises(InputError, match=f"label {big.max() + 1} .* farther than --margin 8 px"):
        export_geojson(split, tmp_path / "split.geojson", block=64, margin=8)
    assert not list(tmp_path.glob("*split*"))


def test_grid_tissue_counts_equal_a_pixel_by_pixel_count():
    """Mask pixels per grid region (each pixel counted in the region holding its centre), random masks and grids."""
    from sparseseg.measure.regions import _cells_per_region

    rng = np.random.default_rng(3)
    for _ in range(30):
        mask = rng.random(tuple(rng.integers(1, 80, 2))) < rng.random()
        factor, cell = float(rng.uniform(1, 40)), float(rng.uniform(5, 400))
        rows, cols = (int(np.ceil(n * factor / cell)) for n in mask.shape)
        y, x = np.nonzero(mask)
        region_y, region_x = ((y + 0.5) * factor // cell).astype(int), ((x + 0.5) * factor // cell).astype(int)
        inside = (region_y < rows) & (region_x < cols)
        expected = np.zeros((rows, cols), np.int64)
        np.add.at(expected, (region_y[inside], region_x[inside]), 1)
        np.testing.assert_array_equal(_cells_per_region(mask, factor, cell, rows, cols), expected)


@pytest.mark.parametrize("margin", [0, 5])
def test_objects_crossing_tile_corners_diagonally_are_measured_whole(tmp_path, margin):
    """8-connected lines through tile corners (both diagonals), a cross over a 4-tile corner, a staircase over
    three tiles: seam objects are completed tile by tile, never before their last piece is seen."""
    from sparseseg.measure.objects import MeasureInputs, measure_objects

    labels = np.zeros((192, 192), np.uint32)
    for i in range(20):
        labels[54 + i, 54 + i] = 1       # down-right through the corner of tiles (0, 0) and (1, 1)
        labels[54 + i, 137 - i] = 2      # down-left through the corner of tiles (0, 2) and (1, 1)
    labels[120:136, 127:129] = labels[127:129, 120:136] = 3  # a cross on the corner of 4 tiles
    for i in range(30):
        labels[150 + i // 3, 40 + 3 * i: 43 + 3 * i] = 4  # a staircase over tiles (2, 0), (2, 1), (2, 2)
    labels[5:10, 5:10] = 5
    out = tmp_path / "objects.parquet"
    inputs = MeasureInputs(labels=labels, image=None, pixel_size_um=(1.0, 1.0), channel_names=(),
                           brightfield_rgb=False)
    assert measure_objects(inputs, out, block=64, margin=margin, threads=2) == 5
    table = pd.read_parquet(out).set_index("id").sort_index()
    ref = pd.DataFrame(regionprops_table(labels.astype(np.int32), properties=("label", "area", "perimeter",
                                                                              "solidity"))).set_index("label")
    np.testing.assert_array_equal(table.index, ref.index)
    np.testing.assert_array_equal(table["area_px"], ref["area"])
    np.testing.assert_allclose(table["perimeter_um"], ref["perimeter"], rtol=1e-12)
    np.testing.assert_allclose(table["solidity"], ref["solidity"], rtol=1e-12)



def test_seam_pixels_give_each_object_once_whole_when_it_stops_continuing():
    """Random pieces (objects spread over several pieces) popped against random 'continuing' sets: an object
    comes out exactly once, with all its pixels and their values, in the pop after it leaves the set."""
    from sparseseg.tiling.seams import SeamPiece, SeamPixels, join_pieces

    rng = np.random.default_rng(7)
    seams, pixels_of, open_ids, popped = SeamPixels(), {}, set(), {}
    for step in range(40):
        objects = np.unique([k for k in rng.integers(1, 200, rng.integers(1, 8)) if k not in popped])  # ids unique
        counts = rng.integers(1, 30, objects.size)
        rows, cols = rng.integers(0, 10**6, counts.sum()), rng.integers(0, 10**6, counts.sum())
        seams.add(SeamPiece(objects, counts, rows, cols, np.stack([rows % 251, cols % 241])))
        for k, part in zip(objects, np.split(np.column_stack([rows, cols]), np.cumsum(counts)[:-1])):
            pixels_of.setdefault(int(k), []).append(part)
        open_ids |= set(objects.tolist())
        continuing = np.array([k for k in open_ids if rng.random() < 0.6] if step < 39 else [], np.int64)
        done = seams.pop_complete(continuing)
        finished = open_ids - set(continuing.tolist())
        if not finished:
            assert done == []
            continue
        ids, rows, cols, values = join_pieces(done)
        assert set(ids.tolist()) == finished and not finished & set(popped)
        np.testing.assert_array_equal(values, np.stack([rows % 251, cols % 241]))
        for k in finished:
            got = np.column_stack([rows[ids == k], cols[ids == k]])
            expected = np.concatenate(pixels_of.pop(k))
            np.testing.assert_array_equal(got[np.lexsort(got.T)], expected[np.lexsort(expected.T)])
            popped[k] = step
        open_ids -= finished
    assert not seams.pieces and not pixels_of  # all popped at the end, nothing held
