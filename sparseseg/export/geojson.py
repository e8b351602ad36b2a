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
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import mapping

from sparseseg.errors import InputError
from sparseseg.geometry.polygons import mask_to_polygon
from sparseseg.files.atomic import check_output_file, remove_leftovers, staged_file
from sparseseg.files.lock import writer_lock
from sparseseg.classes import class_colours
from sparseseg.io.labels import LABELS_RUN_KEY, label_source, labels_run_id, object_classes, resolve_labels
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


#: measure's object-table columns as QuPath names them for a nucleus (its own cell detection uses these).
QUPATH_MEASUREMENTS = {"area_um2": "Nucleus: Area µm^2", "perimeter_um": "Nucleus: Perimeter µm",
                       "circularity": "Nucleus: Circularity", "solidity": "Nucleus: Solidity",
                       "eccentricity": "Nucleus: Eccentricity", "equivalent_diameter_um": "Nucleus: Diameter µm",
                       "hematoxylin_od": "Nucleus: Hematoxylin OD mean", "eosin_od": "Nucleus: Eosin OD mean"}
OBJECT_TYPES = ("detection", "cell")
_NAMESPACE = uuid.UUID("6f1c3a52-8d0e-4f4e-9a57-5b1d2b9e7c10")  # sparseseg's namespace for object UUIDs


