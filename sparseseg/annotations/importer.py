"""`sparseseg annotations import`: label images or QuPath GeoJSON into the slide's OME-Zarr."""

from __future__ import annotations

import logging
from pathlib import Path

import dask.array as da
import numpy as np

from sparseseg.annotations.geojson import read_qupath_geojson
from sparseseg.annotations.model import BACKGROUND, encode_dense
from sparseseg.annotations.store import (ANNOTATION_COLOURS, ANNOTATION_PROPERTIES, ANNOTATIONS, FOREGROUND, TABLES,
                                         write_annotation_tables)
from sparseseg.errors import InputError
from sparseseg.files.atomic import remove_leftovers
from sparseseg.files.lock import writer_lock
from sparseseg.io.labels import image_levels, open_label_image, write_label_pyramid

log = logging.getLogger(__name__)

KINDS = ("partial", "dense", "foreground")


def import_label_image(slide_path: Path, path: Path, kind: str, overwrite: bool) -> dict:
    labels = open_label_image(path)
    _, shapes, _, chunk = image_levels(slide_path)
    if tuple(labels.shape) != tuple(shapes[0]):
        raise InputError(path, f"label image is {labels.shape[0]}x{labels.shape[1]} but the slide's level 0 is "
                               f"{shapes[0][0]}x{shapes[0][1]} (height x width)")
    if np.issubdtype(labels.dtype, np.signedinteger) and int(labels.min().compute()) < 0:
        raise InputError(path, "label image has negative values")
    labels = labels.rechunk((chunk, chunk))
    if kind == "foreground":
        mask = (labels > 0).astype(np.uint8)
        write_label_pyramid(slide_path, FOREGROUND, lambda w: mask[w].compute(scheduler="sync"), np.uint8,
                            overwrite, "image-level foreground mask",
                            colors=[{"label-value": 1, "rgba": [255, 200, 0, 96]}],
                            properties=[{"label-value": 1, "role": "foreground"}])
        return {"foreground_fraction": float(mask.mean().compute())}
    if kind == "dense":  # 0 = background, k -> k + 1, every object complete
        partial = encode_dense(labels).astype(np.uint32)
    else:
        partial = labels.astype(np.uint32)
    ids = np.unique(partial[partial > BACKGROUND].compute()) if kind == "dense" else np.zeros(0, np.uint32)
    write_label_pyramid(slide_path, ANNOTATIONS, lambda w: partial[w].compute(scheduler="sync"), np.uint32,
                        overwrite, "partial instance map", colors=ANNOTATION_COLOURS, properties=ANNOTATION_PROPERTIES)
    write_annotation_tables(slide_path, np.zeros((0, 3)), [], set(ids.tolist()))
    counts = da.bincount(da.minimum(partial.ravel(), 2).astype(np.int64), minlength=3).compute()
    return {"unknown_fraction": float(counts[0] / counts.sum()), "objects_complete": int(ids.size)}


def import_geojson(slide_path: Path, path: Path, class_roles: dict[str, str] | None, overwrite: bool) -> dict:
    _, shapes, _, _ = image_levels(slide_path)
    imported = read_qupath_geojson(path, shapes[0], class_roles)
    write_label_pyramid(slide_path, ANNOTATIONS, imported.rasterize, np.uint32, overwrite, "partial instance map",
                        colors=ANNOTATION_COLOURS, properties=ANNOTATION_PROPERTIES)
    write_annotation_tables(slide_path, imported.points, imported.boundaries, imported.complete,
                            imported.object_classes, imported.point_classes)
    classes = sorted(set(imported.object_classes.values()) | {c for c in imported.point_classes if c})
    return {"objects": imported.n_objects, "objects_complete": len(imported.complete), "cell_classes": classes,
            "points": len(imported.points), "boundary_lines": len(imported.boundaries)}


def import_annotations(slide_path: str | Path, path: str | Path, kind: str = "partial",
                       class_roles: dict[str, str] | None = None, overwrite: bool = False) -> dict:
    """Import ``path`` (GeoJSON, or a label image of kind partial|dense|foreground) into the slide."""
    slide_path, path = Path(slide_path), Path(path)
    if not path.exists():
        raise InputError(path, "no such file or directory")
    if kind not in KINDS:
        raise InputError(None, f"--kind must be one of {KINDS}, got {kind!r}")
    is_geojson = path.name.lower().endswith((".geojson", ".json", ".geojson.gz", ".json.gz"))
    target = slide_path / "labels" / (FOREGROUND if kind == "foreground" and not is_geojson else ANNOTATIONS)
    if target.exists() and not overwrite:  # fail before any parsing or writing
        raise InputError(target, "already exists (use --overwrite to replace it)")
    image_levels(slide_path)  # a slide to import into, before taking its lock
    with writer_lock(slide_path, "annotations import"):
        for output in (target, slide_path / TABLES):
            remove_leftovers(output)
        if is_geojson:
            return import_geojson(slide_path, path, class_roles, overwrite)
        return import_label_image(slide_path, path, kind, overwrite)
