"""Annotations inside the slide's OME-Zarr (encoding documented in docs/annotations.md).

- ``labels/annotations``: uint32 partial instance map (0 unknown, 1 background, k >= 2 objects),
  a label pyramid with exactly the image's levels;
- ``labels/foreground``: optional uint8 image-level foreground mask (1 foreground, 0 background);
- ``tables/annotations/{points,boundaries,complete}``: seeds (y, x, object id or 0), boundary
  polylines as rows (line id, y, x), ids of completely drawn objects; level-0 pixel coordinates;
  ``object_classes`` (object id, class index) and ``point_classes`` (class index per point, -1 none), the
  indices into the ``class_names`` attribute (sorted).
Every write goes to a hidden sibling first and is renamed into place when complete (label pyramids
via ``sparseseg.io.labels``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import zarr

from sparseseg.annotations.model import BACKGROUND, PatchAnnotation, boundary_from_polylines
from sparseseg.annotations.points import point_labels
from sparseseg.errors import InputError
from sparseseg.files.atomic import staged_directory

ANNOTATIONS = "annotations"  # both in io.labels.RESERVED_LABELS
FOREGROUND = "foreground"
TABLES = "tables/annotations"


def write_annotation_tables(slide_path: Path, points: np.ndarray, boundaries: list[np.ndarray],
                            complete: set[int] | frozenset[int], object_classes: dict[int, str] | None = None,
                            point_classes: list[str] | None = None) -> None:
    """Replace ``tables/annotations`` (points, boundary polylines, complete ids, cell classes)."""
    root_format = zarr.open_group(slide_path, mode="r+").require_group("tables").metadata.zarr_format
    rows = [np.column_stack([np.full(len(line), i, np.float64), line]) for i, line in enumerate(boundaries)]
    object_classes, point_classes = object_classes or {}, point_classes or [""] * len(points)
    names = sorted(set(object_classes.values()) | {c for c in point_classes if c})
    index = {n: i for i, n in enumerate(names)}
    arrays = {"points": np.asarray(points, np.float64).reshape(-1, 3),
              "boundaries": np.concatenate(rows) if rows else np.zeros((0, 3)),
              "complete": np.asarray(sorted(complete), np.uint32),
              "object_classes": np.array([[k, index[c]] for k, c in sorted(object_classes.items())],
                                         np.int64).reshape(-1, 2),
              "point_classes": np.array([index[c] if c else -1 for c in point_classes], np.int64)}
    with staged_directory(Path(slide_path) / TABLES, overwrite=True) as tmp:
        staging = zarr.open_group(tmp, mode="w", zarr_format=root_format)
        for key, value in arrays.items():
            target = staging.create_array(key, shape=value.shape, dtype=value.dtype,
                                          chunks=tuple(max(1, s) for s in value.shape))
            if value.size:
                target[...] = value
        staging.attrs["columns"] = {"points": ["y", "x", "object"], "boundaries": ["line", "y", "x"],
                                    "complete": ["object"], "object_classes": ["object", "class"],
                                    "point_classes": ["class"]}
        staging.attrs["class_names"] = names


def annotation_class_names(slide_path: str | Path) -> tuple[str, ...]:
    """The cell classes a slide's annotations name (sorted), empty when none."""
    root = zarr.open_group(slide_path, mode="r")
    return tuple(root[TABLES].attrs.get("class_names") or ()) if TABLES in root else ()


