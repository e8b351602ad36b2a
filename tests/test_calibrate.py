"""Sparse accuracy, calibration of the instance parameters, and their use by `segment` (flags override)."""

from __future__ import annotations


import numpy as np
import pytest
import tifffile
import zarr
from conftest import DSB
from helpers import perturbations
from skimage.measure import label as connected_pieces

from sparseseg.annotations.model import encode_dense
from sparseseg.annotations.sparsify import sparsify_dense
from sparseseg.cli import main
from sparseseg.infer.predictor import Predictor
from sparseseg.instances.dynamics import InstanceParams
from sparseseg.metrics.matching import matching
from sparseseg.metrics.sparse import sparse_counts
from sparseseg.model.checkpoint import load_checkpoint, update_checkpoint
from sparseseg.train.calibrate import calibrate_checkpoint
from sparseseg.train.data import folder_sources


@pytest.mark.parametrize("name", ["fluo_0402a81e", "he_65c8527c"])
def test_sparse_scores_count_annotated_pixels_only(name):
    truth = tifffile.imread(DSB / "labels" / f"{name}.tif").astype(np.int64)
    for pred in perturbations(truth, np.random.default_rng(1)):  # dense annotation: the usual matching
        dense = sparse_counts(pred, encode_dense(truth), min_object_px=1)
        assert dense.f1 == pytest.approx(matching(truth, pred)[0].f1)
    partial = sparsify_dense(truth, 0.2, seed=3).partial
    assert sparse_counts(truth, partial).f1 == 1.0  # the truth scores perfectly on any annotation of it
    unknown = partial == 0
    extra = truth.max() + 1 + np.arange(unknown.sum()) // 50  # junk objects where nobody annotated
    junk = truth.copy()
    junk[unknown & (truth == 0)] = extra[: (unknown & (truth == 0)).sum()]
    assert sparse_counts(junk, partial).f1 == 1.0  # unknown pixels never count as background
    wrong = np.where(partial == 1, 7777, truth)  # an object over the annotated background is a false positive
    assert sparse_counts(wrong, partial).f1 < 1.0


@pytest.fixture(scope="module")
def calibrated(fluo_model, fluo_training_folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("calibrated") / "model.pt"
    sources = folder_sources(fluo_training_folders["images"], fluo_training_folders["annotations"])
    result = calibrate_checkpoint(fluo_model, sources, out=out, device="cpu")
    return out, result


def test_calibration_never_scores_below_the_defaults_and_is_stored(calibrated, fluo_model):
    out, result = calibrated
    assert result.objects > 50 and result.settings > 20
    assert result.score >= result.default_score
    state = load_checkpoint(out)
    assert state["instance_params"] == {k: getattr(result.params, k) for k in state["instance_params"]}
    assert Predictor.from_checkpoint(out, device="cpu").params == result.params
    assert "instance_params" not in load_checkpoint(fluo_model) or fluo_model != out  # the source is untouched


def test_segment_uses_the_stored_parameters_and_flags_override_them(fluo_model, tmp_path):
    image = tifffile.imread(DSB / "labels" / "fluo_0402a81e.tif")  # any real-size slide will do for the plumbing
    from imageio import v3 as iio

    pixels = iio.imread(DSB / "images" / "fluo_0402a81e.png")
    src = tmp_path / "slide.tif"
    tifffile.imwrite(src, pixels, resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    assert main(["ingest", str(src), str(tmp_path / "s.ome.zarr"), "-q", "--tissue", "none"]) == 0
    strict = tmp_path / "strict.pt"
    update_checkpoint(fluo_model, strict, instance_params={**InstanceParams().__dict__, "distance_threshold": 1e6})
    slide = str(tmp_path / "s.ome.zarr")
    assert main(["segment", slide, "--model", str(strict), "--name", "stored", "-q"]) == 0
    assert main(["segment", slide, "--model", str(strict), "--name", "flag", "--distance-threshold", "0", "-q"]) == 0
    root = zarr.open_group(slide, mode="r")
    assert root["labels/stored/0"][...].max() == 0  # nothing is above the stored threshold
    flagged = root["labels/flag/0"][...]
    assert flagged.max() > 0.5 * image.max()
    assert root["labels/flag"].attrs["sparseseg"]["params"]["distance_threshold"] == 0


def test_every_label_is_one_connected_piece_on_real_predictions(fluo_model, tmp_path):
    from imageio import v3 as iio

    pixels = iio.imread(DSB / "images" / "fluo_0402a81e.png")
    mosaic = np.vstack([np.hstack([pixels, pixels[:, ::-1]])] * 2)
    labels = Predictor.from_checkpoint(fluo_model, device="cpu").instances(mosaic[None])
    assert labels.max() > 100
    pieces = connected_pieces(labels, background=0, connectivity=1)
    assert pieces.max() == labels.max()  # as many 4-connected pieces as objects: one each
    from sparseseg.instances.dynamics import instance_clusters

    output = Predictor.from_checkpoint(fluo_model, device="cpu").fields(mosaic[None])
    raw = instance_clusters(output[0], output[1:3])
    assert connected_pieces(raw, background=0, connectivity=1).max() > len(np.unique(raw)) - 1  # the fix mattered


def test_fine_tuning_keeps_the_calibrated_parameters_until_it_calibrates_again(calibrated, fluo_training_folders,
                                                                               tmp_path):
    model, result = calibrated
    command = ["train", "--images", fluo_training_folders["images"], "--annotations",
               fluo_training_folders["annotations"], "--init", str(model), "--epochs", "1", "--patch", "96", "-q"]
    assert main(command + ["--out", str(tmp_path / "kept.pt"), "--no-calibrate"]) == 0
    assert load_checkpoint(tmp_path / "kept.pt")["instance_params"] == load_checkpoint(model)["instance_params"]
    assert Predictor.from_checkpoint(tmp_path / "kept.pt", device="cpu").params == result.params
