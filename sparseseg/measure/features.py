"""Shape and intensity features of every object of a label image at once (regionprops definitions).

scikit-image's ``regionprops`` visits objects one by one in Python (~0.8 ms per nucleus); here the
same quantities come from a few passes over the labelled pixels: bincount sums for area, centroid,
second moments and mean intensities, and one vectorised pass over the border pixels for
scikit-image's perimeter estimator (Benkrid-Crookes weights, 4-connected border) and the convex
hull's candidate points. Only the hull itself (qhull) and its rasterisation (solidity) run per
object. The tests check every column against ``regionprops_table``.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import ConvexHull, QhullError
from skimage.measure import grid_points_in_poly

# Benkrid-Crookes perimeter weights indexed by 1 + 2 x (4-neighbours) + 10 x (diagonal neighbours) on the border
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_CROSS = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAGONALS = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def _neighbour(padded: np.ndarray, rows: np.ndarray, cols: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """Values of the 1-px zero-padded array at (rows + dy, cols + dx) of the unpadded image."""
    return padded[rows + 1 + dy, cols + 1 + dx]


def border_pixels(labels: np.ndarray, where: np.ndarray | None = None, padded: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(rows, cols, labels) of the pixels with a 4-neighbour of another label (the image edge counts as 0).

    ``where``: the flat indices of the labelled pixels and ``padded``: ``np.pad(labels, 1)``, when known.
    """
    where = np.flatnonzero(labels) if where is None else where
    padded = np.pad(labels, 1) if padded is None else padded
    rows, cols = np.divmod(where, labels.shape[1])
    own = labels.ravel()[where]
    border = np.zeros(rows.size, bool)
    for dy, dx in _CROSS:
        border |= _neighbour(padded, rows, cols, dy, dx) != own
    return rows[border], cols[border], own[border]


def perimeters(labels: np.ndarray, n: int, border=None, padded: np.ndarray | None = None) -> np.ndarray:
    """float64 (n + 1,): scikit-image's 4-neighbourhood perimeter of each label 1..n (index 0 unused)."""
    rows, cols, own = border if border is not None else border_pixels(labels)
    padded = np.pad(labels, 1) if padded is None else padded
    is_border = np.zeros(padded.shape, bool)
    is_border[rows + 1, cols + 1] = True
    code = np.ones(rows.size, np.int64)
    for weight, offsets in ((2, _CROSS), (10, _DIAGONALS)):
        for dy, dx in offsets:
            same = (_neighbour(padded, rows, cols, dy, dx) == own) & _neighbour(is_border, rows, cols, dy, dx)
            code += weight * same
    return np.bincount(own, weights=_PERIMETER_WEIGHTS[code], minlength=n + 1)


def convex_areas(n: int, bbox: np.ndarray, border) -> np.ndarray:
    """float64 (n,): pixels of each object's convex hull image, as ``skimage.morphology.convex_hull_image``.

    The hull of the pixel-edge midpoints of an object's border pixels is the hull scikit-image takes
    (its row/column end pixels are border pixels); the midpoints are generated and deduplicated for
    all objects at once, leaving one qhull call and one polygon rasterisation per object.
    """
    rows, cols, own = border
    offsets = np.array([[-1, 0], [1, 0], [0, -1], [0, 1]])  # half-pixel steps, in doubled coordinates
    points = (np.stack([2 * (rows - bbox[own - 1, 0]), 2 * (cols - bbox[own - 1, 1])], 1)[:, None] + offsets)
    owner = np.repeat(own, 4)
    points = points.reshape(-1, 2)
    order = np.lexsort((points[:, 1], points[:, 0], owner))  # by owner, then position
    points, owner = points[order], owner[order]
    fresh = np.r_[True, (np.diff(owner) != 0) | (np.diff(points, axis=0) != 0).any(1)]  # drop repeats
    points, owner = points[fresh] / 2.0, owner[fresh]
    starts = np.searchsorted(owner, np.arange(1, n + 2))
    areas = np.zeros(n)
    for k in range(n):
        try:
            hull = ConvexHull(points[starts[k]: starts[k + 1]])
        except QhullError:  # as scikit-image: an empty hull image
            continue
        shape = (int(bbox[k, 2] - bbox[k, 0]), int(bbox[k, 3] - bbox[k, 1]))
        areas[k] = np.count_nonzero(grid_points_in_poly(shape, hull.points[hull.vertices], binarize=False) >= 1)
    return areas


