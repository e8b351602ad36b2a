"""Cell classes: classified points as training labels, the class head, and per-object classes in `segment`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from scipy import ndimage as ndi
import tifffile
import torch
import zarr
from conftest import DATA, DSB

from sparseseg.annotations.model import BACKGROUND, FIRST_OBJECT, PatchAnnotation
from sparseseg.annotations.points import (
    PointSet,
    class_indices,
    cluster_labels,
    point_filtered_labels,
    point_labels,
    read_points_csv,
)
from sparseseg.annotations.targets import compute_targets
from sparseseg.cli import main
from sparseseg.errors import InputError
from sparseseg.infer.predictor import Predictor
from sparseseg.instances.dynamics import flows_to_labels
from sparseseg.ingest import ingest
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.losses import class_loss
from sparseseg.metrics.points import TypedCounts, class_counts, match_points, typed_counts
from sparseseg.model.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from sparseseg.model.normalize import slide_normalization
from sparseseg.model.unet import with_class_head
from sparseseg.segment import SegmentOptions, segment_slide
from sparseseg.segment.records import class_sums
from sparseseg.segment.write import object_class_probabilities

BRCA = DATA / "brca_m2c"
CLASSES = ("lymphocyte", "stromal", "tumour")


def test_points_become_disks_voronoi_background_and_classes():
    points = PointSet(np.array([[10.0, 10.0], [10.0, 40.0], [45.0, 25.0]]), ("tumour", "lymphocyte", ""))
    partial, classes = point_labels((60, 60), points.yx, 3, class_indices(points, {"lymphocyte": 0, "tumour": 1}))
    # each point is its own object, a disk of radius 3 around it
    assert partial[10, 10] != partial[10, 40] and min(partial[10, 10], partial[10, 40]) >= FIRST_OBJECT
    assert (partial == partial[10, 10]).sum() == 29  # pixel centres within 3 px
    # the Voronoi edge between the two top points (x = 25) is background, away from the disks
    assert partial[10, 25] == BACKGROUND and partial[0, 25] == BACKGROUND
    assert partial[10, 12] == partial[10, 10] and partial[10, 17] == 0  # the rest stays unknown
    # classes on the classified disks only
    assert classes[10, 10] == 2 and classes[10, 40] == 1 and classes[45, 25] == 0 and classes[30, 30] == 0
    targets = compute_targets(PatchAnnotation(partial=partial, classes=classes))
    assert targets.classes[10, 10] == 1 and targets.classes[10, 40] == 0 and targets.classes[45, 25] == -1
    assert not targets.valid.any()  # a disk is no outline: nothing enters the valid distance set


def test_point_filtered_pseudo_labels_keep_objects_holding_one_click():
    objects = np.zeros((60, 60), np.uint32)
    objects[5:15, 5:15] = 1     # one click: kept whole
    objects[5:15, 30:50] = 2    # two clicks: a merge, left unknown with a disk per click
    objects[40:50, 40:50] = 3   # no click: unknown (a missed annotation or a false object)
    clicks = np.array([[10.0, 10.0], [10.0, 34.0], [10.0, 46.0], [45.0, 10.0]])  # the last in no object
    pseudo = point_filtered_labels(objects, clicks, radius_px=2)
    kept = pseudo.partial[10, 10]
    assert pseudo.complete == {kept} and pseudo.point_of[kept] == 0
    assert (pseudo.partial == kept).sum() == 100 and (pseudo.partial[4, 5:15] == BACKGROUND).all()
    # every other click is a small disk of its own, never on background
    disks = {int(pseudo.partial[int(y), int(x)]) for y, x in clicks[1:]}
    assert len(disks) == 3 and min(disks) >= FIRST_OBJECT and kept not in disks
    assert {pseudo.point_of[d] for d in disks} == {1, 2, 3}
    assert (pseudo.partial == pseudo.partial[10, 34]).sum() == 13
    # the merged object's other pixels and the unclicked object stay unknown, with a margin
    assert pseudo.partial[10, 40] == 0 and (pseudo.partial[40:50, 40:50] == 0).all() and pseudo.partial[39, 45] == 0
    # background far from every click and object; unknown around a leftover click (no outline claimed)
    assert pseudo.partial[30, 25] == BACKGROUND and pseudo.partial[45, 14] == 0
    targets = compute_targets(PatchAnnotation(partial=pseudo.partial))
    assert targets.valid[10, 10] and not targets.valid[10, 34]  # the kept object has exact distances, disks do not


def test_cluster_labels_give_clicked_nuclei_their_extent_and_split_touching_ones():
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:80, :80]
    image = np.full((80, 80, 3), (230.0, 190.0, 210.0))
    centres = [(15, 15), (15, 60), (55, 30), (55, 41)]  # the last two touch
    nuclei = np.zeros((80, 80), np.int64)
    for k, (cy, cx) in enumerate(centres, start=1):
        nuclei[(yy - cy) ** 2 + (xx - cx) ** 2 <= 36] = k
    image[nuclei > 0] = (90.0, 40.0, 120.0)
    image += rng.normal(0, 8, image.shape)
    clicks = np.array(centres, np.float64) + rng.uniform(-1.5, 1.5, (4, 2))
    partial = cluster_labels(image, clicks, radius_px=2, reach_px=12)
    ids = [int(partial[int(y), int(x)]) for y, x in clicks]
    assert len(set(ids)) == 4 and min(ids) >= FIRST_OBJECT
    for k, obj in enumerate(ids, start=1):
        mask = partial == obj
        assert (mask & (nuclei == k)).sum() >= 0.8 * (nuclei == k).sum()  # far more than the click's disk
        assert not (mask & (nuclei == 0)).any()                          # no background pixel
        assert (mask & (nuclei > 0) & (nuclei != k)).sum() < 0.15 * (nuclei == k).sum()  # Voronoi split
    far = ndi.distance_transform_edt(nuclei == 0) > 4
    assert (partial[far] == BACKGROUND).mean() > 0.9 and not (partial[nuclei > 0] == BACKGROUND).any()


def test_hovernet_typed_f_pairs_regardless_of_class_and_charges_typing_errors_twice():
    truth = np.array([[0, 0], [0, 20], [0, 40], [0, 60], [30, 0]], float)
    truth_class = np.array(["a", "a", "b", "b", "a"])
    predicted = np.array([[1, 0], [0, 21], [1, 40], [0, 61], [60, 60]], float)  # the last one unpaired
    predicted_class = np.array(["a", "b", "b", "b", "b"])
    counts = typed_counts(match_points(predicted, truth, radius=3), predicted_class, truth_class, ("a", "b"))
    assert counts["a"] == TypedCounts(tp=1, fp=0, fn=1, fp_d=0, fn_d=1)
    assert counts["b"] == TypedCounts(tp=2, fp=1, fn=0, fp_d=1, fn_d=0)
    assert counts["a"].f1 == pytest.approx(2 / (2 + 2 + 1)) and counts["b"].f1 == pytest.approx(4 / (4 + 2 + 1))
    # the per-class F that matches each class's cells alone does not see the typing error the same way
    plain = class_counts(predicted, predicted_class, truth, truth_class, ("a", "b"), radius=3)
    assert plain["a"].f1 > counts["a"].f1 and plain["b"].f1 > counts["b"].f1


def test_clusters_encoding_gives_each_clicked_cell_its_extent_and_class(tmp_path):
    """``--point-encoding clusters``: from a folder of images with point CSVs, each click's object is its colour
    cluster (much larger than a click's disk) and carries the click's class; slides are refused in one line."""
    from sparseseg.train.data import SlideSource, folder_sources, label_point_sources

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    image = sorted((BRCA / "images").glob("*.png"))[0]
    shutil.copy(image, tmp_path / "images" / "cells.png")
    shutil.copy(BRCA / "points" / f"{image.stem}.csv", tmp_path / "annotations" / "cells.csv")
    points = read_points_csv(tmp_path / "annotations" / "cells.csv")
    sizes = {}
    for encoding in ("voronoi", "clusters"):
        sources = folder_sources(tmp_path / "images", tmp_path / "annotations")
        label_point_sources(sources, 0.5, CLASSES, encoding)
        patch = sources[0].read_annotation((slice(None), slice(None)))
        ids = patch.partial[points.yx[:, 0].astype(int), points.yx[:, 1].astype(int)]
        assert (ids >= FIRST_OBJECT).all()
        sizes[encoding] = np.bincount(patch.partial.ravel())[FIRST_OBJECT:].mean()
        for i, name in zip(ids, points.classes):
            assert (patch.classes[patch.partial == i] == CLASSES.index(name) + 1).all()
    assert sizes["clusters"] > 2 * sizes["voronoi"]
    slide = tmp_path / "cells.ome.zarr"
    assert main(["ingest", str(image), str(slide), "--pixel-size", "0.5", "--tissue", "none", "-q"]) == 0
    clicks = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [float(x), float(y)]},
               "properties": {"classification": {"name": name}}} for (y, x), name in zip(points.yx[:5], points.classes)]
    (tmp_path / "clicks.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": clicks}))
    assert main(["annotations", "import", str(slide), str(tmp_path / "clicks.geojson")]) == 0
    with pytest.raises(InputError, match="clusters needs the whole image"):
        label_point_sources([SlideSource(slide)], 0.5, CLASSES, "clusters")


def test_points_csv_is_read_and_bad_rows_are_refused_with_the_line(tmp_path):
    name = sorted((BRCA / "points").glob("*.csv"))[0]
    points = read_points_csv(name)
    assert len(points.yx) > 50 and set(points.class_names) <= set(CLASSES)
    bad = tmp_path / "bad.csv"
    bad.write_text("y,x,class\n3,4,tumour\nnan,5,stromal\n")
    with pytest.raises(InputError, match="line 3"):
        read_points_csv(bad)
    bad.write_text("row,col\n3,4\n")
    with pytest.raises(InputError, match="y,x"):
        read_points_csv(bad)
    bad.write_text("y,x\n3,400\n")
    with pytest.raises(InputError, match="outside"):
        read_points_csv(bad, (100, 100))


def test_class_loss_reads_only_known_pixels_and_balances_classes():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    classes = torch.full((2, 16, 16), -1, dtype=torch.int64)
    classes[0, :2, :] = 0      # 32 pixels of class 0
    classes[0, 5, 5] = 2       # one pixel of class 2
    loss = class_loss(logits, classes)
    loss.backward()
    grad = logits.grad.abs().sum(1)
    assert (grad[classes < 0] == 0).all() and (grad[classes >= 0] > 0).all()
    # balanced: the single class-2 pixel weighs as much as all class-0 pixels together
    assert grad[0, 5, 5] > 10 * grad[0, 0, 0]
    assert float(class_loss(logits, torch.full_like(classes, -1)).detach()) == 0.0


def test_train_from_classified_points_writes_a_class_head_and_init_keeps_the_body(tmp_path):
    out = tmp_path / "typed.pt"
    code = main(["train", "--images", str(BRCA / "images"), "--annotations", str(BRCA / "points"), "--pixel-size",
                 "0.5", "--out", str(out), "--epochs", "1", "--patch", "64", "--batch", "4", "--depth", "2",
                 "--width", "8", "--no-calibrate", "-q"])
    assert code == 0
    state = load_checkpoint(out)
    assert state["classes"] == list(CLASSES) and state["config"]["classes"] == 3
    assert state["history"][-1]["val_loss"] > 0
    image = iio.imread(sorted((BRCA / "images").glob("*.png"))[0])[..., :3].transpose(2, 0, 1)
    fields = Predictor.from_checkpoint(out, device="cpu").fields(image)
    assert fields.shape[0] == 6 and np.allclose(fields[3:].sum(0), 1, atol=1e-5)
    # fine-tuning on data without classes keeps the class head; on other classes it starts a new head
    model = model_from_checkpoint(state)
    fresh = with_class_head(model, 2)
    body = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert all(torch.equal(fresh.state_dict()[k], v) for k, v in body.items())
    assert torch.equal(fresh.head.weight[:3], model.head.weight[:3]) and fresh.head.weight.shape[0] == 5


@pytest.fixture(scope="module")
def typed_model(fluo_model, tmp_path_factory) -> Path:
    """The test nuclei model with a made-up 3-class head (no training): class probabilities that vary across the
    image and between objects, which is all the exactness of per-object classes needs."""
    state = load_checkpoint(fluo_model)
    torch.manual_seed(1)
    model = with_class_head(model_from_checkpoint(state), 3)
    with torch.no_grad():  # class 0 where the distance is high (object centres), class 2 where it is low
        model.head.weight[3:].normal_(0, 0.3)
        model.head.weight[3] += model.head.weight[0]
        model.head.weight[5] -= model.head.weight[0]
        model.head.bias[3] = model.head.bias[0] - 3.0
    out = tmp_path_factory.mktemp("typed") / "typed.pt"
    meta = {k: v for k, v in state.items() if k not in ("format", "config", "state_dict", "halo", "downsampling",
                                                         "optimizer")}
    save_checkpoint(out, model, None, **{**meta, "classes": list(CLASSES)})
    return out


def _slide(folder: Path, ngff: str = "0.4") -> Path:
    image = iio.imread(DSB / "images" / "fluo_0402a81e.png")
    mosaic = np.vstack([np.hstack([image, image[:, ::-1]])] * 2)
    tifffile.imwrite(folder / "mosaic.tif", mosaic, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    return ingest(folder / "mosaic.tif", folder / "slide.ome.zarr", chunk=128, tissue="none", ngff=ngff)


@pytest.mark.parametrize("ngff", ["0.4", "0.5"])
def test_the_class_pyramid_and_the_labels_pass_the_ngff_validator(typed_model, tmp_path, ngff):
    """ome-zarr-models (the NGFF spec as pydantic models) accepts the labels container, the instance pyramid and
    the class pyramid with its colours, in the slide's own NGFF version."""
    if ngff == "0.4":
        from ome_zarr_models.v04 import ImageLabel, Labels
    else:
        from ome_zarr_models.v05 import ImageLabel, Labels
    slide = _slide(tmp_path, ngff)
    segment_slide(slide, typed_model, SegmentOptions(block=256, tile=256, progress=False, workers=1))
    root = zarr.open_group(slide, mode="r")
    assert set(Labels.from_zarr(root["labels"]).attributes.model_dump(mode="json")["labels"] if ngff == "0.4" else
               Labels.from_zarr(root["labels"]).ome_attributes.labels) >= {"cells", "cells_classes"}
    ImageLabel.from_zarr(root["labels/cells"])
    ImageLabel.from_zarr(root["labels/cells_classes"])
    assert root["labels/cells_classes/0"].dtype == np.uint8 and root["labels/cells_classes/0"][...].max() >= 2


@pytest.mark.parametrize("block", [64, 256])
def test_per_object_classes_equal_the_whole_images_bitwise_at_any_block_size(typed_model, tmp_path, block):
    slide = _slide(tmp_path)
    # one torch thread in the worker and here: oneDNN's convolutions give other last bits with other thread counts
    result = segment_slide(slide, typed_model, SegmentOptions(block=block, tile=256, progress=False, workers=1,
                                                              threads=1))
    root = zarr.open_group(slide, mode="r")
    labels = root["labels/cells/0"][...]
    probabilities = root["labels/cells/object_classes"][...]
    assert root["labels/cells/object_classes"].attrs["classes"] == list(CLASSES)
    assert root["labels/cells"].attrs["sparseseg"]["classes"] == list(CLASSES)
    assert probabilities.shape == (result.n_objects + 1, 3)
    # the whole image at once: fields, then each object's class sums over its pixels
    info = open_omezarr_slide(slide)
    predictor = Predictor.from_checkpoint(typed_model, device="cpu")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        fields = predictor.fields(np.asarray(info.levels[0]), slide_normalization(info.levels), 256)
    finally:
        torch.set_num_threads(threads)
    whole = flows_to_labels(fields[0], fields[1:3], predictor.params)
    ids = np.unique(whole[whole > 0])
    assert len(ids) == result.n_objects > 20
    varied = set()
    for k in ids:
        rows, cols = np.nonzero(whole == k)
        mine = labels[rows[0], cols[0]]
        assert (labels[rows, cols] == mine).all() and (labels == mine).sum() == rows.size
        expected = object_class_probabilities(class_sums(fields[3:], rows, cols)[None])[0]
        assert np.array_equal(probabilities[mine], expected), f"object {k}: {probabilities[mine]} != {expected}"
        varied.add(int(expected.argmax()))
    assert len(varied) >= 2  # the test would not see a wrong class otherwise
    # the class pyramid: each object's pixels hold 1 + its most probable class, background 0
    classes = root["labels/cells_classes/0"][...]
    assert np.array_equal(classes, np.concatenate([[0], probabilities[1:].argmax(1) + 1]).astype(np.uint8)[labels])
    label_attrs = root["labels/cells_classes"].attrs
    image_label = label_attrs.get("image-label") or label_attrs["ome"]["image-label"]
    assert [p["class"] for p in image_label["properties"]] == ["background", *CLASSES]
    assert [c["label-value"] for c in image_label["colors"]] == [0, 1, 2, 3]
    assert image_label["colors"][0]["rgba"][3] == 0  # background transparent


def test_a_model_without_classes_removes_the_stale_class_pyramid_on_overwrite(typed_model, fluo_model, tmp_path):
    slide = _slide(tmp_path)
    segment_slide(slide, typed_model, SegmentOptions(block=256, tile=256, progress=False, workers=1))
    with pytest.raises(InputError, match="cells_classes"):
        from sparseseg.segment.plan import plan_segment

        shutil.rmtree(slide / "labels" / "cells")  # only the class pyramid is left to refuse
        plan_segment(slide, typed_model, SegmentOptions(block=256, tile=256))
    segment_slide(slide, fluo_model, SegmentOptions(block=256, tile=256, progress=False, workers=1, overwrite=True))
    root = zarr.open_group(slide, mode="r")
    assert "cells_classes" not in root["labels"] and "object_classes" not in root["labels/cells"]
    assert "cells_classes" not in (root["labels"].attrs.get("labels") or root["labels"].attrs["ome"]["labels"])


def test_measure_and_geojson_carry_each_objects_class(typed_model, tmp_path):
    import pandas as pd

    from sparseseg.export.geojson import export_slide_geojson
    from sparseseg.measure.run import measure_slide

    slide = _slide(tmp_path)
    result = segment_slide(slide, typed_model, SegmentOptions(block=256, tile=256, progress=False, workers=1))
    probabilities = zarr.open_group(slide, mode="r")["labels/cells/object_classes"][...]
    summary = measure_slide(slide, regions="grid:50um", out=tmp_path / "m", progress=False)
    page = (tmp_path / "m" / "report.html").read_text()
    assert "Cell types" in page and "class_overlay.png" in page
    assert all((tmp_path / "m" / f"density_{c}.png").is_file() and f"density_{c}.png" in page for c in CLASSES)
    overlay = iio.imread(tmp_path / "m" / "class_overlay.png")[..., :3]
    assert len({tuple(v) for v in overlay.reshape(-1, 3) if tuple(v) in {(160, 90, 160), (150, 200, 150), (200, 0, 0)}}) >= 2
    objects = pd.read_parquet(tmp_path / "m" / "objects.parquet")
    assert len(objects) == result.n_objects
    best = probabilities[objects["id"].to_numpy()].argmax(1)
    assert list(objects["class"]) == [CLASSES[i] for i in best]
    assert np.allclose(objects["class_probability"], probabilities[objects["id"].to_numpy()].max(1))
    assert np.allclose(objects[[f"p_{c}" for c in CLASSES]].sum(axis=1), 1, atol=1e-3)
    regions = pd.read_csv(tmp_path / "m" / "regions.csv")
    for c in CLASSES:  # per-region class counts add up to the cells of each class, and to every region's cells
        assert regions[f"{c}_cells"].sum() == (objects["class"] == c).sum() == summary["classes"][c]["cells"]
    assert (regions[[f"{c}_cells" for c in CLASSES]].sum(axis=1) == regions["cells"]).all()
    with_cells = regions[regions["cells"] > 0]
    assert np.allclose(with_cells[[f"{c}_fraction" for c in CLASSES]].sum(axis=1), 1)
    # QuPath GeoJSON: each detection's classification is its class, with the class colour and probabilities
    out = tmp_path / "cells.geojson"
    assert export_slide_geojson(slide, "cells", out) == result.n_objects
    features = json.loads(out.read_text())["features"]
    by_id = dict(zip(objects["id"], objects["class"]))
    colours = {}
    for f in features:
        kind = f["properties"]["classification"]
        assert kind["name"] == by_id[f["properties"]["id"]]
        colours.setdefault(kind["name"], tuple(kind["color"]))
        assert set(f["properties"]["measurements"]) >= {"Class probability", *(f"Probability: {c}" for c in CLASSES)}
    assert len(set(colours.values())) == len(colours) >= 2
    # accuracy against annotated cells: the objects' own centroids, 3 dropped, 2 shifted by 1 um, 2 relabelled
    truth = objects[["centroid_y_px", "centroid_x_px", "class"]].iloc[3:].copy()
    truth.iloc[:2, 0] += 2.0  # 1 um at 0.5 um/px: still within 3 um
    other = {c: CLASSES[(CLASSES.index(c) + 1) % 3] for c in CLASSES}
    truth.iloc[2:4, 2] = [other[c] for c in truth.iloc[2:4, 2]]
    truth.columns = ["y", "x", "class"]
    truth.to_csv(tmp_path / "truth.csv", index=False)
    scored = measure_slide(slide, out=tmp_path / "m3", progress=False, report=False,
                           truth_points=tmp_path / "truth.csv")["point_accuracy"]
    n = len(objects)
    assert scored["precision"] == pytest.approx((n - 3) / n) and scored["recall"] == 1.0
    table = pd.read_csv(tmp_path / "m3" / "point_accuracy.csv").set_index("class")
    assert table.loc["all", "tp"] == n - 3 and table.loc[list(CLASSES), "fp"].sum() == 3 + 2
    assert table.loc[list(CLASSES), "tp"].sum() == n - 5 and scored["mean_class_f1"] < 1
    # HoVer-Net's F_c charges the 2 relabelled pairs twice as much as the 3 missing points
    relabelled = set(truth.iloc[2:4, 2]) | {by_id[i] for i in objects["id"].iloc[5:7]}
    assert any(scored["hovernet_f_c"][c] < scored["class_f1"][c] for c in relabelled)
    for c in CLASSES:
        if c in relabelled:
            assert scored["hovernet_f_c"][c] <= scored["class_f1"][c]
        else:  # no typing error: both charge the same missing points
            assert scored["hovernet_f_c"][c] == pytest.approx(scored["class_f1"][c])
        assert table.loc[c, "hovernet_f_c"] == pytest.approx(scored["hovernet_f_c"][c])
    # a class table that no longer matches the labels is refused, naming it
    group = zarr.open_group(slide / "labels" / "cells", mode="r+")
    group["object_classes"].resize((3, 3))
    with pytest.raises(InputError, match="object_classes"):
        measure_slide(slide, out=tmp_path / "m2", progress=False, report=False)


def test_bundled_models_by_name_and_the_default_model(tmp_path, capsys):
    from sparseseg.model.registry import BUNDLED, resolve_model

    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    default = [r for r in rows if r["default"]]
    assert [r["name"] for r in default] == ["nuclei_he"] and default[0]["pixel_size_um"] == 0.5
    assert resolve_model("nuclei_he") == resolve_model(None) == BUNDLED / "nuclei_he.pt"
    with pytest.raises(InputError, match="nuclei_he"):
        resolve_model("no_such_model")
    # `segment` without --model segments with the bundled H&E model
    image = sorted((BRCA / "images").glob("*.png"))[0]
    slide = tmp_path / "brca.ome.zarr"
    assert main(["ingest", str(image), str(slide), "--pixel-size", "0.5", "--tissue", "none", "-q"]) == 0
    assert main(["segment", str(slide), "--block", "512", "-q"]) == 0
    attrs = zarr.open_group(slide / "labels" / "cells", mode="r").attrs["sparseseg"]
    assert attrs["objects"] > 50 and attrs["model"].endswith("nuclei_he.pt")


def test_classified_qupath_points_and_objects_train_a_class_head_from_a_slide(tmp_path):
    """QuPath GeoJSON: classified points (one click per cell) and a classified polygon become disks + Voronoi
    background and class labels on the slide; `train --data` learns a class head from them."""
    from sparseseg.annotations.store import read_annotation_patch
    from sparseseg.train.data import SlideSource

    image = sorted((BRCA / "images").glob("*.png"))[0]
    slide = tmp_path / "brca.ome.zarr"
    assert main(["ingest", str(image), str(slide), "--pixel-size", "0.5", "--tissue", "none", "-q"]) == 0
    points = read_points_csv(BRCA / "points" / f"{image.stem}.csv")
    features = [{"type": "Feature", "geometry": {"type": "Point", "coordinates": [x, y]},
                 "properties": {"objectType": "annotation", "classification": {"name": c.capitalize()}}}
                for (y, x), c in zip(points.yx, points.classes)]
    features.append({"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[[2, 2], [12, 2], [12, 12],
                                                                                         [2, 12], [2, 2]]]},
                     "properties": {"classification": {"name": "Necrosis"}}})
    geojson = tmp_path / "cells.geojson"
    geojson.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert main(["annotations", "import", str(slide), str(geojson)]) == 0
    source = SlideSource(slide)
    names = ("Lymphocyte", "Necrosis", "Stromal", "Tumour")
    assert source.class_names == names
    source.label_points(0.5, {n: i for i, n in enumerate(names)})
    patch = read_annotation_patch(slide, (slice(0, 200), slice(0, 200)), source.class_ids, 3.0)
    assert (patch.classes[2:12, 2:12] == 2).all()  # the classified polygon
    inside = [(int(y), int(x), c) for (y, x), c in zip(points.yx, points.classes) if 15 < y < 185 and 15 < x < 185]
    assert inside and all(patch.classes[y, x] == names.index(c.capitalize()) + 1 for y, x, c in inside)
    assert all(patch.partial[y, x] >= FIRST_OBJECT for y, x, _ in inside)
    assert (patch.partial == BACKGROUND).sum() > 200  # Voronoi edges
    # another window over the same place gives the same labels there (points around the window take part)
    shifted = read_annotation_patch(slide, (slice(50, 250), slice(40, 240)), source.class_ids, 3.0)
    a, b = patch.partial[50:200, 40:200], shifted.partial[:150, :160]
    assert np.array_equal(a == BACKGROUND, b == BACKGROUND) and np.array_equal(a > 0, b > 0)
    assert np.array_equal(patch.classes[50:200, 40:200], shifted.classes[:150, :160])
    # calibration scores instances against outlines only: the disks made from clicks are not among them
    assert set(np.unique(source.read_outlines((slice(0, 200), slice(0, 200)))).tolist()) == {0, 2}
    out = tmp_path / "typed.pt"
    assert main(["train", "--data", str(slide), "--out", str(out), "--epochs", "1", "--patch", "64", "--batch", "4",
                 "--depth", "2", "--width", "8", "--no-calibrate", "-q"]) == 0
    assert load_checkpoint(out)["classes"] == list(names)


