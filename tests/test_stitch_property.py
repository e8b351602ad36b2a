"""Property test: block-wise instances equal whole-image instances on random fields at random block sizes.

Hunts for the class of bug where a block keeps, or the large-object pass drops, an object whose cluster
the block did not compute exactly (trajectories stopped at a window edge, or arriving from outside it).
Fields are random (smooth noise, flows up to 1.5 px/step and pointing anywhere) or real nuclei with
perturbed flows; blocks range from smaller than an object to larger than the image.
``SPARSESEG_STITCH_CASES=N`` runs N cases instead of the default.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
from helpers import assert_same_objects, random_scene, segment_fields
from scipy import ndimage as ndi

from sparseseg.annotations import PatchAnnotation, compute_targets
from sparseseg.instances.dynamics import InstanceParams, flows_to_labels
from sparseseg.tiling.blocks import BlockGrid

CASES = int(os.environ.get("SPARSESEG_STITCH_CASES", "24"))


def random_fields(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """(3, H, W) distance + flow: smooth noise (any direction, any length up to 1.5) or perturbed real targets."""
    if rng.random() < 0.5:
        distance = ndi.gaussian_filter(rng.standard_normal(shape), rng.uniform(2, 8))
        distance = distance / distance.std() * 4
        flow = np.stack([ndi.gaussian_filter(rng.standard_normal(shape), rng.uniform(2, 10)) for _ in range(2)])
        flow = flow / np.abs(flow).max() * rng.uniform(0.5, 1.5)
    else:
        truth = np.zeros(shape, np.int32)
        for y in range(0, shape[0], 48):
            for x in range(0, shape[1], 56):
                scene = random_scene(rng, (48, 56))[: shape[0] - y, : shape[1] - x]
                truth[y: y + 48, x: x + 56] = np.where(scene > 0, scene + truth.max(), 0)
        targets = compute_targets(PatchAnnotation.from_dense(truth))
        distance, flow = targets.distance.astype(np.float64), targets.flow.astype(np.float64)
        flow = flow + rng.uniform(0, 0.6) * np.stack([ndi.gaussian_filter(rng.standard_normal(shape), 3)
                                                      for _ in range(2)]) * 3
    return np.concatenate([distance[None], flow]).astype(np.float32)


@pytest.mark.parametrize("case", range(CASES))
def test_random_fields_tiled_equal_whole(case, tmp_path):
    rng = np.random.default_rng(1000 + case)
    shape = (int(rng.integers(100, 240)), int(rng.integers(100, 240)))
    fields = random_fields(rng, shape)
    params = InstanceParams(distance_threshold=float(rng.uniform(-0.5, 1.0)), min_size=int(rng.integers(1, 20)),
                            flow_error_threshold=float(rng.choice([0.6, 4.0, 100.0])),
                            n_steps=int(rng.integers(5, 60)), merge_ratio=float(rng.choice([0.0, 0.0, 0.5])))
    plan = BlockGrid(shape=shape, block=int(rng.choice([8, 16, 24, 32, 48, 64, 96, 256])),
                     margin=int(rng.choice([0, 8, 16, 48])), halo=0, factor=8)
    whole = flows_to_labels(fields[0], fields[1:3], params)
    tiled, _ = segment_fields(fields, plan, params, tmp_path)
    assert_same_objects(whole, tiled)
