"""Per-object measurements of a label image, tile by tile, each object measured exactly once, whole.

Tiles cover the label array without overlap (aligned to its chunks, so each chunk is decoded
once; image chunks holding no labelled pixel are not decoded at all). An object inside one tile
is measured there. An object touching (or within the margin of) a tile edge that is not the
image edge is a *seam object*: its pixels and image values are set aside until the row of tiles
below has been read (nothing later can add to it), then it is measured from its assembled
pixels. Objects of any size are measured whole; memory holds one tile per thread plus the seam
objects' pixels of about one tile row. Rows stream to a Parquet file.
"""

from __future__ import annotations

import ctypes
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import zarr

from sparseseg.measure.features import intensity_means, object_features
from sparseseg.tiling.blocks import Block, array_tiles
from sparseseg.tiling.pixels import ObjectPixels, bounding_boxes, object_pixels
from sparseseg.tiling.seams import (SeamPiece, SeamPixels, check_unique_ids, group_by_object, join_pieces,
                                    read_window, split_seam_objects, tiles_with_seams)


@dataclass(frozen=True)
class MeasureInputs:
    """Lazy sources: ``labels`` (Y, X) and ``image`` (C, Y, X) support slicing (zarr / numpy)."""

    labels: object
    image: object | None
    pixel_size_um: tuple[float, float]
    channel_names: tuple[str, ...]
    brightfield_rgb: bool
    source: str = ""  # the labels, named in read errors
    image_source: str = ""  # the image, named in read errors
    channels: tuple[int, ...] | None = None  # image channels measured (``channel_names`` are theirs); None: all
    classes: tuple[str, ...] = ()            # cell classes of the segmentation (empty: untyped)
    class_probabilities: np.ndarray | None = None  # (ids + 1, K) mean class probabilities, row = object id


class TileBuffers(threading.local):
    """Arrays reused from tile to tile, one set per thread.

    Zarr decodes straight into them: no fresh pages to fault in for every tile, and no freed tile
    buffers left scattered over the threads' heaps (resident memory would creep up with the tiles).
    """

    def array(self, name: str, shape: tuple[int, ...], dtype) -> np.ndarray:
        dtype = np.dtype(dtype)
        size = int(np.prod(shape)) * dtype.itemsize
        buffer = self.__dict__.get(name)
        if buffer is None or buffer.size < size:
            buffer = self.__dict__[name] = np.empty(size, np.uint8)
        return buffer[:size].view(dtype).reshape(shape)


def _table(inputs: MeasureInputs, ids: np.ndarray, features: dict, dy, dx, means: np.ndarray | None
           ) -> dict[str, np.ndarray]:
    """Columns, one row per object: ``features`` in local pixels shifted by (dy, dx) to level-0 pixels, and
    ``means`` (``intensity_means``) named after the channels."""
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
    if inputs.classes:
        columns.update(class_columns(inputs.classes, inputs.class_probabilities, ids))
    if means is not None:
        names = [f"mean_{c}" for c in inputs.channel_names]
        if inputs.brightfield_rgb:
            names += ["hematoxylin_od", "eosin_od"]
        for i, name in enumerate(names):
            columns[name] = means[:, i].astype(np.float32)
    return columns


def class_columns(classes: tuple[str, ...], probabilities: np.ndarray, ids: np.ndarray) -> dict[str, np.ndarray]:
    """``class`` (the most probable), ``class_probability`` and ``p_<class>`` per object, from the segmentation's
    per-object mean class probabilities."""
    p = probabilities[ids.astype(np.int64)]
    best = p.argmax(1)
    columns = {"class": np.asarray(classes, dtype=object)[best],
               "class_probability": p[np.arange(len(p)), best].astype(np.float32)}
    for i, name in enumerate(classes):
        columns[f"p_{name}"] = p[:, i].astype(np.float32)
    return columns


