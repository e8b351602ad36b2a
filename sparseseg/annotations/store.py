"""Annotations inside the slide's OME-Zarr (encoding documented in docs/annotations.md).

- ``labels/annotations``: uint32 partial instance map (0 unknown, 1 background, k >= 2 objects),
  a label pyramid with exactly the image's levels;
- ``labels/foreground``: optional uint8 image-level foreground mask (1 foreground, 0 background);
- ``tables/annotations/{points,boundaries,complete}``: seeds (y, x, object id or 0), boundary
  polylines as rows (line id, y, x), ids of completely drawn objects; level-0 pixel coordinates.
Every write goes to a hidden sibling first and is renamed into place when complete (label pyramids
via ``sparseseg.io.labels``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from sparseseg.annotations.model import BACKGROUND, PatchAnnotation, boundary_from_polylines
from sparseseg.errors import InputError
from sparseseg.files.atomic import staged_directory

ANNOTATIONS = "annotations"  # both in io.labels.RESERVED_LABELS
FOREGROUND = "foreground"
TABLES = "tables/annotations"


def write_annotation_tables(slide_path: Path, points: np.ndarray, boundaries: list[np.ndarray],
                            complete: set[int] | frozenset[int]) -> None:
    """Replace ``tables/annotations`` (points, boundary polylines, complete ids)."""
    root_format = zarr.open_group(slide_path, mode="r+").require_group("tables").metadata.zarr_format
    rows = [np.column_stack([np.full(len(line), i, np.float64), line]) for i, line in enumerate(boundaries)]
    arrays = {"points": np.asarray(points, np.float64).reshape(-1, 3),
              "boundaries": np.concatenate(rows) if rows else np.zeros((0, 3)),
              "complete": np.asarray(sorted(complete), np.uint32)}
    with staged_directory(Path(slide_path) / TABLES, overwrite=True) as tmp:
        staging = zarr.open_group(tmp, mode="w", zarr_format=root_format)
        for key, value in arrays.items():
            target = staging.create_array(key, shape=value.shape, dtype=value.dtype,
                                          chunks=tuple(max(1, s) for s in value.shape))
            if value.size:
                target[...] = value
        staging.attrs["columns"] = {"points": ["y", "x", "object"], "boundaries": ["line", "y", "x"],
                                    "complete": ["object"]}


def read_annotation_patch(slide_path: str | Path, window: tuple[slice, slice]) -> PatchAnnotation:
    """The PatchAnnotation of a level-0 window (points and lines shifted/clipped to it)."""
    root = zarr.open_group(slide_path, mode="r")
    if f"labels/{ANNOTATIONS}" not in root:
        raise InputError(slide_path, "has no labels/annotations (run `sparseseg annotations import` first)")
    rows, cols = window
    partial = root[f"labels/{ANNOTATIONS}/0"][rows, cols]
    foreground = None
    if f"labels/{FOREGROUND}" in root:
        foreground = root[f"labels/{FOREGROUND}/0"][rows, cols].astype(bool)
    points = np.zeros((0, 2))
    boundary = None
    complete: frozenset[int] = frozenset()
    if TABLES in root:
        tables = root[TABLES]
        pts = tables["points"][...]
        inside = (pts[:, 0] >= rows.start) & (pts[:, 0] < rows.stop) & (pts[:, 1] >= cols.start) & (pts[:, 1] < cols.stop)
        points = pts[inside, :2] - (rows.start, cols.start)
        lines = tables["boundaries"][...]
        if len(lines):
            shifted = lines[:, 1:] - (rows.start, cols.start)
            polylines = [shifted[lines[:, 0] == i] for i in np.unique(lines[:, 0])]
            boundary = boundary_from_polylines(polylines, partial.shape, clip=True)
        present = set(np.unique(partial).tolist())
        complete = frozenset(int(k) for k in tables["complete"][...] if int(k) in present)
    return PatchAnnotation(partial=partial, boundary=boundary, points=points, foreground=foreground,
                           complete=complete)


ANNOTATION_COLOURS = [{"label-value": BACKGROUND, "rgba": [80, 80, 255, 96]}]
ANNOTATION_PROPERTIES = [{"label-value": BACKGROUND, "role": "background"}]
