"""QuPath-importable GeoJSON of a label image: one detection Feature per object, streamed.

Objects are visited block by block with the ownership rule (each exactly once, whole) and their
outlines traced along pixel edges (``geometry.mask_to_polygon``), so re-rasterising a feature
gives back the object's pixels. Features are written as they come: memory stays bounded for
millions of cells. Coordinates are level-0 pixels (what QuPath expects for the image).
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from shapely.geometry import mapping

from sparseseg.geometry import mask_to_polygon
from sparseseg.measure.objects import iter_blocks, owned_labels

COLOUR = [255, 0, 0]


def _features(labels, block, shape, classification: str, measurements: dict[int, dict] | None,
              pixel_area_um2: float | None):
    window = np.asarray(labels[block.context])
    ids, local = owned_labels(window, block, shape)
    y0, x0 = block.context[0].start, block.context[1].start
    for k, box in enumerate(ndi.find_objects(local), start=1):
        if box is None:
            continue
        polygon = mask_to_polygon(local[box] == k, (box[0].start + y0, box[1].start + x0))
        object_id = int(ids[k])
        properties = {"objectType": "detection", "id": object_id, "isLocked": False,
                      "classification": {"name": classification, "color": COLOUR}}
        values = dict(measurements.get(object_id, {})) if measurements is not None else {}
        if pixel_area_um2 is not None:
            values.setdefault("Area um^2", float(polygon.area * pixel_area_um2))
        if values:
            properties["measurements"] = values
        yield {"type": "Feature", "id": f"cell-{object_id}", "geometry": mapping(polygon), "properties": properties}


def export_geojson(labels, out: Path, block: int = 2048, margin: int = 128, classification: str = "Nucleus",
                   measurements: dict[int, dict] | None = None, pixel_size_um: tuple[float, float] | None = None,
                   progress=None) -> int:
    """Write a FeatureCollection to ``out`` (gzip when it ends in .gz), atomically; returns the count."""
    out = Path(out)
    shape = tuple(labels.shape)
    tmp = out.with_name(f".{out.name}.partial")
    opener = gzip.open if out.suffix == ".gz" else open
    count = 0
    try:
        with opener(tmp, "wt", encoding="utf-8") as fh:
            fh.write('{"type": "FeatureCollection", "features": [\n')
            for b in iter_blocks(shape, block, margin):
                area = pixel_size_um[0] * pixel_size_um[1] if pixel_size_um else None
                for feature in _features(labels, b, shape, classification, measurements, area):
                    fh.write((",\n" if count else "") + json.dumps(feature, separators=(",", ":")))
                    count += 1
                if progress is not None:
                    progress.update(1)
            fh.write("\n]}\n")
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, out)
    return count