def _window_shape(window: tuple[slice, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(len(range(*s.indices(n))) for s, n in zip(window, shape))


def read_labels(inputs: MeasureInputs, tile: Block, buffers: TileBuffers | None = None) -> np.ndarray:
    """The labels (H, W) of the tile (in a reused array of ``buffers`` when given)."""
    labels = inputs.labels
    out = None if buffers is None else buffers.array("labels", _window_shape(tile.core, labels.shape), labels.dtype)
    return read_window(labels, tile.core, inputs.source, out)


def read_image(inputs: MeasureInputs, tile: Block, pixels: ObjectPixels, buffers: TileBuffers | None = None
               ) -> np.ndarray:
    """The image (C, H, W) of the tile wherever ``pixels`` lie.

    Image chunks holding no labelled pixel are not decoded (most of a slide is background), so
    those parts of the returned array are undefined.
    """
    image, window = inputs.image, (slice(None), *tile.core)
    if buffers is None or not isinstance(image, zarr.Array):
        return read_window(image, window, inputs.image_source)
    out = buffers.array("image", _window_shape(window, image.shape), image.dtype)
    (y0, y1), (x0, x1) = (tile.core[0].start, tile.core[0].stop), (tile.core[1].start, tile.core[1].stop)
    cy, cx = image.chunks[-2:]
    occupied = pixels.occupied((y0, x0), (cy, cx))
    if occupied.all():
        return read_window(image, window, inputs.image_source, out)
    for i, j in np.argwhere(occupied):
        top, left = (y0 // cy + i) * cy, (x0 // cx + j) * cx
        rows, cols = slice(max(top, y0), min(top + cy, y1)), slice(max(left, x0), min(left + cx, x1))
        read_window(image, (slice(None), rows, cols), inputs.image_source,
                    out[:, rows.start - y0: rows.stop - y0, cols.start - x0: cols.stop - x0])
    return out


def measure_tile(inputs: MeasureInputs, tile: Block, labels: np.ndarray, shape: tuple[int, int], reach: int = 0,
                 buffers: TileBuffers | None = None) -> tuple[dict, SeamPiece | None, np.ndarray, np.ndarray]:
    """(columns, seam pixels, ids reaching down, ids reaching right) for ``tile`` given its ``labels``; the
    image is read here, only where there are objects.

    Columns: the objects inside the tile. A seam object comes within ``reach`` px of a tile edge
    that is not the image edge (0: touches it; more also joins the parts of a disconnected object
    lying on both sides of a seam); its pixels are returned as a ``SeamPiece``, and the
    ids of those near the tile's bottom and right edges (their rest may lie in later tiles).
    """
    ids, pixels = object_pixels(labels)
    if not pixels.n:
        return {}, None, np.zeros(0, ids.dtype), np.zeros(0, ids.dtype)
    image = None if inputs.image is None else read_image(inputs, tile, pixels, buffers)
    if image is not None and inputs.channels is not None:
        image = image[list(inputs.channels)]
    features = object_features(labels, pixels)  # all objects: cheaper than splitting first; seam rows dropped
    seam, piece, reaching_down, reaching_right = split_seam_objects(ids, pixels, features["bbox"], tile, shape,
                                                                    reach, image)
    table = {}
    if not seam.all():
        means = None if image is None else intensity_means(image.reshape(image.shape[0], -1), pixels.flat,
                                                           pixels.objects, pixels.n, inputs.brightfield_rgb)
        columns = _table(inputs, ids[1:], features, tile.core[0].start, tile.core[1].start, means)
        table = {name: column[~seam] for name, column in columns.items()}
    return table, piece, reaching_down, reaching_right


def measure_assembled(inputs: MeasureInputs, ids: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                      values: np.ndarray | None, max_canvas: int = 2**20) -> Iterator[dict[str, np.ndarray]]:
    """Columns for whole objects given as pixel lists (level-0 rows and columns, any order), in batches.

    Objects of similar height are copied, each in its bounding box with a one-pixel gap, side by
    side onto canvases of at most about ``max_canvas`` pixels (one object at least) and measured
    there with the tile code; positions are shifted back.
    """
    unique, objects, order, starts = group_by_object(ids)
    bbox = bounding_boxes(rows, cols, objects, unique.size - 1)
    heights, widths = bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1]
    by_height = np.argsort(heights, kind="stable")
    first = 0
    while first < by_height.size:  # heights ascending: a batch's canvas is its last object's height high
        span = np.cumsum(widths[by_height[first:]] + 1) * heights[by_height[first:]]
        last = first + max(1, int(np.searchsorted(span, max_canvas, side="right")))
        members = np.sort(by_height[first:last])
        pixels = np.concatenate([order[starts[k]: starts[k + 1]] for k in members])
        yield _measure_on_canvas(inputs, unique[1:][members], bbox[members], rows[pixels], cols[pixels],
                                 np.repeat(np.arange(1, members.size + 1), starts[members + 1] - starts[members]),
                                 None if values is None else values[:, pixels])
        first = last


def _measure_on_canvas(inputs: MeasureInputs, ids: np.ndarray, bbox: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                       objects: np.ndarray, values: np.ndarray | None) -> dict[str, np.ndarray]:
    """Columns for objects 1..n (``objects`` per pixel, level-0 ``rows``/``cols``, boxes ``bbox``, image
    ``values`` (C, M)) on one canvas."""
    heights, widths = bbox[:, 2] - bbox[:, 0], bbox[:, 3] - bbox[:, 1]
    left = np.concatenate([[0], np.cumsum(widths + 1)[:-1]])  # canvas column of each object's box
    canvas_rows = rows - bbox[objects - 1, 0]
    canvas_cols = cols - bbox[objects - 1, 1] + left[objects - 1]
    shape = (int(heights.max()), int(left[-1] + widths[-1]))
    flat = canvas_rows * shape[1] + canvas_cols
    order = np.argsort(flat)
    pixels = ObjectPixels(shape, flat[order], canvas_rows[order], canvas_cols[order], objects[order], ids.size)
    means = None if values is None else intensity_means(values, order, pixels.objects, ids.size,
                                                        inputs.brightfield_rgb)
    return _table(inputs, ids, object_features(pixels.image(), pixels), bbox[:, 0], bbox[:, 1] - left, means)


def _measure_all_assembled(inputs: MeasureInputs, complete: list[tuple[SeamPiece, np.ndarray]]
                           ) -> list[dict[str, np.ndarray]]:
    return list(measure_assembled(inputs, *join_pieces(complete)))


def measure_objects(inputs: MeasureInputs, out: Path, block: int = 2048, margin: int = 64, assign_region=None,
                    progress=None, threads: int = 2, metadata: dict[str, str] | None = None) -> int:
    """Stream the per-object table to ``out`` (Parquet); returns the number of objects.

    Connected objects of any size are measured whole. ``margin``: the parts of a disconnected
    object are joined when they lie within this many px of the same tile seam; otherwise the id
    would appear twice, which is an error. ``assign_region(columns) -> array of region ids`` adds
    a ``region`` column. ``threads`` tiles are read and measured at once. ``metadata``: key-value pairs stored
    in the Parquet schema (the labels' segment run id).
    """
    shape = tuple(inputs.labels.shape)
    writer = None
    total = 0
    tmp = out.with_name(f".{out.name}.partial")
    seams = SeamPixels()

    def write(batches: list[dict[str, np.ndarray]]) -> None:
        """One row group per call: a tile row's tables together (fewer, larger Parquet writes)."""
        nonlocal writer, total
        batches = [columns for columns in batches if columns]
        if not batches:
            return
        columns = {name: np.concatenate([b[name] for b in batches]) for name in batches[0]}
        if assign_region is not None:
            columns["region"] = assign_region(columns).astype(np.int64)
        table = pa.table(columns)
        if writer is None:
            writer = pq.ParquetWriter(tmp, table.schema.with_metadata(metadata or {}))
        writer.write_table(table.cast(writer.schema))
        total += table.num_rows

    buffers = TileBuffers()

    def measure(tile: Block) -> tuple[Block, dict, SeamPiece | None, np.ndarray, np.ndarray]:
        return tile, *measure_tile(inputs, tile, read_labels(inputs, tile, buffers), shape, margin, buffers)

    tiles = array_tiles(inputs.labels, block)
    try:
        # tiles in parallel threads (zarr decoding and the compiled loops release the GIL), results in order;
        # the seam objects a tile completes are measured in the pool too; one write per tile row
        with ThreadPoolExecutor(threads) as pool:
            results = _bounded_map(pool, measure, tiles, 2 * threads)
            tables, assembled = [], deque()
            for tile, columns, complete in tiles_with_seams(results, seams, shape[1]):
                tables.append(columns)
                if complete:
                    assembled.append(pool.submit(_measure_all_assembled, inputs, complete))
                if progress is not None:
                    progress.update(1)
                if tile.core[1].stop >= shape[1]:  # a tile row done: rows in a fixed order
                    while assembled:
                        tables.extend(assembled.popleft().result())
                    write(tables)
                    tables = []
        release_free_memory()
        if writer is not None:
            writer.close()
            writer = None
            _check_unique_ids(tmp, inputs.source, margin)
        else:  # no object at all: still write a valid (empty) table
            pq.write_table(pa.table({"id": pa.array([], pa.uint32())}).replace_schema_metadata(metadata or {}), tmp)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)  # nothing half-written is left behind
        raise
    tmp.replace(out)
    return total


@lru_cache(maxsize=1)
def _libc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return None


def release_free_memory() -> None:
    """Return freed heap pages to the OS (glibc ``malloc_trim``), as Dask's memory docs recommend.

    Each run's threads (and zarr's decoding threads) leave freed memory in their own malloc arenas;
    without a trim, a long-lived process that measures slide after slide grows by tens of MB each time.
    Called once per run: trimming per tile makes every later allocation fault its pages in again.
    """
    libc = _libc()
    if libc is not None and hasattr(libc, "malloc_trim"):
        libc.malloc_trim(0)


def _bounded_map(pool: ThreadPoolExecutor, function, items: list, window: int) -> Iterator:
    """``pool.map`` with at most ``window`` items submitted ahead, so finished results never pile up."""
    pending = deque()
    for item in items:
        pending.append(pool.submit(function, item))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _check_unique_ids(table: Path, source: str, margin: int) -> None:
    check_unique_ids(pq.read_table(table, columns=["id"])["id"].to_numpy(), source, margin)
