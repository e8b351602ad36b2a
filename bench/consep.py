"""Cell typing from sparse class labels on CoNSeP through the real path (issue 24): `sparseseg train` on 22 tiles
with every outline but only a fraction of the nuclei's classes, then `ingest` + `segment` on the 5 held-out
tiles; detection F_d and HoVer-Net's typed F_c per class (centroids paired one-to-one within 3 um = 12 px at
40x; Graham et al. 2019), plus instance F1@0.5 / AJI.

CoNSeP (../shared/data/consep) is benchmark-only, like MoNuSeg: never commit it or a model trained on it.
The 27 tiles are the official train split; the first 22 (index order) train, the last 5 are held out.

    python bench/consep.py --fractions 10 100 --minutes 30 [--init sparseseg/data/models/nuclei_he.pt]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SHARED, SPARSESEG, pooled, run  # noqa: E402
from brca import detections  # noqa: E402

from sparseseg.measure.accuracy import accumulate  # noqa: E402
from sparseseg.metrics.points import PointCounts, TypedCounts, match_points, pair_counts, typed_counts  # noqa: E402
from sparseseg.train.data import write_class_table  # noqa: E402

ROOT = SHARED / "consep"
RADIUS_UM = 3.0
BUNDLED = Path(__file__).resolve().parents[1] / "sparseseg" / "data" / "models" / "nuclei_he.pt"
#: HoVer-Net's published CoNSeP values (all labels, vqdang/hover_net README): F_d and F_c per class.
HOVERNET = {"detection": 0.748, "epithelial": 0.635, "inflammatory": 0.631, "spindle": 0.566, "other": 0.426}


def tiles() -> tuple[list[str], list[str], float]:
    """(train names, held-out names, pixel size um) in index order."""
    rows = list(csv.DictReader(open(ROOT / "index.csv")))
    names = [r["name"] for r in rows]
    return names[:22], names[22:], float(rows[0]["microns_per_pixel"])


def truth_of(name: str) -> tuple[np.ndarray, dict[int, str]]:
    """(instance labels, label -> class) of a tile."""
    labels = tifffile.imread(ROOT / "labels" / f"{name}.tif").astype(np.int64)
    table = {int(r["label"]): r["class"] for r in csv.DictReader(open(ROOT / "classes" / f"{name}.csv"))}
    return labels, table


def write_training_folder(names: list[str], fraction: float, folder: Path, seed: int) -> int:
    """Every outline as a complete object (partial encoding: 1 background, label + 1 objects) and a class
    table keeping ``fraction`` of the nuclei's classes (drawn at random per tile); returns the classes kept."""
    (folder / "images").mkdir(parents=True)
    (folder / "annotations").mkdir()
    rng = np.random.default_rng(seed)
    kept = 0
    for name in names:
        labels, table = truth_of(name)
        shutil.copy(ROOT / "images" / f"{name}.png", folder / "images" / f"{name}.png")
        tifffile.imwrite(folder / "annotations" / f"{name}.tif",
                         np.where(labels > 0, labels + 1, 1).astype(np.uint32))
        present = np.array(sorted(set(np.unique(labels)) - {0} & set(table)))
        chosen = present[rng.random(len(present)) < fraction]
        write_class_table(folder / "annotations" / f"{name}.csv",
                          {int(label) + 1: table[int(label)] for label in chosen})
        kept += len(chosen)
    return kept