def object_features(labels: np.ndarray) -> dict[str, np.ndarray]:
    """Shape features of labels 1..n of ``labels`` (compact: every id present; 0 = background).

    One entry per label, in the array's pixels; keys follow regionprops: area, bbox (n, 4),
    centroid (n, 2), perimeter, equivalent_diameter_area, eccentricity, orientation, solidity.
    """
    n = int(labels.max())
    flat = labels.ravel()
    where = np.flatnonzero(flat)
    ids = flat[where]
    area = np.bincount(ids, minlength=n + 1).astype(np.float64)
    boxes = ndi.find_objects(labels, max_label=n)
    bbox = np.array([[b[0].start, b[1].start, b[0].stop, b[1].stop] for b in boxes], np.int64).reshape(-1, 4)
    width = labels.shape[1]
    # second moments relative to the box origin (as regionprops does on the object's crop): small numbers
    y = (where // width - bbox[ids - 1, 0]).astype(np.float64)
    x = (where % width - bbox[ids - 1, 1]).astype(np.float64)
    sy, sx = np.bincount(ids, y, n + 1)[1:], np.bincount(ids, x, n + 1)[1:]
    syy, sxx, sxy = (np.bincount(ids, v, n + 1)[1:] for v in (y * y, x * x, x * y))
    count = area[1:]
    cy, cx = sy / count, sx / count
    mu20, mu02, mu11 = syy - sy * cy, sxx - sx * cx, sxy - sy * cx  # central moments (y, x order as skimage)
    a, c, b = mu02 / count, mu20 / count, -mu11 / count  # inertia tensor [[a, b], [b, c]]
    half_trace, root = (a + c) / 2, np.sqrt(((a - c) / 2) ** 2 + b * b)
    l1, l2 = np.clip(half_trace + root, 0, None), np.clip(half_trace - root, 0, None)
    with np.errstate(invalid="ignore", divide="ignore"):
        eccentricity = np.where(l1 == 0, 0.0, np.sqrt(np.clip(1 - l2 / l1, 0, None)))
    orientation = np.where(a - c == 0, np.where(b < 0, np.pi / 4, -np.pi / 4), 0.5 * np.arctan2(-2 * b, c - a))
    padded = np.pad(labels, 1)
    border = border_pixels(labels, where, padded)
    convex = convex_areas(n, bbox, border)
    return {
        "area": count.astype(np.int64), "bbox": bbox,
        "centroid": np.stack([cy + bbox[:, 0], cx + bbox[:, 1]], 1),
        "perimeter": perimeters(labels, n, border, padded)[1:],
        "equivalent_diameter_area": np.sqrt(4 * count / np.pi),
        "eccentricity": eccentricity, "orientation": orientation, "solidity": count / convex,
    }


def intensity_means(labels: np.ndarray, image: np.ndarray, extra=None) -> np.ndarray:
    """float64 (n, C [+ extra]): mean of each channel of ``image`` (C, H, W) over labels 1..n.

    ``extra(values) -> (M, K)`` derives more per-pixel quantities (e.g. H&E optical densities) from
    the (M, C) values of the labelled pixels only, never from the whole image.
    """
    n = int(labels.max())
    where = np.flatnonzero(labels.ravel())
    ids = labels.ravel()[where]
    values = image.reshape(image.shape[0], -1)[:, where].T.astype(np.float32)
    if extra is not None:
        values = np.concatenate([values, extra(values)], 1)
    count = np.bincount(ids, minlength=n + 1)[1:]
    return np.stack([np.bincount(ids, values[:, ch], n + 1)[1:] for ch in range(values.shape[1])], 1) / count[:, None]
