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
from skimage.measure import regionprops_table

from sparseseg.errors import InputError
from sparseseg.segment.blocks import Block, BlockPlan

_SHAPE_PROPS = ("label", "area", "bbox", "centroid", "perimeter", "equivalent_diameter_area", "eccentricity",
                "solidity", "orientation")


@dataclass(frozen=True)
class MeasureInputs:
    """Lazy sources: ``labels`` (Y, X) and ``image`` (C, Y, X) support slicing (zarr / numpy)."""

    labels: object
    image: object | None
    pixel_size_um: tuple[float, float]
    channel_names: tuple[str, ...]
    brightfield_rgb: bool


def _owned(labels: np.ndarray, block: Block, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(global ids owned by the block, local label image 0..n over the context)."""
    ids, local = np.unique(labels, return_inverse=True)
    local = local.reshape(labels.shape)
    if ids[0] != 0:
        ids, local = np.concatenate([[0], ids]), local + 1
    y0, x0 = block.context[0].start, block.context[1].start
    keep = np.zeros(ids.size, bool)
    for k, box, cut in block.owned_objects(local, shape):
        if cut:
            raise InputError(None, f"object {ids[k]} at (y={box[0].start + y0}, x={box[1].start + x0}) is larger "
                                   f"than the measurement margin; use a larger --margin")
        keep[k] = True
    local = np.where(keep[local], local, 0)
    return ids, local


def measure_block(inputs: MeasureInputs, block: Block, shape: tuple[int, int]) -> pd.DataFrame:
    """One row per object owned by ``block``: shape, position, intensity (and H&E density)."""
    labels = np.asarray(inputs.labels[block.context])
    ids, local = _owned(labels, block, shape)
    if not local.any():
        return pd.DataFrame()
    intensity = None
    if inputs.image is not None:
        pixels = np.asarray(inputs.image[(slice(None), *block.context)]).transpose(1, 2, 0).astype(np.float32)
        intensity = pixels
        if inputs.brightfield_rgb:
            hed = rgb2hed(np.clip(pixels / 255.0, 0, 1)).astype(np.float32)
            intensity = np.concatenate([pixels, hed[..., :2]], axis=-1)
    props = list(_SHAPE_PROPS) + (["intensity_mean"] if intensity is not None else [])
    table = regionprops_table(local, intensity_image=intensity, properties=props)
    frame = pd.DataFrame(table)
    y0, x0 = block.context[0].start, block.context[1].start
    py, px = inputs.pixel_size_um
    out = pd.DataFrame({
        "id": ids[frame["label"].to_numpy()].astype(np.uint32),
        "centroid_y_px": frame["centroid-0"] + y0, "centroid_x_px": frame["centroid-1"] + x0,
        "bbox_y0": frame["bbox-0"] + y0, "bbox_x0": frame["bbox-1"] + x0,
        "bbox_y1": frame["bbox-2"] + y0, "bbox_x1": frame["bbox-3"] + x0,
        "area_px": frame["area"].astype(np.int64),
    })
    out["centroid_y_um"] = out["centroid_y_px"] * py
    out["centroid_x_um"] = out["centroid_x_px"] * px
    out["area_um2"] = out["area_px"] * py * px
    scale = float(np.sqrt(py * px))  # isotropic pixels assumed for lengths
    out["perimeter_um"] = frame["perimeter"] * scale
    out["equivalent_diameter_um"] = frame["equivalent_diameter_area"] * scale
    out["eccentricity"] = frame["eccentricity"]
    out["solidity"] = frame["solidity"]
    out["orientation_rad"] = frame["orientation"]
    if intensity is not None:
        names = [f"mean_{c}" for c in inputs.channel_names]
        if inputs.brightfield_rgb:
            names += ["hematoxylin_od", "eosin_od"]
        for i, name in enumerate(names):
            out[name] = frame[f"intensity_mean-{i}"].astype(np.float32)
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
    finally:
        if writer is not None:
            writer.close()
    if writer is None:  # no object at all: still write a valid (empty) table
        pq.write_table(pa.table({"id": pa.array([], pa.uint32())}), tmp)
    tmp.replace(out)
    return total
