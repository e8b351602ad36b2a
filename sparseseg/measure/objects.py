"""Per-object measurements of a label image, block by block, each object measured exactly once.

Blocks reuse the segmentation's ownership rule (``segment.blocks``): a block measures the
objects anchored (bounding-box top-left) in its core, reading core + margin, so an object
crossing block borders is measured whole, once. Rows stream to a Parquet file.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from skimage.color import rgb2hed

from sparseseg.errors import InputError
from sparseseg.measure.features import intensity_means, object_features
from sparseseg.segment.blocks import Block, BlockPlan


@dataclass(frozen=True)
class MeasureInputs:
    """Lazy sources: ``labels`` (Y, X) and ``image`` (C, Y, X) support slicing (zarr / numpy)."""

    labels: object
    image: object | None
    pixel_size_um: tuple[float, float]
    channel_names: tuple[str, ...]
    brightfield_rgb: bool


def compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, local): the sorted distinct ids of ``labels`` (ids[0] = 0) and the image of their indices.

    A lookup table over the id range when the ids are dense (segmentation output: consecutive
    global ids), a sort only for sparse id sets; only labelled pixels are touched.
    """
    where = np.flatnonzero(labels)
    values = labels.ravel()[where]
    local = np.zeros(labels.shape, np.int32)
    if not where.size:
        return np.zeros(1, labels.dtype), local
    low, high = int(values.min()), int(values.max())
    if high - low < 4 * labels.size:
        lut = np.zeros(high - low + 1, np.int32)
        lut[values - low] = 1
        ids = np.flatnonzero(lut) + low
        lut[ids - low] = np.arange(1, ids.size + 1, dtype=np.int32)
        local.ravel()[where] = lut[values - low]
    else:
        ids, inverse = np.unique(values, return_inverse=True)
        local.ravel()[where] = inverse + 1
    return np.concatenate([[0], ids]).astype(labels.dtype), local


def owned_labels(labels: np.ndarray, block: Block, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(global ids, local label image 1..n over the context holding only the objects the block owns)."""
    ids, local = compact_ids(labels)
    y0, x0 = block.context[0].start, block.context[1].start
    keep = np.zeros(ids.size, np.int32)
    owned = []
    for k, box, cut in block.owned_objects(local, shape):
        if cut:
            raise InputError(None, f"object {ids[k]} at (y={box[0].start + y0}, x={box[1].start + x0}) is larger "
                                   f"than the measurement margin; use a larger --margin")
        owned.append(k)
    keep[owned] = np.arange(1, len(owned) + 1, dtype=np.int32)
    return np.concatenate([[0], ids[owned]]).astype(ids.dtype), keep[local]


def _hed_densities(rgb: np.ndarray) -> np.ndarray:
    """(M, 2) hematoxylin and eosin optical densities of (M, 3) RGB values (skimage colour deconvolution)."""
    return rgb2hed(np.clip(rgb / 255.0, 0, 1)[:, None, :]).astype(np.float32)[:, 0, :2]


def measure_block(inputs: MeasureInputs, block: Block, shape: tuple[int, int]) -> pd.DataFrame:
    """One row per object owned by ``block``: shape, position, intensity (and H&E density)."""
    labels = np.asarray(inputs.labels[block.context])
    ids, local = owned_labels(labels, block, shape)
    if ids.size == 1:
        return pd.DataFrame()
    features = object_features(local)
    y0, x0 = block.context[0].start, block.context[1].start
    py, px = inputs.pixel_size_um
    bbox, centroid = features["bbox"], features["centroid"]
    out = pd.DataFrame({
        "id": ids[1:].astype(np.uint32),
        "centroid_y_px": centroid[:, 0] + y0, "centroid_x_px": centroid[:, 1] + x0,
        "bbox_y0": bbox[:, 0] + y0, "bbox_x0": bbox[:, 1] + x0,
        "bbox_y1": bbox[:, 2] + y0, "bbox_x1": bbox[:, 3] + x0,
        "area_px": features["area"],
    })
    out["centroid_y_um"] = out["centroid_y_px"] * py
    out["centroid_x_um"] = out["centroid_x_px"] * px
    out["area_um2"] = out["area_px"] * py * px
    scale = float(np.sqrt(py * px))  # isotropic pixels assumed for lengths
    out["perimeter_um"] = features["perimeter"] * scale
    out["equivalent_diameter_um"] = features["equivalent_diameter_area"] * scale
    out["eccentricity"] = features["eccentricity"]
    out["solidity"] = features["solidity"]
    out["orientation_rad"] = features["orientation"]
    if inputs.image is not None:
        pixels = np.asarray(inputs.image[(slice(None), *block.context)])
        means = intensity_means(local, pixels, _hed_densities if inputs.brightfield_rgb else None)
        names = [f"mean_{c}" for c in inputs.channel_names]
        if inputs.brightfield_rgb:
            names += ["hematoxylin_od", "eosin_od"]
        for i, name in enumerate(names):
            out[name] = means[:, i].astype(np.float32)
    return out


def iter_blocks(shape: tuple[int, int], block: int, margin: int) -> Iterator[Block]:
    return BlockPlan(shape=shape, block=block, margin=margin, halo=0, factor=1).blocks()


def measure_objects(inputs: MeasureInputs, out: Path, block: int = 2048, margin: int = 128,
                    assign_region=None, progress=None) -> int:
    """Stream the per-object table to ``out`` (Parquet); returns the number of objects.

    ``assign_region(frame) -> array of region ids`` adds a ``region`` column.
    """
    shape = tuple(inputs.labels.shape)
    writer = None
    total = 0
    tmp = out.with_name(f".{out.name}.partial")
    try:
        for b in iter_blocks(shape, block, margin):
            frame = measure_block(inputs, b, shape)
            if progress is not None:
                progress.update(1)
            if frame.empty:
                continue
            if assign_region is not None:
                frame["region"] = assign_region(frame).astype(np.int64)
            table = pa.Table.from_pandas(frame, preserve_index=False)
            if writer is None:
                writer = pq.ParquetWriter(tmp, table.schema)
            writer.write_table(table.cast(writer.schema))
            total += len(frame)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    if writer is not None:
        writer.close()
    else:  # no object at all: still write a valid (empty) table
        pq.write_table(pa.table({"id": pa.array([], pa.uint32())}), tmp)
    tmp.replace(out)
    return total
