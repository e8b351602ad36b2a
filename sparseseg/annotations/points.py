"""Classified point annotations (one click per cell, as pathologists mark cells) turned into training labels.

A CSV holds one row per cell: ``y,x`` in pixels of the image (row, column), optionally ``class``.
Following Qu et al. (MIDL 2019): each point becomes a small disk of known foreground (its own object,
so the disk's centre gets a positive distance), and the Voronoi edges between neighbouring points
become thin background strokes, since each Voronoi cell holds one nucleus. Everything else stays
unknown. A disk is never a complete object: its outline is not a true boundary, so it never enters
the valid distance set D (docs/science.md section 2) and only the inequality and sign terms read it.
Two encodings give the clicks more extent: ``cluster_labels`` (Qu et al.'s colour clusters, what the bundled
model v3 learnt from; `train --point-encoding clusters`) and ``point_filtered_labels`` (a model's objects
holding exactly one click, LACSS's idea; measured in docs/accuracy.md).
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
_CROSS = ndi.generate_binary_structure(2, 1)
#: Distance to a click (um) beyond which the cluster labels' distance feature saturates: a large nucleus' radius.
CLUSTER_REACH_UM = 6.0
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
            reader = csv.DictReader(fh)
            rows = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, f"not a readable points CSV ({exc})") from None
    if not {"y", "x"} <= set(header):  # checked without rows too: a stray text file is not "no cells"
        raise InputError(path, f"a points CSV needs the columns y,x[,class]; got {','.join(header) or 'nothing'}")
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
    partial = np.zeros(shape, np.uint32)
    class_map = np.zeros(shape, np.uint8)
    yx = np.asarray(yx, np.float64).reshape(-1, 2)
    if not len(yx):
        return partial, class_map
    distance, nearest = _voronoi(shape, yx)
    if voronoi:
        partial[_voronoi_edges(nearest) & (distance > EDGE_CLEARANCE * radius_px)] = BACKGROUND
    disk = distance <= radius_px
    partial[disk] = nearest[disk].astype(np.uint32) + np.uint32(FIRST_OBJECT - 1)
    if classes is not None:
        ids = (np.asarray(classes, np.int64) + 1).astype(np.uint8)
        class_map[disk] = np.concatenate([[0], ids])[nearest[disk]]
    return partial, class_map


def _voronoi(shape: tuple[int, int], yx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(distance to the nearest point, 1 + that point's index) per pixel; two points in one pixel: the later."""
    h, w = shape
    seeds = np.zeros(shape, np.int64)
    seeds[np.clip(yx[:, 0].astype(np.int64), 0, h - 1), np.clip(yx[:, 1].astype(np.int64), 0, w - 1)] = \
        np.arange(1, len(yx) + 1)
    distance, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    return distance, seeds[iy, ix]


def _voronoi_edges(nearest: np.ndarray) -> np.ndarray:
    """Pixels whose right or lower neighbour lies in another point's Voronoi cell."""
    edge = np.zeros(nearest.shape, bool)
    edge[:-1] |= nearest[:-1] != nearest[1:]
    edge[:, :-1] |= nearest[:, :-1] != nearest[:, 1:]
    return edge


@dataclass(frozen=True)
class PseudoLabels:
    """A partial instance map made from a model's objects and clicked cells, and each object's point index."""

    partial: np.ndarray        # uint32: 0 unknown, 1 background, >= 2 objects
    point_of: dict[int, int]   # object id -> index of the point it holds
    complete: frozenset        # ids of the model's objects kept whole (they held exactly one point)


