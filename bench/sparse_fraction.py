"""Benchmark: accuracy vs annotated fraction, each model trained on the same CPU-time budget.

Sparse annotations come from dense ground truth: 100/25/10/5/1 % of pixels kept by GP masks
(Sketchpose protocol), and "10 complete objects + background strokes" per image. Datasets (from
../shared/data, not committed): DSB2018 fluorescence (fixed train/test split by image index) and
MoNuSeg 2018 train (H&E, 0.25 um/px rescaled 2x to 0.5 um/px; 10 train / 3 test images). Prints
F1@0.5, mAP (0.5:0.95) and PQ@0.5 over the held-out images (counts summed over images).

    python bench/sparse_fraction.py [--cpu-minutes 4] [--datasets dsb monuseg] [--threads N]
"""

from __future__ import annotations

import argparse
import csv
import shutil
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import torch
from skimage.transform import resize

from sparseseg.annotations.sparsify import objects_and_background, sparsify_dense
from sparseseg.infer.predictor import Predictor
from sparseseg.metrics.matching import THRESHOLDS, matching, scores_from_counts
from sparseseg.model import UNetConfig
from sparseseg.train.data import folder_sources
from sparseseg.train.loop import TrainConfig, train

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SETTINGS = ["100%", "25%", "10%", "5%", "1%", "10 objects + bg"]


def load_dsb(n_train: int = 60, n_test: int = 20):
    rows = list(csv.DictReader(open(SHARED / "dsb2018" / "fluo" / "index.csv")))
    rows = [r for r in rows if int(r["H"]) * int(r["W"]) <= 520 * 700]  # skip the few huge frames
    train_rows, test_rows = rows[1::3][:n_train], rows[0::7][:n_test]

    def read(r):
        image = iio.imread(SHARED / "dsb2018" / "fluo" / "images" / f"{r['id']}.png")
        labels = tifffile.imread(SHARED / "dsb2018" / "fluo" / "labels" / f"{r['id']}.tif")
        return image[None] if image.ndim == 2 else image[..., :1].transpose(2, 0, 1), labels

    return [read(r) for r in train_rows], [read(r) for r in test_rows], 1


def load_monuseg():
    rows = list(csv.DictReader(open(SHARED / "monuseg_train" / "index.csv")))

    def read(r):
        image = iio.imread(SHARED / "monuseg_train" / "images" / f"{r['name']}.png")[..., :3]
        labels = tifffile.imread(SHARED / "monuseg_train" / "labels" / f"{r['name']}.tif")
        shape = (labels.shape[0] // 2, labels.shape[1] // 2)  # 0.25 -> 0.5 um/px
        image = (resize(image, shape, order=1, anti_aliasing=True, preserve_range=True)).astype(np.uint8)
        labels = resize(labels, shape, order=0, anti_aliasing=False, preserve_range=True).astype(np.int64)
        return image.transpose(2, 0, 1), labels

    data = [read(r) for r in rows]
    return data[:10], data[10:], 3


def annotate(labels: np.ndarray, setting: str, seed: int) -> np.ndarray:
    if setting.endswith("%"):
        return sparsify_dense(labels, float(setting[:-1]) / 100, seed=seed).partial
    return objects_and_background(labels, 10, seed=seed, background_fraction=0.25).partial


def evaluate(model, test) -> dict:
    counts = {t: [0, 0, 0, 0.0] for t in THRESHOLDS}  # tp, n_true, n_pred, iou sum
    for image, truth in test:
        pred = model.instances(image)
        for s in matching(truth, pred):
            c = counts[s.threshold]
            c[0] += s.tp
            c[1] += s.tp + s.fn
            c[2] += s.tp + s.fp
            c[3] += s.mean_matched_iou * s.tp
    scores = [scores_from_counts(t, *c) for t, c in counts.items()]
    return {"f1": scores[0].f1, "mAP": float(np.mean([s.accuracy for s in scores])), "pq": scores[0].panoptic_quality}


def run(dataset: str, cpu_minutes: float, workdir: Path, patch: int) -> list[dict]:
    train_data, test, channels = load_dsb() if dataset == "dsb" else load_monuseg()
    rows = []
    for setting in SETTINGS:
        folder = workdir / dataset / setting.replace(" ", "_").replace("%", "pct").replace("+", "")
        shutil.rmtree(folder, ignore_errors=True)
        (folder / "images").mkdir(parents=True)
        (folder / "annotations").mkdir()
        for i, (image, labels) in enumerate(train_data):
            name = f"{i:03d}"
            iio.imwrite(folder / "images" / f"{name}.png", image[0] if channels == 1 else image.transpose(1, 2, 0))
            tifffile.imwrite(folder / "annotations" / f"{name}.tif", annotate(labels, setting, seed=i))
        sources = folder_sources(folder / "images", folder / "annotations")
        config = TrainConfig(patch=patch, batch=8, lr=2e-3, steps=10**9, cpu_minutes=cpu_minutes, seed=0,
                             val_every=10**9, val_patches=8)
        start = time.process_time()
        result = train(sources, folder / "model.pt", UNetConfig(in_channels=channels, depth=3, width=16), config,
                       progress=False)
        cpu = (time.process_time() - start) / 60
        model = Predictor.from_checkpoint(folder / "model.pt", device="cpu")
        scores = evaluate(model, test)
        row = {"dataset": dataset, "setting": setting, "steps": result["step"], "cpu_min": cpu, **scores}
        print(f"{dataset:8s} {setting:16s} steps {result['step']:5d}  cpu {cpu:5.1f} min  "
              f"F1@0.5 {scores['f1']:.3f}  mAP {scores['mAP']:.3f}  PQ {scores['pq']:.3f}", flush=True)
        rows.append(row)
    full = rows[0]["f1"]
    ten = next(r for r in rows if r["setting"] == "10%")["f1"]
    print(f"{dataset}: F1(10%) / F1(100%) = {ten / full if full else float('nan'):.3f}  (goal >= 0.95)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu-minutes", type=float, default=4.0, help="process CPU-time budget per model")
    parser.add_argument("--datasets", nargs="+", default=["dsb", "monuseg"], choices=["dsb", "monuseg"])
    parser.add_argument("--patch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/sparse_fraction"))
    args = parser.parse_args()
    if not SHARED.exists():
        raise SystemExit(f"needs the research data in {SHARED} (not committed: MoNuSeg is CC BY-NC-SA)")
    if args.threads:
        torch.set_num_threads(args.threads)
    for dataset in args.datasets:
        run(dataset, args.cpu_minutes, args.workdir, args.patch)


if __name__ == "__main__":
    main()
