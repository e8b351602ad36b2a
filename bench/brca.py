"""Cell detection and typing on BRCA-M2C through the real path: each image ingested (0.5 um/px) and segmented
with a model, every object's centroid and class compared with the annotated points (one-to-one within 3 um =
6 px at 20x): detection F, per-class F (each class's detections against its points) and their mean.

BRCA-M2C (BSD-3-Clause, ../shared/data/brca_m2c): the official `val` split (10 images) is never trained on.

    python bench/brca.py --model sparseseg/data/models/nuclei_he.pt [--split val] [--extra --tta]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import zarr
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import run  # noqa: E402  (a sparseseg command, its output appended to the log)

from sparseseg.metrics.points import PointCounts, class_counts, detection_counts  # noqa: E402

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "brca_m2c"
SPARSESEG = [sys.executable, "-m", "sparseseg.cli"]
RADIUS_UM = 3.0


def read_points(path: Path) -> tuple[np.ndarray, np.ndarray]:
    rows = list(csv.DictReader(open(path)))
    return np.array([[float(r["y"]), float(r["x"])] for r in rows]).reshape(-1, 2), np.array([r["class"] for r in rows])


def detections(slide: Path, name: str) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """(centroids (N, 2) in level-0 pixels, class names (N,), the model's classes) of a segmentation."""
    group = zarr.open_group(slide, mode="r")[f"labels/{name}"]
    labels = group["0"][...]
    n = int(labels.max())
    ids = np.arange(1, n + 1)
    centroids = np.array(ndi.center_of_mass(np.ones_like(labels), labels, ids)).reshape(-1, 2)
    classes = tuple(group.attrs["sparseseg"].get("classes") or ())
    if classes:
        probabilities = group["object_classes"][...]
        names = np.array(classes)[probabilities[1:].argmax(1)]
    else:
        names = np.array([""] * n)
    return centroids, names, classes


def score(model: Path, split: str = "val", threads: int | None = None, extra: list[str] = (), verbose: bool = False
          ) -> tuple[PointCounts, dict, float]:
    """(detection counts, {class: counts}, segment seconds per image) of ``model`` on a BRCA-M2C split."""
    work = Path(tempfile.mkdtemp(prefix="brca-"))
    log = work / "log.txt"
    index = [r for r in csv.DictReader(open(ROOT / "index.csv")) if r["split"] == split]
    detection, per_class, seconds = PointCounts(), {}, 0.0
    for row in index:
        name, pixel = row["name"], float(row["microns_per_pixel"])
        slide = work / f"{name[:12]}.ome.zarr"
        run(SPARSESEG + ["ingest", str(ROOT / "images" / f"{name}.png"), str(slide), "--pixel-size", str(pixel),
                         "--tissue", "none", "-q"], log)
        seconds += run(SPARSESEG + ["segment", str(slide), "--model", str(model), "-q"]
                       + (["--threads", str(threads)] if threads else []) + list(extra), log)
        centroids, names, classes = detections(slide, "cells")
        truth, truth_class = read_points(ROOT / "points" / f"{name}.csv")
        radius = RADIUS_UM / pixel
        counts = detection_counts(centroids, truth, radius)
        detection = detection + counts
        if classes:
            for c, k in class_counts(centroids, names, truth, truth_class, classes, radius).items():
                per_class[c] = per_class.get(c, PointCounts()) + k
        if verbose:
            print(f"{name[:23]}: {len(truth)} points, {len(centroids)} cells, detection F {counts.f1:.3f}", flush=True)
        shutil.rmtree(slide, ignore_errors=True)
    shutil.rmtree(work, ignore_errors=True)
    return detection, per_class, seconds / max(1, len(index))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--split", default="val")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="more `segment` flags (last)")
    args = parser.parse_args()
    detection, per_class, seconds = score(args.model, args.split, args.threads, args.extra, verbose=True)
    n = sum(1 for r in csv.DictReader(open(ROOT / "index.csv")) if r["split"] == args.split)
    print(f"model {args.model} {' '.join(args.extra)}; {n} {args.split} images; segment {seconds:.1f} s per image")
    print(f"detection F {detection.f1:.3f} (precision {detection.precision:.3f}, recall {detection.recall:.3f}; "
          f"within {RADIUS_UM:g} um)")
    if per_class:
        for c, k in per_class.items():
            print(f"  {c}: F {k.f1:.3f} (precision {k.precision:.3f}, recall {k.recall:.3f})")
        print(f"mean per-class F {np.mean([k.f1 for k in per_class.values()]):.3f}")


if __name__ == "__main__":
    main()