def point_filtered_labels(objects: np.ndarray, yx: np.ndarray, radius_px: float, margin_px: float = 2.0
                          ) -> PseudoLabels:
    """Point-filtered pseudo-labels (LACSS's idea): a model's object holding exactly one click becomes a
    complete object ringed by background; every other click becomes a disk of ``radius_px``; pixels outside
    every object and at least ``margin_px`` from any object that was not kept, and ``3 * radius_px`` from any
    disk, are background (the clicks mark every cell, so what no model object and no click covers is
    background); the rest is unknown. ``objects``: uint labels (H, W), 0 background."""
    objects = np.asarray(objects)
    yx = np.asarray(yx, np.float64).reshape(-1, 2)
    h, w = objects.shape
    rows = np.clip(yx[:, 0].astype(np.int64), 0, h - 1)
    cols = np.clip(yx[:, 1].astype(np.int64), 0, w - 1)
    under = objects[rows, cols].astype(np.int64)
    counts = np.bincount(under, minlength=int(objects.max()) + 1)
    single = (under > 0) & (counts[under] == 1)
    partial = np.zeros((h, w), np.uint32)
    point_of: dict[int, int] = {}
    kept = np.zeros(counts.shape, np.int64)
    for i in np.flatnonzero(single):
        kept[under[i]] = FIRST_OBJECT + len(point_of)
        point_of[int(kept[under[i]])] = int(i)
    complete = frozenset(point_of)
    loose = np.flatnonzero(~single)
    seeds = np.zeros((h, w), np.int64)  # 1 + index of the loose click in each pixel
    seeds[rows[loose], cols[loose]] = loose + 1
    if len(loose):
        disk_distance, (iy, ix) = ndi.distance_transform_edt(seeds == 0, return_indices=True)
    else:  # no click left over: no disk anywhere
        disk_distance, iy, ix = np.full((h, w), np.inf), np.zeros((h, w), np.int64), np.zeros((h, w), np.int64)
    not_kept = (objects > 0) & (kept[objects] == 0)
    near_other = ndi.distance_transform_edt(~not_kept) < margin_px
    partial[(objects == 0) & (disk_distance > 3 * radius_px) & ~near_other] = BACKGROUND
    partial[objects > 0] = kept[objects[objects > 0]].astype(np.uint32)
    disk = (disk_distance <= radius_px) & (partial == 0) & (seeds[iy, ix] > 0)
    first_disk = FIRST_OBJECT + len(point_of)
    disk_id = np.zeros(len(yx) + 1, np.int64)
    disk_id[loose + 1] = first_disk + np.arange(len(loose))
    partial[disk] = disk_id[seeds[iy[disk], ix[disk]]].astype(np.uint32)
    point_of.update({int(first_disk + k): int(i) for k, i in enumerate(loose)})
    return PseudoLabels(partial, point_of, complete)


def cluster_labels(image: np.ndarray, yx: np.ndarray, radius_px: float, reach_px: float, seed: int = 0
                   ) -> np.ndarray:
    """Qu et al.'s cluster labels for clicked cells: a partial instance map whose objects have extents.

    Every pixel is described by its colour and its distance to the nearest click (clipped at ``reach_px``);
    k-means with three clusters splits the pixels into nucleus (the cluster nearest the clicks), background
    (the farthest) and unknown (the third). A click's object is the nucleus pixels of its Voronoi cell that
    connect to its disk (``radius_px``, always foreground); background pixels and the Voronoi edges away
    from the clicks and outside the nucleus cluster are background (where the edge crosses nucleus pixels,
    two touching nuclei meet: unknown). ``image``: (H, W, C) or (H, W). Objects are never complete: a cluster's
    edge is an estimate, so only the interfaces it draws enter the distance targets.
    """
    from scipy.cluster.vq import kmeans2

    h, w = image.shape[:2]
    yx = np.asarray(yx, np.float64).reshape(-1, 2)
    if not len(yx):
        return np.zeros((h, w), np.uint32)
    pixels = np.asarray(image, np.float64).reshape(h * w, -1)
    lo, hi = np.percentile(pixels, [1, 99], axis=0)
    colour = np.clip((pixels - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
    distance, nearest = _voronoi((h, w), yx)
    features = np.column_stack([colour, np.minimum(distance, reach_px).ravel() / reach_px])
    centres, assigned = kmeans2(features, 3, seed=seed, minit="++")
    order = np.argsort(centres[:, -1])   # by mean distance to the clicks
    cluster = np.empty(3, np.int64)
    cluster[order] = np.arange(3)        # 0 nucleus, 1 unknown, 2 background
    cluster = cluster[assigned].reshape(h, w)
    disks = distance <= radius_px        # each click's disk, always its own foreground
    nucleus = ndi.binary_fill_holes(ndi.binary_opening(cluster == 0, _CROSS)) | disks  # pale centres, no specks
    edge = _voronoi_edges(nearest)
    pieces, _ = ndi.label(nucleus & ~edge)
    # a piece is a click's object when its disk lies in it
    owner = np.zeros(pieces.max() + 1, np.int64)
    owner[pieces[disks]] = nearest[disks]
    owner[0] = 0
    objects = owner[pieces]
    out = np.zeros((h, w), np.uint32)
    far = distance > EDGE_CLEARANCE * radius_px
    out[(cluster == 2) & far] = BACKGROUND
    out[edge & far & ~nucleus] = BACKGROUND  # an edge through touching nuclei is no background
    objects[disks] = nearest[disks]
    out[objects > 0] = (objects[objects > 0] + FIRST_OBJECT - 1).astype(np.uint32)
    return out
