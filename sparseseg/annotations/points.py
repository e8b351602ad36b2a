"""Classified point annotations (one click per cell, as pathologists mark cells) turned into training labels.

A CSV holds one row per cell: ``y,x`` in pixels of the image (row, column), optionally ``class``.
Following Qu et al. (MIDL 2019): each point becomes a small disk of known foreground (its own object,
so the disk's centre gets a positive distance), and the Voronoi edges between neighbouring points
become thin background strokes, since each Voronoi cell holds one nucleus. Everything else stays
unknown. A disk is never a complete object: its outline is not a true boundary, so it never enters
the valid distance set D (docs/science.md section 2) and only the inequality and sign terms read it.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from sparseseg.annotations.model import BACKGROUND, FIRST_OBJECT
from sparseseg.errors import InputError

#: Disk radius of a point, in um: inside even a small lymphocyte nucleus (about 5 um across).
POINT_RADIUS_UM = 1.5
#: Voronoi edges closer than this to a point (in disk radii) are left unknown: two touching nuclei
#: share an edge that is not background.
EDGE_CLEARANCE = 2.0


@dataclass(frozen=True)
class PointSet:
    """Points (N, 2) of (y, x) pixel coordinates and, per point, a class name or ''."""

    yx: np.ndarray
    classes: tuple[str, ...]

    @property
    def class_names(self) -> tuple[str, ...]:
        """The classes that occur, sorted (the order class ids follow)."""
        return tuple(sorted({c for c in self.classes if c}))


def read_points_csv(path: Path, shape: tuple[int, int] | None = None) -> PointSet:
    """A points CSV (header ``y,x[,class]``); a point outside ``shape`` or a malformed row is refused."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
            header = rows[0].keys() if rows else []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"not a readable points CSV ({exc})") from None
    if rows and not {"y", "x"} <= set(header):
        raise InputError(path, f"a points CSV needs the columns y,x[,class]; got {','.join(header)}")
    yx, classes = [], []
    for line, row in enumerate(rows, start=2):
        try:
            y, x = float(row["y"]), float(row["x"])
        except (TypeError, ValueError):
            raise InputError(path, f"line {line}: y and x must be numbers, got {row['y']!r}, {row['x']!r}") from None
        if not (np.isfinite(y) and np.isfinite(x)) or y < 0 or x < 0 or \
                (shape is not None and (y >= shape[0] or x >= shape[1])):
            raise InputError(path, f"line {line}: point (y={y:g}, x={x:g}) lies outside the "
                                   f"{'image' if shape is None else f'{shape[0]}x{shape[1]} image'}")
        yx.append((y, x))
        classes.append((row.get("class") or "").strip())
    return PointSet(np.asarray(yx, np.float64).reshape(-1, 2), tuple(classes))


def class_indices(points: PointSet, class_ids: dict[str, int]) -> np.ndarray:
    """Each point's class index (``class_ids`` of its name), -1 where it has none."""
    return np.array([class_ids[c] if c else -1 for c in points.classes], np.int64)


def point_labels(shape: tuple[int, int], yx: np.ndarray, radius_px: float, classes: np.ndarray | None = None,
                 voronoi: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(partial instance map, class map) of an image annotated with points (N, 2) of (y, x).

    partial: uint32, disks as objects 2..N+1, Voronoi edges background (1), the rest unknown (0).
    class map: uint8, 0 unknown, ``classes[i] + 1`` on point i's disk (``classes``: -1 where unknown).
    """
    h, w = shape
    partial = np.zeros(shape, np.uint32)
    class_map = np.zeros(shape, np.uint8)
    yx = np.asarray(yx, np.float64).reshape(-1, 2)
    if not len(yx):
        return partial, class_map
    rows = np.clip(yx[:, 0].astype(np.int64), 0, h - 1)
    cols = np.clip(yx[:, 1].astype(np.int64), 0, w - 1)
    seeds = np.zeros(shape, np.int64)
    seeds[rows, cols] = np.arange(1, len(rows) + 1)  # two points in one pixel: the later one
    distance, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    nearest = seeds[iy, ix]
    if voronoi:
        edge = np.zeros(shape, bool)
        edge[:-1] |= nearest[:-1] != nearest[1:]
        edge[:, :-1] |= nearest[:, :-1] != nearest[:, 1:]
        partial[edge & (distance > EDGE_CLEARANCE * radius_px)] = BACKGROUND
    disk = distance <= radius_px
    partial[disk] = nearest[disk].astype(np.uint32) + np.uint32(FIRST_OBJECT - 1)
    if classes is not None:
        ids = (np.asarray(classes, np.int64) + 1).astype(np.uint8)
        class_map[disk] = np.concatenate([[0], ids])[nearest[disk]]
    return partial, class_map
