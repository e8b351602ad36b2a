"""The Sketchpose theorem on random synthetic scenes, and the dense special case."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import random_scene, random_sparse_annotation
from sparseseg.annotations import PatchAnnotation, compute_targets
from sparseseg.geometry.lattice import centre_distance, dense_flow, label_interfaces


def true_distance(labels: np.ndarray) -> np.ndarray:
    """Distance from each pixel centre to the true boundaries (interfaces between different labels)."""
    return centre_distance(label_interfaces(labels, np.not_equal))


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_theorem_targets_equal_true_distance_on_valid_set(seed):
    rng = np.random.default_rng(seed)
    labels = random_scene(rng)
    truth = true_distance(labels)
    annotation = random_sparse_annotation(rng, labels)
    targets = compute_targets(annotation)
    d = targets.valid
    np.testing.assert_allclose(np.abs(targets.distance[d]), truth[d], atol=1e-6)
    assert (np.sign(targets.distance[d]) == np.where(labels[d] > 0, 1, -1)).all()
    strokes = targets.strokes
    assert (targets.lower_bound[strokes] <= truth[strokes] + 1e-6).all()
    assert not (d & ~strokes).any()


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_dense_annotation_makes_every_pixel_valid_with_omnipose_targets(seed):
    rng = np.random.default_rng(seed)
    labels = random_scene(rng)
    targets = compute_targets(PatchAnnotation.from_dense(labels))
    assert targets.valid.all()
    truth = true_distance(labels)
    signed = np.where(labels > 0, truth, -truth)
    np.testing.assert_allclose(targets.distance, signed, atol=1e-6)
    np.testing.assert_allclose(targets.lower_bound, truth, atol=1e-6)
    norms = np.hypot(*targets.flow)
    assert ((np.abs(norms - 1) < 1e-5) | (norms == 0)).all()
    assert (norms == 0).mean() < 0.05  # only medial-axis ties have no direction


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), pad=st.tuples(*[st.integers(0, 9)] * 4))
def test_dense_flow_is_the_dense_target_flow_inside_objects(seed, pad):
    """The cropped flow-QC shortcut equals the full target computation, objects at image edges included."""
    labels = np.pad(random_scene(np.random.default_rng(seed)), ((pad[0], pad[1]), (pad[2], pad[3])))
    expected = compute_targets(PatchAnnotation.from_dense(labels)).flow * (labels > 0)
    np.testing.assert_array_equal(dense_flow(labels), expected)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**32 - 1))
def test_dense_flow_of_many_packed_objects_is_the_whole_images(seed):
    """Many objects (touching, cut into pieces, one ringed by another, some at the image edge): the boxes
    packed into shelves give every object the flow of the whole image's distance transform, to the bit."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((150, 170), np.int32)
    for y in range(0, 150, 48):
        for x in range(0, 170, 56):
            scene = random_scene(rng)[: 150 - y, : 170 - x]
            labels[y:y + scene.shape[0], x:x + scene.shape[1]] = np.where(scene > 0, scene + labels.max(), 0)
    yy, xx = np.mgrid[:150, :170]
    radius = np.hypot(yy - 75, xx - 85)
    labels[(radius > 10) & (radius < 16)] = labels.max() + 1  # a ring around whatever lies inside it
    labels[radius <= 6] = labels.max() + 1
    expected = compute_targets(PatchAnnotation.from_dense(labels)).flow * (labels > 0)
    assert len(np.unique(labels)) > 15
    np.testing.assert_array_equal(dense_flow(labels), expected)


def test_flow_points_away_from_the_boundary_inside_a_disk():
    yy, xx = np.mgrid[:41, :41]
    disk = ((yy - 20) ** 2 + (xx - 20) ** 2 < 15**2).astype(np.int32)
    targets = compute_targets(PatchAnnotation.from_dense(disk))
    inside = (disk > 0) & (np.hypot(yy - 20, xx - 20) > 3)
    radial = np.stack([yy - 20, xx - 20]) / np.maximum(np.hypot(yy - 20, xx - 20), 1e-9)
    cosine = (targets.flow * -radial).sum(0)  # flow climbs the distance: towards the centre
    assert np.median(cosine[inside]) > 0.97  # a pixelated disk is only nearly round
    outside = (disk == 0) & (np.hypot(yy - 20, xx - 20) < 19)
    assert np.median((targets.flow * -radial).sum(0)[outside]) > 0.97  # background flows towards objects


def test_background_only_strokes_have_no_valid_pixels_but_a_lower_bound():
    partial = np.zeros((20, 20), np.uint32)
    partial[5:15, 5:15] = 1
    targets = compute_targets(PatchAnnotation(partial=partial))
    assert not targets.valid.any()
    assert targets.lower_bound[10, 10] == 4.5  # centre 10.5, stroke outline at 5 and 15
