"""Per-object measurements of a label image, tile by tile, each object measured exactly once, whole.

Tiles cover the label array without overlap (aligned to its chunks, so each chunk is decoded
once). An object inside one tile is measured there. An object touching a tile edge that is not
the image edge is a *seam object*: its pixels and image values are set aside until the row of
tiles below has been read (nothing later can add to it), then it is measured from its assembled
pixels. Objects of any size are measured whole; memory holds one tile plus the seam objects'
pixels. Rows stream to a Parquet file.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import groupby
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from sparseseg.errors import InputError
from sparseseg.measure.features import (ObjectPixels, bounding_boxes, compact_values, hed_densities,
                                        intensity_means, object_features, object_pixels, pixel_values)
from sparseseg.segment.blocks import Block, BlockPlan


@dataclass(frozen=True)
class MeasureInputs:
    """Lazy sources: ``labels`` (Y, X) and ``image`` (C, Y, X) support slicing (zarr / numpy)."""

    labels: object
    image: object | None
    pixel_size_um: tuple[float, float]
    channel_names: tuple[str, ...]
    brightfield_rgb: bool
    source: str = ""  # named in read errors


def compact_ids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ids, local): the sorted distinct ids of ``labels`` (ids[0] = 0) and the image of their indices."""
    ids, pixels = object_pixels(labels)
    return ids, pixels.image()


def owned_pixels(labels: np.ndarray, block: Block, shape: tuple[int, int]) -> tuple[np.ndarray, ObjectPixels]:
    """(global ids with 0 first, pixels of the objects of the context ``labels`` that ``block`` owns).

    Raises when an owned object reaches a context edge that is not the image edge (it may be cut).
    """
    ids, pixels = object_pixels(labels)
    if not pixels.n:
        return ids, pixels
    bbox = bounding_boxes(pixels.rows, pixels.cols, pixels.objects, pixels.n)
    owned, cut = block.ownership(bbox, labels.shape, shape)
    if cut.any():
        k = int(np.flatnonzero(cut)[0])
        y0, x0 = block.context[0].start, block.context[1].start
        raise InputError(None, f"object {ids[k + 1]} at (y={bbox[k, 0] + y0}, x={bbox[k, 1] + x0}) is larger "
                               f"than the measurement margin; use a larger --margin")
    keep = np.flatnonzero(owned) + 1
    return np.concatenate([[0], ids[keep]]).astype(ids.dtype), pixels.subset(keep)


