"""Block-wise instances equal whole-image instances: no cut, merged or duplicated cells at seams."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from conftest import DSB

from sparseseg.annotations import PatchAnnotation, compute_targets
from sparseseg.instances.flows import InstanceParams, flows_to_labels, relabel_sequential
from sparseseg.segment.blocks import BlockPlan
from sparseseg.segment.blockwork import BlockJob, ObjectTooLargeError, run_block
from sparseseg.segment.segment import compose_window
from sparseseg.train.normalize import Normalization

PARAMS = InstanceParams(n_steps=40)


def mosaic() -> np.ndarray:
    """Real DSB nuclei tiled 2 x 2 (520 x 694, ~500 objects, many across any block border)."""
    labels = tifffile.imread(DSB / "labels" / "fluo_0402a81e.tif").astype(np.int64)
    n = labels.max()
    top = np.hstack([labels, np.where(labels > 0, labels + n, 0)])
    return relabel_sequential(np.vstack([top, np.where(top > 0, top + 2 * n, 0)])).astype(np.int64)


def tiled_labels(fields: np.ndarray, plan: BlockPlan, tmp_path) -> np.ndarray:
    work = tmp_path / "work"
    (work / "blocks").mkdir(parents=True, exist_ok=True)
    job = BlockJob(slide="", checkpoint="", checkpoint_mtime_ns=0, device="cpu",
                   normalization=Normalization((0.0,), (1.0,)), params=PARAMS, image_shape=plan.shape, work=str(work),
                   large_objects="error")
    offsets, total = {}, 0
    for block in plan.blocks():
        count, dropped = run_block(job, block, False, predict=lambda job, b: fields[(slice(None), *b.context)])
        assert dropped == 0
        offsets[block.name] = total
        total += count
    return compose_window((slice(0, plan.shape[0]), slice(0, plan.shape[1])), plan, work, offsets)


def assert_same_objects(whole: np.ndarray, tiled: np.ndarray) -> None:
    """Identical objects up to ids: every object of one is exactly an object of the other."""
    pairs = np.unique(np.stack([whole.ravel(), tiled.ravel()]), axis=1)
    background_mismatch = pairs[:, (pairs[0] == 0) != (pairs[1] == 0)]
    assert background_mismatch.size == 0, f"{background_mismatch.shape[1]} pixel label pairs differ"
    objects = pairs[:, pairs[0] > 0]
    assert len(np.unique(objects[0])) == objects.shape[1], "a whole-image object is split between blocks"
    assert len(np.unique(objects[1])) == objects.shape[1], "two whole-image objects are merged or duplicated"


@pytest.mark.parametrize("block", [64, 104, 200])
def test_blockwise_instances_equal_whole_image_instances(block, tmp_path):
    truth = mosaic()
    targets = compute_targets(PatchAnnotation.from_dense(truth))
    fields = np.concatenate([targets.distance[None], targets.flow])
    whole = flows_to_labels(fields[0], fields[1:3], PARAMS)
    plan = BlockPlan(shape=truth.shape, block=block, margin=48, halo=0, factor=8)
    tiled = tiled_labels(fields, plan, tmp_path)
    assert whole.max() > 400 and tiled.dtype == np.uint32
    crossing = sum(1 for k in np.unique(whole[whole > 0]) if len({(y // block, x // block) for y, x in
                                                                  np.argwhere(whole == k)[::7]}) > 1)
    assert crossing > 20  # the test really exercises seams
    assert_same_objects(whole, tiled)
    np.testing.assert_array_equal(np.unique(tiled), np.arange(tiled.max() + 1))  # compact ids


def test_object_larger_than_the_margin_is_an_error(tmp_path):
    truth = np.zeros((96, 160), np.int64)
    truth[20:70, 30:140] = 1  # 110 px wide, margin 16
    targets = compute_targets(PatchAnnotation.from_dense(truth))
    fields = np.concatenate([targets.distance[None], targets.flow])
    plan = BlockPlan(shape=truth.shape, block=64, margin=16, halo=0, factor=8)
    with pytest.raises(ObjectTooLargeError, match="increase --margin"):
        tiled_labels(fields, plan, tmp_path)
