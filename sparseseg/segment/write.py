"""Pass 2: compose the label image from the block records and write its pyramid, as tasks on the workers.

Object ids are ``block offset + local id``: the offsets are the prefix sum of the per-block counts
(kept objects, then the large objects the block owns) in block order, so ids are compact
(1..N, uint32) and do not depend on the order in which blocks finished.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from sparseseg.classes import OBJECT_CLASSES, class_colours, most_probable_class
from sparseseg.instances.doubt import UNCERTAINTY, block_cell, channel_names
from sparseseg.io.labels import write_label_pyramid
from sparseseg.model.grid import level0_to_model_indices
from sparseseg.segment.plan import BlockJob
from sparseseg.segment.records import GlobalObjects, block_record_path, read_block_doubt
from sparseseg.tiling.blocks import Window


@lru_cache(maxsize=16)
def _block_labels(path: str) -> np.ndarray:
    with np.load(path) as data:
        return data["labels"]


@lru_cache(maxsize=2)
def _large_objects(path: str) -> tuple[GlobalObjects, np.ndarray, np.ndarray]:
    """(objects, their global ids, their boxes (y0, x0, y1, x1))."""
    with np.load(path) as data:
        return GlobalObjects.from_arrays(data, "large"), data["ids"], data["boxes"]


def write_large_objects(path: Path, objects: GlobalObjects, ids: np.ndarray) -> None:
    boxes = np.array([[r.min(), c.min(), r.max() + 1, c.max() + 1] for r, c in
                      (objects.pixels(k) for k in range(len(objects)))], np.int64).reshape(-1, 4)
    np.savez_compressed(path, ids=np.asarray(ids, np.int64), boxes=boxes, **objects.to_arrays("large"))


@dataclass(frozen=True)
class LabelComposer:
    """Global uint32 labels of any level-0 window (picklable: runs on the workers)."""

    job: BlockJob
    offsets: dict[str, int]
    large: str | None = None   # large-objects file, when there are any

    def model_window(self, window: Window) -> np.ndarray:
        """Labels of a model-grid window: the kept objects of the blocks reaching it, then the large objects."""
        rows, cols = window
        out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint32)
        for block in self.job.grid.blocks_touching(window):
            labels = _block_labels(str(block_record_path(self.job.work, block.name)))
            if not labels.size:
                continue
            (by0, by1), (bx0, bx1) = (block.context[0].start, block.context[0].stop), (block.context[1].start,
                                                                                       block.context[1].stop)
            r0, r1, c0, c1 = max(rows.start, by0), min(rows.stop, by1), max(cols.start, bx0), min(cols.stop, bx1)
            if r0 >= r1 or c0 >= c1:
                continue
            part = labels[r0 - by0: r1 - by0, c0 - bx0: c1 - bx0]
            inside = part > 0
            out[r0 - rows.start: r1 - rows.start, c0 - cols.start: c1 - cols.start][inside] = \
                part[inside] + np.uint32(self.offsets[block.name])
        if self.large:
            objects, ids, boxes = _large_objects(self.large)
            near = np.flatnonzero((boxes[:, 0] < rows.stop) & (boxes[:, 2] > rows.start)
                                  & (boxes[:, 1] < cols.stop) & (boxes[:, 3] > cols.start))
            for k in near:
                r, c = objects.pixels(int(k))
                inside = (r >= rows.start) & (r < rows.stop) & (c >= cols.start) & (c < cols.stop)
                out[r[inside] - rows.start, c[inside] - cols.start] = np.uint32(ids[k])
        return out

    def __call__(self, window: Window) -> np.ndarray:
        """Labels of a level-0 window: each level-0 pixel takes the model-grid pixel under its centre."""
        job = self.job
        if job.scale == 1.0:
            return self.model_window(window)
        shape = job.grid.shape
        rows = level0_to_model_indices(window[0].start, window[0].stop, job.scale, shape[0])
        cols = level0_to_model_indices(window[1].start, window[1].stop, job.scale, shape[1])
        grid = self.model_window((slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)))
        return grid[np.ix_(rows - rows[0], cols - cols[0])]


def object_class_probabilities(sums: np.ndarray) -> np.ndarray:
    """Mean class probabilities per object (rows of integer sums over its pixels, normalised to sum to 1)."""
    totals = sums.sum(1, keepdims=True)
    return np.where(totals > 0, sums / np.maximum(totals, 1), 0.0).astype(np.float32)


def write_object_classes(group, names: tuple[str, ...], probabilities: np.ndarray) -> None:
    """The per-object class probabilities into a label group (row k: object k), and the class names."""
    array = group.create_array(OBJECT_CLASSES, shape=probabilities.shape, dtype=np.float32,
                               chunks=(min(2**18, max(1, probabilities.shape[0])), max(1, probabilities.shape[1])))
    array[...] = probabilities
    array.attrs["classes"] = list(names)


@dataclass(frozen=True)
class ClassComposer:
    """Class ids (1 + class index; 0 background) of any level-0 window: each object's most probable class."""

    labels: LabelComposer
    lut: np.ndarray   # uint8 per object id

    def __call__(self, window: Window) -> np.ndarray:
        return self.lut[self.labels(window)]


def write_class_pyramid(slide: Path, name: str, labels: LabelComposer, names: tuple[str, ...],
                        probabilities: np.ndarray, scheduler) -> None:
    """``labels/<name>_classes``: every object's pixels hold its class (1 + index), with NGFF image-label colours
    and properties, so napari and neuroglancer colour cells by type."""
    lut = most_probable_class(probabilities)
    # background listed too, transparent: NGFF wants the same label values in colours and properties
    colours = [{"label-value": 0, "rgba": [0, 0, 0, 0]}] + \
        [{"label-value": i + 1, "rgba": [*rgb, 255]} for i, rgb in enumerate(class_colours(names))]
    properties = [{"label-value": 0, "class": "background"}] + \
        [{"label-value": i + 1, "class": n} for i, n in enumerate(names)]
    write_label_pyramid(slide, f"{name}_classes", ClassComposer(labels, lut), np.uint8, True,
                        f"cell class of each object of labels/{name} (argmax of its mean class probability)",
                        colors=colours, properties=properties, scheduler=scheduler)


def write_uncertainty(group, job: BlockJob) -> None:
    """``uncertainty``: the doubt sums per cell of the model grid (channels, cells, cells), one chunk per block,
    copied from the block records one block at a time (memory stays one block's cells)."""
    cell = block_cell(job.grid.block)
    names = channel_names(job.class_names)
    shape = tuple(-(-n // cell) for n in job.grid.shape)
    per_block = job.grid.block // cell
    array = group.create_array(UNCERTAINTY, shape=(len(names), *shape), dtype=np.float32,
                               chunks=(len(names), min(per_block, shape[0]), min(per_block, shape[1])), fill_value=0)
    for block in job.grid.blocks():
        doubt = read_block_doubt(block_record_path(job.work, block.name))
        if doubt.size:  # skipped blocks (no tissue) stay 0: no pixel was looked at
            y0, x0 = block.core[0].start // cell, block.core[1].start // cell
            array[:, y0:y0 + doubt.shape[1], x0:x0 + doubt.shape[2]] = doubt
    array.attrs["sparseseg"] = {"channels": names, "cell": cell, "scale": job.scale,
                                "distance_threshold": job.params.distance_threshold, "tta": job.tta,
                                "model": job.checkpoint,
                                "about": "sums per cell of the model grid (cell x cell model-grid pixels; a level-0 "
                                         "pixel is `scale` model-grid pixels): see sparseseg.instances.doubt"}
