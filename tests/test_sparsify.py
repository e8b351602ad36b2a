"""Sparse annotations generated from real dense ground truth satisfy the method's assumptions."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DSB

from sparseseg.annotations import compute_targets
from sparseseg.geometry.lattice import centre_distance, label_interfaces
from sparseseg.annotations.sparsify import gp_mask, objects_and_background, sparsify_dense

LABELS = tifffile.imread(DSB / "labels" / "he_0121d675.tif").astype(np.int64)


@pytest.mark.parametrize("fraction", [0.01, 0.05, 0.1, 0.25, 1.0])
def test_gp_mask_keeps_the_requested_fraction_deterministically(fraction):
    a = gp_mask((256, 320), fraction, seed=3)
    assert a.sum() == round(fraction * a.size)
    np.testing.assert_array_equal(a, gp_mask((256, 320), fraction, seed=3))
    if fraction < 1:
        assert not np.array_equal(a, gp_mask((256, 320), fraction, seed=4))


def test_gp_mask_scales_its_smoothness_with_the_pixel_size():
    """At a 4x finer pixel size the same physical blobs span 4x more pixels: fewer, larger parts."""
    from scipy import ndimage as ndi

    coarse = ndi.label(gp_mask((400, 400), 0.2, seed=1, pixel_size_um=2.0))[1]
    fine = ndi.label(gp_mask((400, 400), 0.2, seed=1, pixel_size_um=0.5))[1]
    assert fine < coarse


@pytest.mark.parametrize("fraction", [0.05, 0.1, 0.25])
def test_sparsified_real_labels_obey_the_theorem(fraction):
    annotation = sparsify_dense(LABELS, fraction, seed=0)
    known = annotation.partial > 0
    assert abs(known.mean() - fraction) < 1e-3
    truth = centre_distance(label_interfaces(LABELS, np.not_equal))
    targets = compute_targets(annotation)
    np.testing.assert_allclose(np.abs(targets.distance[targets.valid]), truth[targets.valid], atol=1e-6)
    assert targets.valid.sum() > 0
    for k in annotation.complete:
        assert (annotation.partial[LABELS == k - 1] == k).all()


def test_objects_and_background_subset():
    annotation = objects_and_background(LABELS, n_objects=10, seed=2, background_fraction=0.3)
    assert len(annotation.complete) == 10
    objects = annotation.partial >= 2
    assert set(np.unique(annotation.partial[objects])) == set(annotation.complete)
    background = annotation.partial == 1
    assert not (background & (LABELS > 0)).any()
    assert abs(background.sum() / (LABELS == 0).sum() - 0.3) < 0.01
    targets = compute_targets(annotation)
    assert targets.valid[objects].all()  # complete objects: exact targets everywhere inside
