"""Helpers shared by the tests (imported as ``helpers``; tests never import each other)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from sparseseg.annotations import PatchAnnotation
from sparseseg.annotations.model import encode_dense
from sparseseg.geometry.lattice import label_interfaces


def random_scene(rng: np.random.Generator, shape=(48, 56)) -> np.ndarray:
    """Instance labels with separate and touching objects: blobs, some split into touching cells."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    next_id = 1
    for _ in range(rng.integers(2, 7)):
        cy, cx = rng.uniform(0, shape[0]), rng.uniform(0, shape[1])
        ry, rx = rng.uniform(3, 12), rng.uniform(3, 12)
        blob = ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 < 1
        if rng.random() < 0.5:  # split into touching cells along a random line
            angle = rng.uniform(0, np.pi)
            side = (np.cos(angle) * (yy - cy) + np.sin(angle) * (xx - cx)) > 0
            labels[blob & side] = next_id
            labels[blob & ~side] = next_id + 1
            next_id += 2
        else:
            labels[blob] = next_id
            next_id += 1
    return labels


def random_sparse_annotation(rng: np.random.Generator, labels: np.ndarray) -> PatchAnnotation:
    """Keep random blobs of the truth (assumptions hold by construction), plus extras."""
    noise = ndi.gaussian_filter(rng.standard_normal(labels.shape), rng.uniform(2, 6))
    keep = noise > np.quantile(noise, rng.uniform(0.2, 0.95))
    partial = np.where(keep, encode_dense(labels), 0).astype(np.uint32)
    ids = np.unique(labels[labels > 0])
    complete = [k + 1 for k in ids if keep[labels == k].all() and rng.random() < 0.7]
    true_b = label_interfaces(labels, np.not_equal)
    pieces = true_b & (rng.random(true_b.shape) < rng.uniform(0, 0.3))  # manual pieces on E
    return PatchAnnotation(partial=partial, boundary=pieces, complete=frozenset(complete))


def perturbations(truth: np.ndarray, rng: np.random.Generator):
    """Realistic prediction errors: dilation, erosion, dropped, merged, split and shifted nuclei."""
    yield ndi.grey_dilation(truth, size=3)
    eroded = truth * ndi.binary_erosion(truth > 0, iterations=2)
    yield eroded
    dropped = truth.copy()
    dropped[np.isin(dropped, rng.choice(np.unique(truth)[1:], 10, replace=False))] = 0
    yield dropped
    merged = truth.copy()
    ids = np.unique(truth)[1:]
    for a, b in rng.choice(ids, (8, 2), replace=False):
        merged[merged == b] = a
    yield merged
    split = truth.copy()
    yy, xx = np.indices(truth.shape)
    split[(split > 0) & (xx % 9 == 0)] += 1000  # stripes become separate objects
    yield split
    yield np.roll(truth, (2, -3), axis=(0, 1))


def matched_at(truth: np.ndarray, pred: np.ndarray, iou: float) -> int:
    """Number of true objects with a predicted object at IoU > ``iou`` (one-to-one above 0.5)."""
    count = 0
    for k in np.unique(truth[truth > 0]):
        mask = truth == k
        hits = pred[mask]
        hits = hits[hits > 0]
        if hits.size == 0:
            continue
        other = pred == np.bincount(hits).argmax()
        count += (mask & other).sum() / (mask | other).sum() > iou
    return count


def assert_same_objects(whole: np.ndarray, tiled: np.ndarray) -> None:
    """Identical objects up to ids: every object of one is exactly an object of the other."""
    pairs = np.unique(np.stack([whole.ravel(), tiled.ravel()]), axis=1)
    background_mismatch = pairs[:, (pairs[0] == 0) != (pairs[1] == 0)]
    assert background_mismatch.size == 0, f"{background_mismatch.shape[1]} pixel label pairs differ"
    objects = pairs[:, pairs[0] > 0]
    assert len(np.unique(objects[0])) == objects.shape[1], "a whole-image object is split between blocks"
    assert len(np.unique(objects[1])) == objects.shape[1], "two whole-image objects are merged or duplicated"


def segment_fields(fields: np.ndarray, plan, params, work, large_objects: str = "grow",
                   max_object_px: int = 2**31) -> tuple[np.ndarray, int]:
    """(labels, number of large objects) of a whole in-memory (3, H, W) distance + flow array, computed block by
    block exactly as ``segment_slide`` does (records, large-object pass, ownership, composer), in this process."""
    from pathlib import Path

    from sparseseg.infer.windows import ArrayFields
    from sparseseg.model.normalize import Normalization
    from sparseseg.segment.engine import run_block_group
    from sparseseg.segment.plan import BlockJob
    from sparseseg.segment.run import labels_composer
    from sparseseg.segment.stitch import objects_to_add

    source = ArrayFields(fields)
    (Path(work) / "blocks").mkdir(parents=True, exist_ok=True)
    (Path(work) / "large").mkdir(exist_ok=True)
    job = BlockJob(slide="<in memory>", checkpoint="", checkpoint_mtime_ns=0, grid=plan,
                   normalization=Normalization((0.0,), (1.0,)), params=params, work=str(work),
                   large_objects=large_objects, max_object_px=max_object_px)
    blocks = list(plan.blocks())
    records = dict(zip([b.name for b in blocks], run_block_group(job, blocks, frozenset(), source)))
    owned, _ = objects_to_add(job, records)
    composer, _, n_large, _ = labels_composer(job, records, owned)
    return composer.model_window((slice(0, plan.shape[0]), slice(0, plan.shape[1]))), n_large