def owned_labels(labels: np.ndarray, block: Block, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(global ids, local label image 1..n over the context holding only the objects the block owns)."""
    ids, pixels = owned_pixels(labels, block, shape)
    return ids, pixels.image()


def _read(array, window: tuple[slice, ...], source: str) -> np.ndarray:
    try:
        return np.asarray(array[window])
    except Exception as err:  # a corrupt or missing chunk: say where, not only the codec's message
        raise InputError(source, f"cannot read rows {window[-2].start}:{window[-2].stop}, columns "
                                 f"{window[-1].start}:{window[-1].stop}: {err}") from err


def _table(inputs: MeasureInputs, ids: np.ndarray, features: dict, dy, dx, values: np.ndarray | None,
           objects: np.ndarray) -> dict[str, np.ndarray]:
    """Columns, one row per object: ``features`` in local pixels shifted by (dy, dx) to level-0 pixels, and means."""
    py, px = inputs.pixel_size_um
    bbox, centroid = features["bbox"], features["centroid"]
    scale = float(np.sqrt(py * px))  # isotropic pixels assumed for lengths
    columns = {
        "id": ids.astype(np.uint32),
        "centroid_y_px": centroid[:, 0] + dy, "centroid_x_px": centroid[:, 1] + dx,
        "bbox_y0": bbox[:, 0] + dy, "bbox_x0": bbox[:, 1] + dx, "bbox_y1": bbox[:, 2] + dy, "bbox_x1": bbox[:, 3] + dx,
        "area_px": features["area"],
        "centroid_y_um": (centroid[:, 0] + dy) * py, "centroid_x_um": (centroid[:, 1] + dx) * px,
        "area_um2": features["area"] * py * px,
        "perimeter_um": features["perimeter"] * scale,
        "equivalent_diameter_um": features["equivalent_diameter_area"] * scale,
        "eccentricity": features["eccentricity"], "solidity": features["solidity"],
        "orientation_rad": features["orientation"],
    }
    if values is not None:
        means = intensity_means(objects, len(ids), values, hed_densities if inputs.brightfield_rgb else None)
        names = [f"mean_{c}" for c in inputs.channel_names]
        if inputs.brightfield_rgb:
            names += ["hematoxylin_od", "eosin_od"]
        for i, name in enumerate(names):
            columns[name] = means[:, i].astype(np.float32)
    return columns


@dataclass
class SeamPixels:
    """Pixels of seam objects (global id, level-0 row and column, image values), in pieces."""

    pieces: list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]] = field(default_factory=list)

    def add(self, ids, rows, cols, values) -> None:
        if ids.size:
            self.pieces.append((ids, rows, cols, values))

    def pop_complete(self, continuing: np.ndarray) -> tuple[np.ndarray, ...] | None:
        """Remove and return (ids, rows, cols, values) of every object not in ``continuing``."""
        if not self.pieces:
            return None
        ids, rows, cols = (np.concatenate([p[i] for p in self.pieces]) for i in range(3))
        values = None if self.pieces[0][3] is None else np.concatenate([p[3] for p in self.pieces])
        later = np.isin(ids, continuing)
        self.pieces = [(ids[later], rows[later], cols[later], None if values is None else values[later])]
        if not later.any():
            self.pieces = []
        done = ~later
        return ids[done], rows[done], cols[done], None if values is None else values[done]


def read_tile(inputs: MeasureInputs, tile: Block) -> tuple[np.ndarray, np.ndarray | None]:
    """The labels (H, W) and image (C, H, W) of the tile."""
    labels = _read(inputs.labels, tile.core, inputs.source)
    image = None if inputs.image is None else _read(inputs.image, (slice(None), *tile.core), inputs.source)
    return labels, image


def measure_tile(inputs: MeasureInputs, tile: Block, labels: np.ndarray, image: np.ndarray | None,
                 shape: tuple[int, int], seams: SeamPixels, reach: int = 0) -> tuple[dict, np.ndarray]:
    """Columns for the objects inside ``tile`` (its ``labels`` and ``image``); seam objects' pixels go to ``seams``.

    A seam object comes within ``reach`` px of a tile edge that is not the image edge (0: touches
    it; more also joins the parts of a disconnected object lying on both sides of a seam).
    Returns the columns and the ids of the seam objects near the tile's bottom edge (their rest may
    lie in the next row of tiles).
    """
    window = tile.core
    ids, pixels = object_pixels(labels)
    if not pixels.n:
        return {}, np.zeros(0, ids.dtype)
    bbox = bounding_boxes(pixels.rows, pixels.cols, pixels.objects, pixels.n)
    (y0, y1), (x0, x1) = (window[0].start, window[0].stop), (window[1].start, window[1].stop)
    bottom = (bbox[:, 2] >= y1 - y0 - reach) & (y1 < shape[0])
    seam = bottom | ((bbox[:, 0] <= reach) & (y0 > 0)) | ((bbox[:, 1] <= reach) & (x0 > 0)) | \
        ((bbox[:, 3] >= x1 - x0 - reach) & (x1 < shape[1]))
    if seam.any():
        part = pixels.subset(np.flatnonzero(seam) + 1)
        seams.add(ids[1:][seam][part.objects - 1], part.rows + y0, part.cols + x0,
                  None if image is None else pixel_values(image, part.flat))
    inside = pixels.subset(np.flatnonzero(~seam) + 1)
    table = {}
    if inside.n:
        values = None if image is None else pixel_values(image, inside.flat)
        table = _table(inputs, ids[1:][~seam], object_features(labels, inside), y0, x0, values, inside.objects)
    return table, ids[1:][bottom]


def measure_assembled(inputs: MeasureInputs, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                      values: np.ndarray | None) -> dict[str, np.ndarray]:
    """Columns for whole objects given as pixel lists (level-0 rows and columns, any order).

    Each object's bounding box is copied, with a one-pixel gap, side by side onto a small canvas
    and measured there with the tile code; positions are shifted back.
    """
    unique, objects = compact_values(ids, ids.size)
    n = unique.size - 1
    bbox = bounding_boxes(rows, cols, objects, n)
    heights, widths = bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1]
    left = np.concatenate([[0], np.cumsum(widths + 1)[:-1]])  # canvas column of each object's box
    canvas_rows = rows - bbox[objects - 1, 0]
    canvas_cols = cols - bbox[objects - 1, 1] + left[objects - 1]
    shape = (int(heights.max()), int(left[-1] + widths[-1]))
    flat = canvas_rows * shape[1] + canvas_cols
    order = np.argsort(flat)
    pixels = ObjectPixels(shape, flat[order], canvas_rows[order], canvas_cols[order], objects[order], n)
    canvas = pixels.image()
    return _table(inputs, unique[1:], object_features(canvas, pixels), bbox[:, 0], bbox[:, 1] - left,
                  None if values is None else values[order], pixels.objects)


def iter_blocks(shape: tuple[int, int], block: int, margin: int) -> Iterator[Block]:
    return BlockPlan(shape=shape, block=block, margin=margin, halo=0, factor=1).blocks()


def tile_size(labels, block: int) -> int:
    """``block`` rounded down to a multiple of the label array's chunk width, so each chunk is read once."""
    chunks = getattr(labels, "chunksize", None) or getattr(labels, "chunks", None)  # dask / zarr
    step = int(chunks[-1]) if chunks else 0
    return block // step * step if 0 < step <= block else block