def read_annotation_patch(slide_path: str | Path, window: tuple[slice, slice], class_ids: np.ndarray | None = None,
                          point_radius: float = 3.0, voronoi: bool = True, cells_from_points: bool = True
                          ) -> PatchAnnotation:
    """The PatchAnnotation of a level-0 window (points and lines shifted/clipped to it).

    Points that lie in no annotated object, on a slide without a foreground mask, are one click per cell: they
    become disks of ``point_radius`` px and Voronoi edges of background where nothing else is annotated
    (``annotations.points``; computed with the points up to POINT_CONTEXT px around the window, so any window
    gets the same edges). With ``class_ids`` (the model's class index of each of the slide's ``class_names``),
    the class map holds each classified object's class on its pixels and each classified point's on its disk.
    ``cells_from_points=False`` leaves the points as drawn (calibration scores instances against outlines only)."""
    root = zarr.open_group(slide_path, mode="r")
    if f"labels/{ANNOTATIONS}" not in root:
        raise InputError(slide_path, "has no labels/annotations (run `sparseseg annotations import` first)")
    rows, cols = window
    partial = root[f"labels/{ANNOTATIONS}/0"][rows, cols]
    foreground = None
    if f"labels/{FOREGROUND}" in root:
        foreground = root[f"labels/{FOREGROUND}/0"][rows, cols].astype(bool)
    points = np.zeros((0, 2))
    point_classes = classes = None
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
        kinds = tables["point_classes"][...] if "point_classes" in tables else np.full(len(pts), -1)
        drawn_objects = partial  # the class map reads object ids before disks take (window-local) ids
        if cells_from_points and foreground is None and (pts[:, 2] == 0).any():
            shape = root[f"labels/{ANNOTATIONS}/0"].shape
            disks, disk_classes = _point_cells(pts[pts[:, 2] == 0, :2], kinds[pts[:, 2] == 0], window, shape,
                                               class_ids, point_radius, voronoi)
            fill = (partial == 0) & (disks > 0)
            offset = np.uint32(max(int(partial.max()), 1))  # disks never take an annotated object's id
            partial = np.where(fill, np.where(disks > BACKGROUND, disks + offset, disks), partial).astype(np.uint32)
            point_classes = disk_classes
        drawn = point_classes is not None  # free points' classes come with their disks
        classes = None if class_ids is None else _class_map(tables, drawn_objects, window, class_ids, point_radius,
                                                            skip_free_points=drawn)
        if classes is not None and drawn:
            classes = np.where(point_classes > 0, point_classes, classes).astype(np.uint8)
    return PatchAnnotation(partial=partial, boundary=boundary, points=points, foreground=foreground,
                           complete=complete, classes=classes)


#: Points this far (px) around a window take part in its Voronoi edges: beyond a few cell spacings, none matters.
POINT_CONTEXT = 64


def _point_cells(yx: np.ndarray, kinds: np.ndarray, window: tuple[slice, slice], shape: tuple[int, int],
                 class_ids: np.ndarray | None, radius: float, voronoi: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(disks + Voronoi edges as a partial map, class map) of free points over ``window``."""
    rows, cols = window
    y0, x0 = max(0, rows.start - POINT_CONTEXT), max(0, cols.start - POINT_CONTEXT)
    y1, x1 = min(shape[0], rows.stop + POINT_CONTEXT), min(shape[1], cols.stop + POINT_CONTEXT)
    near = (yx[:, 0] >= y0) & (yx[:, 0] < y1) & (yx[:, 1] >= x0) & (yx[:, 1] < x1)
    classes = None
    if class_ids is not None:
        classes = np.where(kinds[near] >= 0, class_ids[np.maximum(kinds[near], 0)], -1)
    partial, class_map = point_labels((y1 - y0, x1 - x0), yx[near] - (y0, x0), radius, classes, voronoi)
    crop = (slice(rows.start - y0, rows.stop - y0), slice(cols.start - x0, cols.stop - x0))
    return partial[crop], class_map[crop]


def _class_map(tables, partial: np.ndarray, window: tuple[slice, slice], class_ids: np.ndarray,
               radius: float, skip_free_points: bool = False) -> np.ndarray | None:
    """uint8 (H, W): 0 unknown, 1 + class on classified objects and on disks around classified points (those in
    no object left out with ``skip_free_points``: their disks carry their class already)."""
    if "object_classes" not in tables or not len(class_ids):
        return None
    out = np.zeros(partial.shape, np.uint8)
    objects = tables["object_classes"][...]
    if len(objects):
        lut = np.zeros(int(max(objects[:, 0].max(), partial.max())) + 1, np.uint8)
        lut[objects[:, 0]] = class_ids[objects[:, 1]] + 1
        out = lut[partial]
    pts, kinds = tables["points"][...], tables["point_classes"][...]
    rows, cols = window
    near = (kinds >= 0) & ~(skip_free_points & (pts[:, 2] == 0)) & (pts[:, 0] >= rows.start - radius) & (pts[:, 0] < rows.stop + radius) & \
        (pts[:, 1] >= cols.start - radius) & (pts[:, 1] < cols.stop + radius)
    r = int(np.ceil(radius))
    dy, dx = np.mgrid[-r: r + 1, -r: r + 1]
    disk = dy**2 + dx**2 <= radius**2
    for (y, x, _), kind in zip(pts[near], kinds[near]):
        cy, cx = int(y) - rows.start, int(x) - cols.start
        yy, xx = cy + dy[disk], cx + dx[disk]
        inside = (yy >= 0) & (yy < out.shape[0]) & (xx >= 0) & (xx < out.shape[1])
        out[yy[inside], xx[inside]] = class_ids[kind] + 1
    return out.astype(np.uint8)


ANNOTATION_COLOURS = [{"label-value": BACKGROUND, "rgba": [80, 80, 255, 96]}]
ANNOTATION_PROPERTIES = [{"label-value": BACKGROUND, "role": "background"}]
