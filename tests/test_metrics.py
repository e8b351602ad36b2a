"""Accuracy metrics agree with StarDist's independent implementation on real, perturbed DSB labels."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DSB

from helpers import perturbations
from sparseseg.metrics.matching import THRESHOLDS, matching, summarize

stardist_matching = pytest.importorskip("stardist.matching")


@pytest.mark.parametrize("name", ["fluo_0402a81e", "he_0121d675", "he_65c8527c"])
def test_metrics_match_stardist_on_real_perturbed_predictions(name):
    truth = tifffile.imread(DSB / "labels" / f"{name}.tif").astype(np.int64)
    for pred in perturbations(truth, np.random.default_rng(0)):
        ours = matching(truth, pred)
        for mine, threshold in zip(ours, THRESHOLDS):
            ref = stardist_matching.matching(truth, pred, thresh=threshold)
            assert (mine.tp, mine.fp, mine.fn) == (ref.tp, ref.fp, ref.fn)
            for field, other in (("precision", "precision"), ("recall", "recall"), ("f1", "f1"),
                                 ("accuracy", "accuracy"), ("mean_matched_iou", "mean_matched_score"),
                                 ("panoptic_quality", "panoptic_quality")):
                assert getattr(mine, field) == pytest.approx(float(getattr(ref, other)), abs=1e-6)


def test_perfect_and_empty_predictions():
    truth = tifffile.imread(DSB / "labels" / "he_65c8527c.tif")
    perfect = summarize(matching(truth, truth))
    assert perfect == {"f1@0.5": 1.0, "pq@0.5": 1.0, "mAP": 1.0}
    empty = summarize(matching(truth, np.zeros_like(truth)))
    assert empty == {"f1@0.5": 0.0, "pq@0.5": 0.0, "mAP": 0.0}


def test_median_diameter_is_the_diameter_of_the_median_area_disc():
    from skimage.draw import disk

    from sparseseg.metrics.sizes import median_diameter_px

    labels = np.zeros((200, 200), np.int32)
    for k, (centre, radius) in enumerate([((40, 40), 6), ((100, 100), 10), ((160, 160), 20)], start=1):
        labels[disk(centre, radius, shape=labels.shape)] = k
    area = (labels == 2).sum()
    assert median_diameter_px(labels) == np.sqrt(4 * area / np.pi)
    assert abs(median_diameter_px(labels) - 20) < 0.5
    assert median_diameter_px(np.zeros((5, 5), np.int32)) == 0.0
