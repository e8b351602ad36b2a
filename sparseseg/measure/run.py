"""`sparseseg measure`: per-object table, per-region metrics, accuracy and the report for a slide."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import zarr
from tqdm.auto import tqdm

from sparseseg.annotations.points import PointSet, read_points_csv
from sparseseg.errors import InputError
from sparseseg.metrics.points import class_counts, match_points, pair_counts, typed_counts
from sparseseg.files.atomic import staged_outputs
from sparseseg.io.names import slide_stem
from sparseseg.io.labels import LABELS_RUN_KEY, label_source, labels_run_id, object_classes, resolve_labels
from sparseseg.files.lock import writer_lock
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.io.slide import select_channels
from sparseseg.measure.accuracy import accumulate, accuracy_tables
from sparseseg.measure.objects import MeasureInputs, measure_objects
from sparseseg.tiling.blocks import array_tiles
from sparseseg.measure.regions import parse_regions, region_table, stain_columns
from sparseseg.classes import class_colours, most_probable_class
from sparseseg.measure.report import (accuracy_curve, class_overlay_crop, densest_window, density_heatmap, overlay_crop,
                                      thumbnail_with_labels, write_report)

log = logging.getLogger(__name__)


def measure_slide(slide: str | Path, labels: str = "cells", regions: str = "grid:250um", truth: str | None = None,
                  out: str | Path | None = None, block: int = 2048, margin: int = 64, progress: bool = True,
                  report: bool = True, intensities: bool = True, threads: int = 2,
                  channels: tuple[str, ...] | None = None, truth_points: str | Path | None = None,
                  match_um: float = 3.0, fill_missing: bool = False, compare: str | None = None) -> dict:
    """Write objects.parquet, regions.parquet/.csv, metrics.json, [accuracy*.csv], report.html to ``out``.

    ``report=False`` skips the figures and report.html (batch runs that only need the tables);
    ``intensities=False`` leaves out the image-derived columns (the image is not read at all).
    ``threads`` tiles are measured at once. ``channels``: the image channels whose means the table holds
    (OME names or indices; default every channel of the slide). ``truth_points``: a CSV of annotated cells
    (``y,x[,class]``, level-0 pixels), against which the objects' centroids are matched one-to-one within
    ``match_um``: detection F, and with classes the F of each class (point_accuracy.csv). ``fill_missing``: read
    image and label chunks missing on disk as their fill value instead of refusing the slide. ``compare``:
    another segmentation of the slide (group or file, e.g. before fine-tuning) drawn beside ``labels`` on the
    report's crop, with both object counts.
    """
    if threads < 1:
        raise InputError(None, f"--threads must be at least 1, got {threads}")
    slide = Path(slide)
    info = open_omezarr_slide(slide, fill_missing=fill_missing)
    shape = tuple(info.shape[1:])
    if info.pixel_size_um is None:
        raise InputError(slide, "records no pixel size; re-ingest it with --pixel-size UM")
    out = Path(out) if out else slide.parent / f"{slide_stem(slide)}-measure"
    if out.exists() and not out.is_dir():
        raise InputError(out, "is a file; --out names the folder for the tables and the report")
    if not out.absolute().parent.is_dir():
        raise InputError(out, f"folder {out.absolute().parent} does not exist")
    label_array = resolve_labels(slide, labels, shape, fill_missing)
    before = (compare, resolve_labels(slide, compare, shape, fill_missing)) if compare is not None else None
    points = read_points_csv(Path(truth_points), shape) if truth_points is not None else None
    if not (math.isfinite(match_um) and match_um > 0):
        raise InputError(None, f"--match-um must be a positive number of micrometres, got {match_um}")
    with writer_lock(slide, "measure"), staged_outputs(out) as staging:
        summary = _measure(slide, info, label_array, labels, regions, truth, staging, block, margin, progress, report,
                           intensities, threads, select_channels(channels, info.channel_names, slide), points,
                           match_um / info.pixel_size_um[0], before)
        if "report" in summary:
            summary["report"] = str(out / Path(summary["report"]).name)
        if isinstance(label_array, zarr.Array) and (slide / "labels" / labels).is_dir():
            group = zarr.open_group(slide / "labels" / labels, mode="r+")
            group.attrs["sparseseg_measure"] = summary.pop("_attrs")
        summary.pop("_attrs", None)
    return summary


def _measure(slide: Path, info, label_array, labels: str, regions: str, truth: str | None, out: Path, block: int,
             margin: int, progress: bool, report: bool, intensities: bool, threads: int,
             channels: tuple[int, ...] | None, points: PointSet | None = None, match_px: float = 6.0,
             before: tuple[str, object] | None = None) -> dict:
    """Everything ``measure_slide`` writes, into the folder ``out``."""
    shape = tuple(info.shape[1:])
    image = zarr.open_group(slide, mode="r")["0"]
    rgb = info.n_channels == 3 and info.dtype == np.uint8 and channels in (None, (0, 1, 2))
    names = info.channel_names if channels is None else tuple(info.channel_names[i] for i in channels)
    classes, probabilities = object_classes(slide, labels, label_array)
    inputs = MeasureInputs(labels=label_array, image=image if intensities else None, pixel_size_um=info.pixel_size_um,
                           channel_names=names, brightfield_rgb=rgb, source=label_source(slide, labels),
                           image_source=str(slide / "0"), channels=channels, classes=classes,
                           class_probabilities=probabilities)
    region_set = parse_regions(regions, slide, shape, info.pixel_size_um[0])
    n_blocks = len(array_tiles(label_array, block))
    with tqdm(total=n_blocks, desc="measure", disable=not progress, dynamic_ncols=True) as bar:
        run_id = labels_run_id(slide, labels)
        n_objects = measure_objects(inputs, out / "objects.parquet", block=block, margin=margin,
                                    metadata={LABELS_RUN_KEY: run_id} if run_id else None,
                                    assign_region=region_set.assign_frame, progress=bar, threads=threads)
    objects = _region_columns(out / "objects.parquet")
    if "region" not in objects:
        objects["region"] = pd.Series(dtype=np.int64)
        objects["area_um2"] = pd.Series(dtype=np.float64)
    if classes and "class" not in objects:  # no object at all: the table has no class column to read
        objects["class"] = pd.Series(dtype=object)
    per_region = region_table(objects, region_set, classes)
    per_region.to_parquet(out / "regions.parquet", index=False)
    per_region.to_csv(out / "regions.csv", index=False)
    tissue_mm2 = sum(region_set.tissue_area_um2.values()) / 1e6
    summary = {"slide": str(slide), "labels": labels, "regions": region_set.kind, "cells": int(n_objects),
               "tissue_area_mm2": tissue_mm2, "density_per_mm2": n_objects / tissue_mm2 if tissue_mm2 else None,
               "area_median_um2": float(objects["area_um2"].median()) if n_objects else None}
    if classes:
        counts = objects["class"].value_counts()
        summary["classes"] = {c: {"cells": int(counts.get(c, 0)),
                                  "density_per_mm2": int(counts.get(c, 0)) / tissue_mm2 if tissue_mm2 else None,
                                  "fraction": int(counts.get(c, 0)) / n_objects if n_objects else None}
                              for c in classes}
    accuracy = accuracy_summary = accuracy_regions = None
    if truth is not None:
        truth_array = resolve_labels(slide, truth, shape)
        acc = accumulate(truth_array, label_array, block=block)
        t_regions = region_set.assign(*acc.truth_centroids.T) if len(acc.truth_centroids) else np.zeros(0, np.int64)
        p_regions = region_set.assign(*acc.pred_centroids.T) if len(acc.pred_centroids) else np.zeros(0, np.int64)
        accuracy, accuracy_summary, accuracy_regions = accuracy_tables(acc, t_regions, p_regions, region_set.names)
        accuracy.to_csv(out / "accuracy.csv", index=False)
        accuracy_regions.to_csv(out / "accuracy_regions.csv", index=False)
        summary["accuracy"] = accuracy_summary
        if report:
            accuracy_curve(accuracy, out / "accuracy.png")
    if points is not None:
        summary["point_accuracy"] = point_accuracy(out, points, match_px)
    (out / "metrics.json").write_text(json.dumps(summary, indent=2, default=float))
    if report:
        crop = _figures(slide, info, label_array, per_region, region_set, out, classes, probabilities)
        if before is not None:
            summary["compare"] = compare_crop(info, before[1], label_array, crop, before[0], labels, out)
        summary["report"] = str(write_report(out, slide, summary, per_region, accuracy, accuracy_summary,
                                             accuracy_regions))
    summary["_attrs"] = {"regions": region_set.kind, "cells": int(n_objects),
                         "density_per_mm2": summary["density_per_mm2"],
                         "per_region_cells": {str(r): int(c) for r, c in zip(per_region["region"], per_region["cells"])}}
    return summary


def point_accuracy(out: Path, points: PointSet, radius_px: float) -> dict:
    """Detection F of the objects' centroids against annotated cells, and per class when both have classes
    (each class's F, and HoVer-Net's F_c that also charges typing errors); written to
    ``out/point_accuracy.csv``."""
    names = pq.read_schema(out / "objects.parquet").names
    wanted = ["centroid_y_px", "centroid_x_px"] + (["class"] if "class" in names else [])
    objects = pq.read_table(out / "objects.parquet", columns=wanted).to_pandas() if "centroid_y_px" in names \
        else pd.DataFrame({c: [] for c in wanted})
    centroids = objects[["centroid_y_px", "centroid_x_px"]].to_numpy(np.float64)
    pairs = match_points(centroids, points.yx, radius_px)
    rows = [("all", pair_counts(pairs, len(centroids), len(points.yx)))]
    truth_classes = np.array(points.classes)
    typed = {}
    if "class" in objects and points.class_names:
        names_seen = sorted(set(points.class_names) | set(objects["class"]))
        rows += list(class_counts(centroids, objects["class"].to_numpy(), points.yx, truth_classes, names_seen,
                                  radius_px).items())
        typed = typed_counts(pairs, objects["class"].to_numpy(), truth_classes, names_seen)
    table = pd.DataFrame([{"class": name, "tp": c.tp, "fp": c.fp, "fn": c.fn, "precision": c.precision,
                           "recall": c.recall, "f1": c.f1,
                           "hovernet_f_c": typed[name].f1 if name in typed else np.nan} for name, c in rows])
    table.to_csv(out / "point_accuracy.csv", index=False)
    result = {"match_px": radius_px, "detection_f1": rows[0][1].f1, "precision": rows[0][1].precision,
              "recall": rows[0][1].recall}
    if len(rows) > 1:
        per_class = {name: c.f1 for name, c in rows[1:] if name in points.class_names}
        result["class_f1"] = per_class
        result["mean_class_f1"] = float(np.mean(list(per_class.values())))
        result["hovernet_f_c"] = {name: typed[name].f1 for name in per_class}  # Graham et al. 2019's F_c
    return result


def _region_columns(table: Path) -> pd.DataFrame:
    """The columns the region metrics need (region, area, stains) of the object table: a few numbers
    per cell, not the whole table, for slides with millions of cells."""
    names = pq.read_schema(table).names
    wanted = [c for c in ("region", "area_um2", "class") if c in names] + stain_columns(names)
    return pq.read_table(table, columns=wanted).to_pandas()


#: Side of the report's full-resolution overlay crop (level-0 pixels).
OVERLAY_PX = 400


def compare_crop(info, before_array, after_array, window, before: str, after: str, out: Path) -> dict:
    """before_after.png on the report's crop (image | ``before`` outlines | ``after`` outlines) and the objects
    of each in that crop."""
    image = np.asarray(info.levels[0][(slice(None), *window)])
    before_crop, after_crop = np.asarray(before_array[window]), np.asarray(after_array[window])
    overlay_crop(image, after_crop, out / "before_after.png", before=before_crop)
    return {"before": before, "after": after, "crop": [[s.start, s.stop] for s in window],
            "before_objects_in_crop": int(np.count_nonzero(np.unique(before_crop))),
            "after_objects_in_crop": int(np.count_nonzero(np.unique(after_crop)))}


def _figures(slide: Path, info, label_array, per_region: pd.DataFrame, region_set, out: Path,
             classes: tuple[str, ...] = (), probabilities: np.ndarray | None = None) -> tuple[slice, slice]:
    """The report's figures; returns the full-resolution crop's window (level-0 rows, columns)."""
    level = len(info.levels) - 1
    image_level = np.asarray(info.levels[level])
    factor = 2**level
    rows, cols = (np.minimum(np.arange(n) * factor + factor // 2, size - 1)
                  for n, size in zip(image_level.shape[1:], label_array.shape))
    labels_low = np.asarray(label_array[rows.min(): rows.max() + 1, cols.min(): cols.max() + 1])[
        np.ix_(rows - rows.min(), cols - cols.min())]  # the label under each thumbnail pixel's centre
    thumbnail_with_labels(image_level, labels_low, out / "thumbnail.png")
    names = pq.read_schema(out / "objects.parquet").names
    centroids = (pq.read_table(out / "objects.parquet", columns=["centroid_y_px", "centroid_x_px"]).to_pandas()
                 if "centroid_y_px" in names else pd.DataFrame({"centroid_y_px": [], "centroid_x_px": []}))
    window = densest_window(centroids["centroid_y_px"].to_numpy(), centroids["centroid_x_px"].to_numpy(),
                            tuple(label_array.shape), OVERLAY_PX)
    overlay_crop(np.asarray(info.levels[0][(slice(None), *window)]), np.asarray(label_array[window]),
                 out / "overlay.png")
    density_heatmap(per_region, region_set, out / "density.png")
    if classes:
        class_overlay_crop(np.asarray(info.levels[0][(slice(None), *window)]), np.asarray(label_array[window]),
                           np.maximum(most_probable_class(probabilities).astype(np.int64) - 1, 0),
                           class_colours(classes), out / "class_overlay.png")
        for name in classes:  # e.g. lymphocytes per mm2 in each region: the TIL density
            density_heatmap(per_region, region_set, out / f"density_{name}.png", f"{name}_density_per_mm2", name)
    return window