def measure_objects(inputs: MeasureInputs, out: Path, block: int = 2048, margin: int = 128, assign_region=None,
                    progress=None) -> int:
    """Stream the per-object table to ``out`` (Parquet); returns the number of objects.

    Connected objects of any size are measured whole. ``margin``: the parts of a disconnected
    object are joined when they lie within this many px of the same tile seam; otherwise the id
    would appear twice, which is an error. ``assign_region(columns) -> array of region ids`` adds
    a ``region`` column.
    """
    shape = tuple(inputs.labels.shape)
    writer = None
    total = 0
    tmp = out.with_name(f".{out.name}.partial")
    seams = SeamPixels()

    def write(columns: dict[str, np.ndarray]) -> None:
        nonlocal writer, total
        if not columns:
            return
        if assign_region is not None:
            columns["region"] = assign_region(columns).astype(np.int64)
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema)
        writer.write_table(table.cast(writer.schema))
        total += table.num_rows

    tiles = list(iter_blocks(shape, tile_size(inputs.labels, block), 0))
    try:
        with ThreadPoolExecutor(1) as reader:  # reads the next tile (zarr decodes without the GIL) during measuring
            pending = reader.submit(read_tile, inputs, tiles[0])
            for _, row in groupby(enumerate(tiles), key=lambda item: item[1].index[0]):  # a row of tiles at a time
                continuing = []
                for i, tile in row:
                    labels, image = pending.result()
                    if i + 1 < len(tiles):
                        pending = reader.submit(read_tile, inputs, tiles[i + 1])
                    columns, reaching_down = measure_tile(inputs, tile, labels, image, shape, seams, margin)
                    write(columns)
                    continuing.append(reaching_down)
                    if progress is not None:
                        progress.update(1)
                complete = seams.pop_complete(np.concatenate(continuing))
                if complete is not None and complete[0].size:
                    write(measure_assembled(inputs, *complete))
        if writer is not None:
            writer.close()
            writer = None
            _check_unique_ids(tmp, inputs.source, margin)
        else:  # no object at all: still write a valid (empty) table
            pq.write_table(pa.table({"id": pa.array([], pa.uint32())}), tmp)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    tmp.replace(out)
    return total


def _check_unique_ids(table: Path, source: str, margin: int) -> None:
    ids = np.sort(pq.read_table(table, columns=["id"])["id"].to_numpy())
    repeated = ids[1:][ids[1:] == ids[:-1]]
    if repeated.size:
        raise InputError(source, f"label {repeated[0]} (and {repeated.size - 1} more) has parts farther than "
                                 f"--margin {margin} px of a tile seam on either side: label its connected components "
                                 f"separately, or measure with a larger --margin")
