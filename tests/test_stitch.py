"""Block-wise instances equal whole-image instances: no cut, merged, duplicated or dropped cell at seams."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DSB
from helpers import assert_same_objects, segment_fields

from sparseseg.annotations import PatchAnnotation, compute_targets
from sparseseg.instances.dynamics import InstanceParams, flows_to_labels, relabel_sequential
from sparseseg.tiling.blocks import BlockGrid

PARAMS = InstanceParams(n_steps=40, merge_ratio=0.5)  # exact fields: lobes merged, also across seams
LARGE = InstanceParams(n_steps=60, merge_ratio=0.5)   # enough steps for nuclei enlarged 3x


def mosaic(zoom: int = 1) -> np.ndarray:
    """Real DSB nuclei tiled 2 x 2 (520 x 694, ~500 objects, many across any block border), optionally
    enlarged ``zoom`` times (nuclei then exceed the margin)."""
    labels = tifffile.imread(DSB / "labels" / "fluo_0402a81e.tif").astype(np.int64)
    n = labels.max()
    top = np.hstack([labels, np.where(labels > 0, labels + n, 0)])
    whole = relabel_sequential(np.vstack([top, np.where(top > 0, top + 2 * n, 0)])).astype(np.int64)
    return np.kron(whole, np.ones((zoom, zoom), np.int64)) if zoom > 1 else whole


def exact_fields(truth: np.ndarray) -> np.ndarray:
    targets = compute_targets(PatchAnnotation.from_dense(truth))
    return np.concatenate([targets.distance[None], targets.flow])


@pytest.mark.parametrize("block", [64, 104, 200])
def test_blockwise_instances_equal_whole_image_instances(block, tmp_path):
    truth = mosaic()
    fields = exact_fields(truth)
    whole = flows_to_labels(fields[0], fields[1:3], PARAMS)
    plan = BlockGrid(shape=truth.shape, block=block, margin=48, halo=0, factor=8)
    tiled, _ = segment_fields(fields, plan, PARAMS, tmp_path)
    assert whole.max() > 400 and tiled.dtype == np.uint32
    crossing = sum(1 for k in np.unique(whole[whole > 0]) if len({(y // block, x // block) for y, x in
                                                                  np.argwhere(whole == k)[::7]}) > 1)
    assert crossing > 20  # the test really exercises seams
    assert_same_objects(whole, tiled)
    np.testing.assert_array_equal(np.unique(tiled), np.arange(tiled.max() + 1))  # compact ids


@pytest.mark.parametrize("block", [96, 128])
def test_objects_larger_than_the_margin_are_grown_not_dropped(block, tmp_path):
    """Real nuclei enlarged 3x (many wider than the 16 px margin): every one equals the whole image's."""
    truth = mosaic(zoom=3)[:600, :700]
    fields = exact_fields(truth)
    whole = flows_to_labels(fields[0], fields[1:3], LARGE)
    plan = BlockGrid(shape=truth.shape, block=block, margin=16, halo=0, factor=8)
    tiled, n_large = segment_fields(fields, plan, LARGE, tmp_path)
    assert n_large > 10  # many objects needed the grown windows
    assert_same_objects(whole, tiled)
    dropped, _ = segment_fields(fields, plan, LARGE, tmp_path / "drop", large_objects="drop")
    assert len(np.unique(dropped)) <= len(np.unique(whole)) - 3  # the old behaviour lost them


def test_objects_beyond_the_cap_are_left_out(tmp_path):
    truth = np.zeros((96, 160), np.int64)
    truth[20:70, 30:140] = 1  # 110 px wide, margin 16
    truth[75:90, 10:25] = 2   # small
    fields = exact_fields(truth)
    plan = BlockGrid(shape=truth.shape, block=64, margin=16, halo=0, factor=8)
    grown, n_large = segment_fields(fields, plan, PARAMS, tmp_path / "a")
    assert n_large == 1 and len(np.unique(grown)) == 3
    capped, n_large = segment_fields(fields, plan, PARAMS, tmp_path / "b", max_object_px=100)
    assert n_large == 0 and len(np.unique(capped)) == 2
