"""Pixel sets <-> polygons in level-0 pixel coordinates (x right, y down; pixel (i, j) = [j, j+1] x [i, i+1]).

Polygons traced along pixel edges rasterise back (pixel centre inside) to exactly the same pixels,
which is what makes GeoJSON exchange with QuPath lossless.
"""

from __future__ import annotations

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon
from skimage.draw import polygon as draw_polygon


def mask_to_polygon(mask: np.ndarray, offset_yx: tuple[int, int] = (0, 0)) -> Polygon | MultiPolygon:
    """The union of a boolean mask's pixel squares, traced along pixel edges (holes kept)."""
    oy, ox = offset_yx
    padded = np.zeros((mask.shape[0], mask.shape[1] + 2), np.int8)
    padded[:, 1:-1] = mask
    rows, cols = np.nonzero(np.diff(padded, axis=1))  # each run of True: its start, then its stop, row by row
    rects = shapely.box(ox + cols[::2], oy + rows[::2], ox + cols[1::2], oy + rows[::2] + 1)  # one box per run
    merged = shapely.union_all(rects)
    return shapely.simplify(merged, 0)  # drop collinear vertices left by the runs


def rasterize_polygon(geometry: Polygon | MultiPolygon, window: tuple[slice, slice]) -> np.ndarray:
    """bool mask over ``window`` (level-0 rows, cols): pixels whose centre lies inside the geometry."""
    rows, cols = window
    shape = (rows.stop - rows.start, cols.stop - cols.start)
    out = np.zeros(shape, bool)
    parts = geometry.geoms if isinstance(geometry, MultiPolygon) else [geometry]
    for part in parts:
        inside = _fill_ring(np.asarray(part.exterior.coords), rows.start, cols.start, shape)
        for hole in part.interiors:
            inside &= ~_fill_ring(np.asarray(hole.coords), rows.start, cols.start, shape)
        out |= inside
    return out


def _fill_ring(xy: np.ndarray, row0: int, col0: int, shape: tuple[int, int]) -> np.ndarray:
    filled = np.zeros(shape, bool)
    rr, cc = draw_polygon(xy[:, 1] - 0.5 - row0, xy[:, 0] - 0.5 - col0, shape)
    filled[rr, cc] = True
    return filled


def polygon_window(geometry, shape: tuple[int, int]) -> tuple[slice, slice]:
    """The pixel window (clipped to ``shape``) covering a geometry's bounds."""
    minx, miny, maxx, maxy = geometry.bounds
    return (slice(max(0, int(np.floor(miny))), min(shape[0], int(np.ceil(maxy)) + 1)),
            slice(max(0, int(np.floor(minx))), min(shape[1], int(np.ceil(maxx)) + 1)))
