"""Flow-derived instances recover real nuclei from exact distance/flow fields."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
from conftest import DSB

from helpers import matched_at
from sparseseg.annotations import PatchAnnotation, compute_targets
from sparseseg.instances.dynamics import (InstanceParams, finalize_clusters, flows_to_labels, relabel_sequential,
                                         trimmed_pixels)


@pytest.mark.parametrize("name,minimum", [("fluo_0402a81e", 0.95), ("he_65c8527c", 0.95), ("he_0121d675", 0.85)])
def test_exact_fields_give_back_the_true_nuclei(name, minimum):
    truth = tifffile.imread(DSB / "labels" / f"{name}.tif").astype(np.int64)
    targets = compute_targets(PatchAnnotation.from_dense(truth))
    # Exact (unsmoothed) flows of non-convex nuclei have a sink per lobe, which lobe merging joins;
    # predicted fields are smooth, so merging is off by default and calibration decides it.
    labels = flows_to_labels(targets.distance, targets.flow, InstanceParams(merge_ratio=0.5))
    assert labels.dtype == np.uint32
    n_true = len(np.unique(truth)) - 1
    assert matched_at(truth, labels, 0.9) >= minimum * n_true
    assert abs(int(labels.max()) - n_true) <= 0.1 * n_true
    np.testing.assert_array_equal(np.unique(labels), np.arange(labels.max() + 1))  # compact ids


def test_touching_objects_stay_apart_and_empty_input_gives_nothing():
    truth = np.zeros((40, 60), np.int64)
    truth[10:30, 10:30] = 1
    truth[10:30, 30:50] = 2  # touching squares
    targets = compute_targets(PatchAnnotation.from_dense(truth))
    labels = flows_to_labels(torch.from_numpy(targets.distance), torch.from_numpy(targets.flow))
    assert labels.max() == 2 and matched_at(truth, labels, 0.95) == 2
    assert flows_to_labels(np.full((8, 8), -1.0), np.zeros((2, 8, 8))).max() == 0


def test_relabel_sequential_is_compact_and_ordered():
    labels = np.array([[0, 7, 7], [3, 3, 0], [9, 0, 7]], np.uint32)
    np.testing.assert_array_equal(relabel_sequential(labels), [[0, 1, 1], [2, 2, 0], [3, 0, 1]])


def test_the_pieces_cut_away_are_counted_per_object():
    """An object in three pieces keeps its largest; the two others are counted, a dropped object is not."""
    clusters = np.zeros((20, 30), np.int64)
    clusters[2:8, 2:8] = 1     # 36 px: the piece kept
    clusters[12:14, 2:5] = 1   # 6 px sliver of the same cluster
    clusters[2:4, 12:14] = 1   # 4 px sliver
    clusters[12:19, 12:19] = 2  # 49 px, one piece: nothing cut
    clusters[2:4, 22:24] = 3   # 4 px: below min_size, dropped whole
    zero_flow = np.zeros((2, *clusters.shape), np.float32)  # no flow error check: threshold above any error
    final = finalize_clusters(clusters, zero_flow, InstanceParams(min_size=5, flow_error_threshold=10.0))
    assert sorted(np.unique(final).tolist()) == [0, 1, 2] and (final == 1).sum() == 36
    lost = trimmed_pixels(clusters, final)
    assert lost[0] == 0 and lost[1] == 10 and lost[2] == 0 and lost[3] == 0


def test_an_object_whose_largest_piece_is_below_the_size_floor_is_dropped():
    """A cluster above ``min_size`` in total whose largest piece is below it leaves no speck behind."""
    clusters = np.zeros((20, 30), np.int64)
    clusters[2:5, 2:5] = 1      # 9 px piece
    clusters[10:13, 2:5] = 1    # 9 px piece: 18 px in all
    clusters[10:16, 15:21] = 2  # 36 px
    zero_flow = np.zeros((2, *clusters.shape), np.float32)
    final = finalize_clusters(clusters, zero_flow, InstanceParams(min_size=12, flow_error_threshold=10.0))
    assert sorted(np.unique(final).tolist()) == [0, 2]
    assert (finalize_clusters(clusters, zero_flow, InstanceParams(min_size=9, flow_error_threshold=10.0)) == 1).sum() == 9


def test_slivers_at_most_two_pixels_wide_are_no_objects():
    """A 1-px streak and a 2-px band (even above min_size) are dropped; a 3-px band has an interior row: kept."""
    clusters = np.zeros((30, 60), np.int64)
    clusters[2, 5:55] = 1        # 50 px, 1 wide
    clusters[6:8, 5:40] = 2      # 70 px, 2 wide
    clusters[12:15, 5:30] = 3    # 75 px, 3 wide
    clusters[20:30, 50:60] = 4   # a 10 x 10 blob on the image's corner: its inner pixels are interior
    zero_flow = np.zeros((2, *clusters.shape), np.float32)
    final = finalize_clusters(clusters, zero_flow, InstanceParams(min_size=10, flow_error_threshold=10.0))
    assert sorted(np.unique(final).tolist()) == [0, 3, 4]
    assert (final == 3).sum() == 75 and (final == 4).sum() == 100


@pytest.mark.parametrize("edges", [(False,) * 4, (True, True, True, True), (True, False, False, True)])
def test_end_points_are_the_same_with_int32_and_int64_positions(monkeypatch, edges):
    """Windows under 32k px integrate int32 positions, larger ones int64: end points, stops and trails agree
    to the bit (a real H&E patch's exact fields, noise added so trajectories cross pixels off-grid)."""
    from sparseseg.instances import dynamics

    truth = tifffile.imread(DSB / "labels" / "he_65c8527c.tif").astype(np.int64)
    targets = compute_targets(PatchAnnotation.from_dense(truth))
    flow = torch.from_numpy(targets.flow + np.random.default_rng(0).normal(0, 0.3, targets.flow.shape)).float()
    seeds = torch.nonzero(torch.from_numpy(targets.distance) > 0)
    assert dynamics.position_dtype(flow.shape[1:]) == torch.int32
    assert dynamics.position_dtype((40_000, 10)) == torch.int64  # 40k px * 65536 does not fit int32
    results = []
    for kind in (torch.int32, torch.int64):
        monkeypatch.setattr(dynamics, "position_dtype", lambda shape, kind=kind: kind)
        trail = torch.zeros(flow.shape[1:], dtype=torch.bool)
        ends, stopped = dynamics.euler_endpoints(flow, seeds, 30, trail, edges)
        results.append((ends, stopped, trail))
    assert all(torch.equal(a, b) for a, b in zip(*results))
    assert results[0][1].any() == any(edges)  # open edges do stop some trajectories