class MeasurementTable:
    """Per-object measurements from ``sparseseg measure``'s objects.parquet, looked up by label id.

    Only the columns QuPath gets are held, as arrays sorted by id (a few numbers per cell).
    """

    def __init__(self, path: Path):
        import pyarrow.parquet as pq

        schema = pq.read_schema(path)
        names = schema.names
        self.labels_run_id = (schema.metadata or {}).get(LABELS_RUN_KEY.encode(), b"").decode() or None
        wanted = [c for c in names if c in QUPATH_MEASUREMENTS or c.startswith("mean_")] + \
            [c for c in ("area_um2", "perimeter_um") if c in names]
        table = pq.read_table(path, columns=["id", *dict.fromkeys(wanted)]).to_pandas().sort_values("id")
        if "area_um2" in table and "perimeter_um" in table:
            perimeter = table["perimeter_um"].to_numpy(np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                table["circularity"] = np.clip(4 * np.pi * table["area_um2"] / perimeter**2, 0, 1)
        self.ids = table["id"].to_numpy(np.int64)
        self.columns = {QUPATH_MEASUREMENTS.get(c, f"Nucleus: {c[5:]} mean" if c.startswith("mean_") else c):
                        table[c].to_numpy(np.float64) for c in table.columns if c != "id"}

    def get(self, object_id: int) -> dict[str, float]:
        row = int(np.searchsorted(self.ids, object_id))
        if row >= self.ids.size or self.ids[row] != object_id:
            return {}
        return {name: float(values[row]) for name, values in self.columns.items() if np.isfinite(values[row])}


class ObjectClasses:
    """Each object's cell class (the most probable), its colour and its class probabilities, by label id."""

    def __init__(self, names: tuple[str, ...], probabilities: np.ndarray):
        self.names, self.probabilities = names, probabilities
        self.colours = [list(c) for c in class_colours(names)]

    def classification(self, object_id: int) -> tuple[dict, dict[str, float]]:
        """({name, color}, measurements: the class probability and one probability per class)."""
        p = self.probabilities[object_id]
        best = int(p.argmax())
        values = {"Class probability": float(p[best])}
        values.update({f"Probability: {name}": float(v) for name, v in zip(self.names, p)})
        return {"name": self.names[best], "color": self.colours[best]}, values


def _feature(object_id: int, polygon, classification: str, measurements, pixel_area_um2: float | None,
             object_type: str = "detection", namespace: str = "", classes: ObjectClasses | None = None) -> dict:
    """One QuPath object (0.4 to 0.6 read it): a UUID id, objectType, classification with a colour (the object's
    cell class when the segmentation has classes), numeric measurements, and for cells the nucleus as
    ``nucleusGeometry``."""
    values = dict(measurements.get(object_id)) if measurements is not None else {}
    kind = {"name": classification, "color": COLOUR}
    if classes is not None:
        kind, probabilities = classes.classification(object_id)
        values.update(probabilities)
    properties = {"objectType": object_type, "id": object_id,  # the label id (QuPath reads its own keys only)
                  "classification": kind,
                  "metadata": {"sparseseg_id": str(object_id)}}  # QuPath 0.6 keeps metadata on detections too
    if pixel_area_um2 is not None:
        values.setdefault("Nucleus: Area µm^2", float(polygon.area * pixel_area_um2))
    if values:
        properties["measurements"] = values
    feature = {"type": "Feature", "id": str(uuid.uuid5(_NAMESPACE, f"{namespace}/{object_id}")),
               "geometry": mapping(polygon), "properties": properties}
    if object_type == "cell":  # a nucleus-only cell: its outline is the nucleus'
        feature["nucleusGeometry"] = feature["geometry"]
    return feature


def export_geojson(labels, out: Path, block: int = 2048, margin: int = 64, classification: str = "Nucleus",
                   measurements=None, pixel_size_um: tuple[float, float] | None = None, progress=None,
                   source: str = "", object_type: str = "detection", classes: ObjectClasses | None = None) -> int:
    """Write a FeatureCollection to ``out`` (gzip when it ends in .gz), atomically; returns the count.

    ``margin``: the parts of a disconnected object within this many px of the same tile seam are
    outlined together (a MultiPolygon); parts farther apart would repeat its id, which is an error.
    ``measurements``: an object with ``get(id) -> {name: value}`` (``MeasurementTable``).
    ``object_type``: QuPath "detection" objects, or "cell" objects (the nucleus as cell and nucleus).
    ``classes``: each object's cell class as its classification (instead of ``classification``).
    """
    if object_type not in OBJECT_TYPES:
        raise InputError(None, f"--object-type must be one of {', '.join(OBJECT_TYPES)}, got {object_type!r}")
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
                    feature = _feature(object_id, polygon, classification, measurements, area, object_type,
                                       source, classes)
                    fh.write((",\n" if count else "") + json.dumps(feature, separators=(",", ":")))
                    count += 1
                written.append(np.array([object_id for object_id, _ in outlines], np.int64))
                if progress is not None:
                    progress.update(1)
            fh.write("\n]}\n")
        check_unique_ids(np.concatenate(written) if written else np.zeros(0, np.int64), source, margin)
    return count


def export_slide_geojson(slide: Path, labels: str, out: Path, classification: str = "Nucleus",
                         margin: int = 64, object_type: str = "detection", measurements: Path | None = None,
                         overwrite: bool = False, fill_missing: bool = False) -> int:
    """``export_geojson`` of a slide's label group (or a label image file of its level-0 size), with the
    measurements of ``sparseseg measure``'s object table when given; label chunks missing on disk are refused
    unless ``fill_missing``."""
    out = check_output_file(out, overwrite)
    table = None
    if measurements is not None:
        if not Path(measurements).is_file():
            raise InputError(measurements, "no such object table (objects.parquet from `sparseseg measure`)")
        try:
            table = MeasurementTable(Path(measurements))
        except Exception as exc:  # not a Parquet table, or one without an id column
            raise InputError(measurements, f"not an object table of `sparseseg measure` ({exc})") from None
    info = open_omezarr_slide(Path(slide))
    label_array = resolve_labels(Path(slide), labels, tuple(info.shape[1:]), fill_missing)
    run_id = labels_run_id(Path(slide), labels)
    if table is not None and table.labels_run_id and run_id and table.labels_run_id != run_id:
        raise InputError(measurements, f"was measured on other labels (segment run {table.labels_run_id[:8]}), not on "
                                       f"{label_source(Path(slide), labels)} (run {run_id[:8]}): its areas would go "
                                       "to other cells; run `sparseseg measure` on these labels")
    names, probabilities = object_classes(Path(slide), labels, label_array)
    with writer_lock(out, "export geojson", inside=False):
        remove_leftovers(out)
        return export_geojson(label_array, out, classification=classification, pixel_size_um=info.pixel_size_um,
                              margin=margin, source=label_source(Path(slide), labels), measurements=table,
                              object_type=object_type,
                              classes=ObjectClasses(names, probabilities) if names else None)