def evaluate(model: Path, names: list[str], pixel_size: float, work: Path, log: Path, threads: int | None) -> dict:
    """Ingest + segment each held-out tile; pooled F_d, HoVer-Net F_c per class, F1@0.5 and AJI."""
    detection, typed, accs = PointCounts(), {}, []
    for name in names:
        labels, table = truth_of(name)
        slide = work / f"{name}.ome.zarr"
        shutil.rmtree(slide, ignore_errors=True)
        tif = work / f"{name}.tif"
        tifffile.imwrite(tif, iio.imread(ROOT / "images" / f"{name}.png")[..., :3], photometric="rgb",
                         resolution=(1e4 / pixel_size, 1e4 / pixel_size), resolutionunit="CENTIMETER")
        run(SPARSESEG + ["ingest", str(tif), str(slide), "-q", "--tissue", "none"], log)
        run(SPARSESEG + ["segment", str(slide), "--model", str(model), "-q"]
            + (["--threads", str(threads)] if threads else []), log)
        centroids, predicted_class, classes = detections(slide, "cells")
        rows = list(csv.DictReader(open(ROOT / "classes" / f"{name}.csv")))
        truth_yx = np.array([[float(r["centroid_y"]), float(r["centroid_x"])] for r in rows]).reshape(-1, 2)
        truth_class = np.array([r["class"] for r in rows])
        pairs = match_points(centroids, truth_yx, RADIUS_UM / pixel_size)
        detection = detection + pair_counts(pairs, len(centroids), len(truth_yx))
        for c, k in typed_counts(pairs, predicted_class, truth_class, sorted(set(table.values()))).items():
            typed[c] = typed.get(c, TypedCounts()) + k
        accs.append(accumulate(labels, zarr.open_group(slide, mode="r")["labels/cells/0"][...]))
        shutil.rmtree(slide, ignore_errors=True)
    scores = pooled(accs)
    return {"F_d": detection.f1, "F_c": {c: k.f1 for c, k in sorted(typed.items())}, "f1": scores["f1"],
            "aji": scores["aji"], "classes": list(classes)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fractions", type=float, nargs="+", default=[10.0, 100.0], help="percent of classes kept")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--init", type=Path, default=BUNDLED, help="start from this checkpoint ('none': scratch)")
    parser.add_argument("--train-args", default="--class-weight 5 --train-pixel-size 0.5",
                        help="extra `sparseseg train` arguments")
    parser.add_argument("--threads", type=int, help="torch threads for segment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/consep"))
    parser.add_argument("--json", type=Path, help="append each result as a JSON line here")
    args = parser.parse_args()
    if not ROOT.exists():
        raise SystemExit(f"needs the research data in {ROOT} (benchmark only, never committed)")
    train_names, held_out, pixel_size = tiles()
    results = {}
    for fraction in args.fractions:
        work = args.workdir / f"{fraction:g}pct"
        shutil.rmtree(work, ignore_errors=True)
        kept = write_training_folder(train_names, fraction / 100, work, args.seed)
        model = work / "model.pt"
        init = ["--init", str(args.init)]  # 'none': from scratch (train's own default is the bundled model)
        train_s = run(SPARSESEG + ["train", "--images", str(work / "images"), "--annotations", str(work / "annotations"),
                                   "--pixel-size", str(pixel_size), "--minutes", str(args.minutes), "--out", str(model),
                                   "-q", "--seed", str(args.seed)] + init + args.train_args.split(), work / "log.txt")
        scores = evaluate(model, held_out, pixel_size, work, work / "log.txt", args.threads)
        results[fraction] = scores
        row = {"fraction_pct": fraction, "classes_kept": kept, "minutes": args.minutes, "train_s": round(train_s),
               "init": str(args.init), "train_args": args.train_args, **scores}
        typed = "  ".join(f"F_{c[:4]} {v:.3f}" for c, v in scores["F_c"].items())
        print(f"consep {fraction:g}% of classes ({kept} nuclei typed)  F_d {scores['F_d']:.3f}  {typed}  "
              f"F1@0.5 {scores['f1']:.3f}  AJI {scores['aji']:.3f}  train {train_s:.0f} s", flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row) + "\n")
    print("HoVer-Net (all labels, GPU): " + "  ".join(f"{k} {v:.3f}" for k, v in HOVERNET.items()))
    if len(results) > 1:
        low, high = min(results), max(results)
        ratio = {c: results[low]["F_c"][c] / max(1e-9, results[high]["F_c"][c]) for c in results[high]["F_c"]}
        print(f"{low:g}% / {high:g}%: F_d {results[low]['F_d'] / max(1e-9, results[high]['F_d']):.2f}  "
              + "  ".join(f"F_{c[:4]} {v:.2f}" for c, v in ratio.items()))


if __name__ == "__main__":
    main()
