"""QuPath-importable GeoJSON of a label image: one detection Feature per object, streamed.

Tiles are read once, without overlap, as ``sparseseg measure`` reads them: an object inside a tile
is traced there; one near a tile seam is set aside as pixels and traced whole once the row of
tiles below has been read, so objects of any size come out once and whole. Outlines follow pixel
edges (``geometry.mask_to_polygon``): re-rasterising a feature gives back the object's pixels.
Features are written as they come, so memory stays bounded for millions of cells. Coordinates
are level-0 pixels (what QuPath expects for the image).
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import mapping

from sparseseg.errors import InputError
from sparseseg.geometry.polygons import mask_to_polygon
from sparseseg.io.atomic import remove_leftovers, staged_file
from sparseseg.io.lock import writer_lock
from sparseseg.io.labels import label_source, resolve_labels
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.tiling.blocks import array_tiles
from sparseseg.tiling.pixels import bounding_boxes, object_pixels
from sparseseg.tiling.seams import (SeamPiece, SeamPixels, check_unique_ids, group_by_object, join_pieces,
                                    read_window, split_seam_objects, tiles_with_seams)

COLOUR = [255, 0, 0]


def _tile_outlines(labels, tile, shape: tuple[int, int], reach: int, source: str
                   ) -> tuple[list, SeamPiece | None, np.ndarray, np.ndarray]:
    """((id, polygon) of the objects inside ``tile``, seam pixels, ids reaching down, ids reaching right)."""
    ids, pixels = object_pixels(read_window(labels, tile.core, source))
    if not pixels.n:
        return [], None, np.zeros(0, ids.dtype), np.zeros(0, ids.dtype)
    bbox = bounding_boxes(pixels.rows, pixels.cols, pixels.objects, pixels.n)
    seam, piece, reaching_down, reaching_right = split_seam_objects(ids, pixels, bbox, tile, shape, reach)
    inside = np.flatnonzero(~seam) + 1
    local = pixels.subset(inside).image()
    y0, x0 = tile.core[0].start, tile.core[1].start
    outlines = [(int(ids[inside[k - 1]]), mask_to_polygon(local[box] == k, (box[0].start + y0, box[1].start + x0)))
                for k, box in enumerate(ndi.find_objects(local), start=1)]
    return outlines, piece, reaching_down, reaching_right


def _assembled_outlines(ids: np.ndarray, rows: np.ndarray, cols: np.ndarray) -> Iterator[tuple[int, object]]:
    """(id, polygon) of whole objects given as pixel lists (level-0 rows and columns)."""
    unique, _, order, starts = group_by_object(ids)
    for k in range(1, unique.size):
        chosen = order[starts[k - 1]: starts[k]]
        r, c = rows[chosen], cols[chosen]
        top, left = int(r.min()), int(c.min())
        mask = np.zeros((r.max() - top + 1, c.max() - left + 1), bool)
        mask[r - top, c - left] = True
        yield int(unique[k]), mask_to_polygon(mask, (top, left))


def _feature(object_id: int, polygon, classification: str, measurements: dict[int, dict] | None,
             pixel_area_um2: float | None) -> dict:
    properties = {"objectType": "detection", "id": object_id, "isLocked": False,
                  "classification": {"name": classification, "color": COLOUR}}
    values = dict(measurements.get(object_id, {})) if measurements is not None else {}
    if pixel_area_um2 is not None:
        values.setdefault("Area um^2", float(polygon.area * pixel_area_um2))
    if values:
        properties["measurements"] = values
    return {"type": "Feature", "id": f"cell-{object_id}", "geometry": mapping(polygon), "properties": properties}


def export_geojson(labels, out: Path, block: int = 2048, margin: int = 64, classification: str = "Nucleus",
                   measurements: dict[int, dict] | None = None, pixel_size_um: tuple[float, float] | None = None,
                   progress=None, source: str = "") -> int:
    """Write a FeatureCollection to ``out`` (gzip when it ends in .gz), atomically; returns the count.

    ``margin``: the parts of a disconnected object within this many px of the same tile seam are
    outlined together (a MultiPolygon); parts farther apart would repeat its id, which is an error.
    """
    out = Path(out)
    shape = tuple(labels.shape)
    opener = gzip.open if out.suffix == ".gz" else open
    area = pixel_size_um[0] * pixel_size_um[1] if pixel_size_um else None
    tiles = array_tiles(labels, block)
    written = []  # the ids, one array per tile: checked for repeats at the end
    count = 0
    with staged_file(out) as tmp:
        with opener(tmp, "wt", encoding="utf-8") as fh:
            fh.write('{"type": "FeatureCollection", "features": [\n')
            results = ((tile, *_tile_outlines(labels, tile, shape, margin, source)) for tile in tiles)
            for _, outlines, complete in tiles_with_seams(results, SeamPixels(), shape[1]):
                if complete:
                    outlines.extend(_assembled_outlines(*join_pieces(complete)[:3]))
                for object_id, polygon in outlines:
                    feature = _feature(object_id, polygon, classification, measurements, area)
                    fh.write((",\n" if count else "") + json.dumps(feature, separators=(",", ":")))
                    count += 1
                written.append(np.array([object_id for object_id, _ in outlines], np.int64))
                if progress is not None:
                    progress.update(1)
            fh.write("\n]}\n")
        check_unique_ids(np.concatenate(written) if written else np.zeros(0, np.int64), source, margin)
    return count


def check_output_file(out: Path) -> Path:
    """``out`` if a file can be written there: not a folder, in a folder that exists and is writable."""
    out = Path(out)
    if out.is_dir():
        raise InputError(out, "is a folder; give the file to write (e.g. cells.geojson.gz)")
    if not out.parent.is_dir():
        raise InputError(out, f"folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise InputError(out, f"folder {out.parent} is not writable")
    return out


def export_slide_geojson(slide: Path, labels: str, out: Path, classification: str = "Nucleus",
                         margin: int = 64) -> int:
    """``export_geojson`` of a slide's label group (or a label image file of its level-0 size)."""
    out = check_output_file(out)
    info = open_omezarr_slide(Path(slide))
    label_array = resolve_labels(Path(slide), labels, tuple(info.shape[1:]))
    with writer_lock(out, "export geojson", inside=False):
        remove_leftovers(out)
        return export_geojson(label_array, out, classification=classification, pixel_size_um=info.pixel_size_um,
                              margin=margin, source=label_source(Path(slide), labels))