def test_a_label_image_with_a_class_table_trains_classes(tmp_path):
    """``annotations/NAME.tif`` (partial encoding) with ``NAME.csv`` (label,class) beside it: classified objects,
    and objects missing from the table keep their outline with the class unknown."""
    from sparseseg.annotations.model import encode_dense
    from sparseseg.train.data import folder_sources, label_point_sources

    (tmp_path / "images").mkdir()
    (tmp_path / "annotations").mkdir()
    shutil.copy(DSB / "images" / "he_65c8527c.png", tmp_path / "images")
    partial = encode_dense(tifffile.imread(DSB / "labels" / "he_65c8527c.tif"))
    tifffile.imwrite(tmp_path / "annotations" / "he_65c8527c.tif", partial)
    ids = [int(k) for k in np.unique(partial[partial >= FIRST_OBJECT])]
    table = {k: ("tumour" if i % 2 else "lymphocyte") for i, k in enumerate(ids[:-5])}  # the last 5: no class
    with open(tmp_path / "annotations" / "he_65c8527c.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["label", "class"])
        writer.writerows(table.items())
    sources = folder_sources(tmp_path / "images", tmp_path / "annotations")
    assert len(sources) == 1 and sources[0].class_names == ("lymphocyte", "tumour")
    label_point_sources(sources, 0.5, ("lymphocyte", "tumour"))
    classes = sources[0].read_annotation((slice(None), slice(None))).classes
    for k in ids:
        expected = {"lymphocyte": 1, "tumour": 2}.get(table.get(k, ""), 0)
        assert (classes[partial == k] == expected).all()
    assert (classes[partial <= BACKGROUND] == 0).all()
    out = tmp_path / "typed.pt"
    assert main(["train", "--images", str(tmp_path / "images"), "--annotations", str(tmp_path / "annotations"),
                 "--out", str(out), "--epochs", "1", "--patch", "64", "--batch", "4", "--depth", "2", "--width", "8",
                 "--no-calibrate", "-q"]) == 0
    assert load_checkpoint(out)["classes"] == ["lymphocyte", "tumour"]
    (tmp_path / "annotations" / "he_65c8527c.csv").write_text("label,class\nseven,tumour\n")
    with pytest.raises(InputError, match="line 2"):
        folder_sources(tmp_path / "images", tmp_path / "annotations")


def test_a_clicked_cells_disk_never_takes_the_class_of_an_object_elsewhere(tmp_path):
    """Disks get window-local ids; a classified object far away with the same id must not lend them its class."""
    from sparseseg.annotations.store import read_annotation_patch

    image = sorted((BRCA / "images").glob("*.png"))[0]
    slide = tmp_path / "brca.ome.zarr"
    assert main(["ingest", str(image), str(slide), "--pixel-size", "0.5", "--tissue", "none", "-q"]) == 0
    boxes = [[[x, 300], [x + 8, 300], [x + 8, 308], [x, 308], [x, 300]] for x in range(10, 130, 12)]
    features = [{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [b]},
                 "properties": {"classification": {"name": "Tumour"}}} for b in boxes]
    features.append({"type": "Feature", "geometry": {"type": "Point", "coordinates": [50.5, 50.5]},
                     "properties": {}})  # an unclassified click, far from the objects
    (tmp_path / "a.geojson").write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    assert main(["annotations", "import", str(slide), str(tmp_path / "a.geojson")]) == 0
    patch = read_annotation_patch(slide, (slice(0, 120), slice(0, 120)), np.array([0]), 3.0)
    assert patch.partial[50, 50] >= FIRST_OBJECT  # its disk
    assert (patch.classes == 0).all()  # no object in this window, and the click has no class


def test_a_typed_segmentation_without_any_cell_is_measured_with_zero_counts(tmp_path):
    """A blank slide (no tissue found at ingest, so every block is skipped) segmented by the bundled typed model
    has no object: measure still writes its tables, with every class counted 0 (it used to fail reading the
    class column of an empty objects table)."""
    tifffile.imwrite(tmp_path / "blank.tif", np.full((256, 256, 3), 245, np.uint8), photometric="rgb",
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    slide = ingest(tmp_path / "blank.tif", tmp_path / "blank.ome.zarr")
    assert main(["segment", str(slide), "-q", "--workers", "1"]) == 0
    assert main(["measure", str(slide), "--out", str(tmp_path / "m"), "-q"]) == 0
    summary = json.loads((tmp_path / "m" / "metrics.json").read_text())
    assert summary["cells"] == 0 and set(summary["classes"]) == {"lymphocyte", "stromal", "tumour"}
    assert all(c["cells"] == 0 for c in summary["classes"].values())
