"""Accuracy protocol: train with `sparseseg train` on sparse annotations, evaluate held-out images through the
real path (`sparseseg ingest` -> `sparseseg segment` on OME-Zarr), print F1@0.5, mAP, PQ and AJI.

Data: a folder of images with instance labels of the same stem, split by index (sorted names): the
first ``--train`` images are for training, the rest are held out (never seen). Presets:
``monuseg`` = ../shared/data/monuseg_train (13 H&E images, 0.25 um/px; 10 train / 3 held out: TCGA-E2-A1B5,
TCGA-G9-6362, TCGA-NH-A8F7), ``dsb-fluo`` = DSB2018 fluorescence (every 4th image from index 1, the
first 60 train / next 20 held out), ``dsb-he`` = DSB2018 brightfield/H&E (even indices train, every 10th
odd one held out).
Settings (each its own model): ``100%``, ``10%``, ``5%``... (pixels kept by GP masks, Sketchpose
protocol, 25 um sigma), ``10obj`` (10 complete objects per image + background strokes over 25 % of the
background). ``--init MODEL`` fine-tunes a checkpoint; ``--zero-shot MODEL`` only evaluates it, on
every image of the set. Each held-out image is segmented twice: with the checkpoint's calibrated
instance parameters and with the defaults (``--distance-threshold 0 ...``), to show what calibration gives.

    python bench/accuracy.py --dataset monuseg --settings 100% 10% --minutes 30
    python bench/accuracy.py --dataset monuseg --settings 5% --minutes 10 --init sparseseg/data/models/nuclei_he.pt
    python bench/accuracy.py --dataset monuseg --zero-shot sparseseg/data/models/nuclei_he.pt
    python bench/accuracy.py --dataset monuseg --zero-shot sparseseg/data/models/nuclei_he.pt --segment-args "--precision bf16"
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
import zarr

from sparseseg.annotations.sparsify import objects_and_background, sparsify_dense
from sparseseg.instances.dynamics import InstanceParams
from sparseseg.measure.accuracy import accumulate, accuracy_tables

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
SPARSESEG = [sys.executable, "-m", "sparseseg.cli"]


def dataset(name: str, images: Path | None, labels: Path | None, n_train: int | None, pixel_size: float | None):
    """(train pairs, held-out pairs, pixel size um): pairs of (name, image path, label path)."""
    if name == "monuseg":
        root = SHARED / "monuseg_train"
        names = [r["name"] for r in csv.DictReader(open(root / "index.csv"))]
        pairs = [(n, root / "images" / f"{n}.png", root / "labels" / f"{n}.tif") for n in names]
        return pairs[:10], pairs[10:], 0.25
    if name in ("dsb-fluo", "dsb-he"):
        sub = "fluo" if name == "dsb-fluo" else "brightfield_or_he"
        root = SHARED / "dsb2018" / sub
        rows = list(csv.DictReader(open(root / "index.csv")))
        pairs = [(r["id"][:8], root / "images" / f"{r['id']}.png", root / "labels" / f"{r['id']}.tif") for r in rows]
        if name == "dsb-fluo":
            chosen = pairs[1::4]
            return chosen[:60], chosen[60:80], 0.5
        return pairs[0::2], pairs[1::2][::5], 0.5
    stems = sorted(p.stem for p in images.iterdir())
    pairs = [(s, images / f"{s}.png", next(labels.glob(f"{s}.*"))) for s in stems]
    return pairs[:n_train], pairs[n_train:], pixel_size


def read_pair(image_path: Path, label_path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = iio.imread(image_path)
    image = image[..., :3] if image.ndim == 3 else image
    return image, tifffile.imread(label_path).astype(np.int64)


def annotate(labels: np.ndarray, setting: str, seed: int, pixel_size: float) -> np.ndarray:
    """The partial map a user would give for ``setting`` (``100%``, ``10%``, ``10obj``...)."""
    if setting.endswith("%"):
        return sparsify_dense(labels, float(setting[:-1]) / 100, seed=seed, pixel_size_um=pixel_size).partial
    if setting.endswith("obj"):
        return objects_and_background(labels, int(setting[:-3]), seed=seed, pixel_size_um=pixel_size).partial
    raise SystemExit(f"unknown setting {setting!r}: use N% or Nobj")


def run(command: list[str], log: Path) -> float:
    """Run a sparseseg command, its output appended to ``log``; returns its wall time."""
    start = time.perf_counter()
    with open(log, "a") as fh:
        fh.write("$ " + " ".join(command) + "\n")
        fh.flush()
        result = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT)
    if result.returncode:
        raise SystemExit(f"failed ({result.returncode}): {' '.join(command)}; see {log}")
    return time.perf_counter() - start


def evaluate(model: Path, held_out, pixel_size: float, work: Path, log: Path, threads: int | None,
             segment_args: tuple[str, ...] = ()) -> dict:
    """Ingest + segment each held-out image (calibrated and default instance parameters); pooled metrics."""
    defaults = InstanceParams()
    default_flags = ["--distance-threshold", str(defaults.distance_threshold), "--flow-error-threshold",
                     str(defaults.flow_error_threshold), "--min-size", str(defaults.min_size), "--steps",
                     str(defaults.n_steps)]
    results, seconds = {"calibrated": [], "defaults": []}, 0.0
    for name, image_path, label_path in held_out:
        image, truth = read_pair(image_path, label_path)
        tif = work / f"{name}.tif"
        tifffile.imwrite(tif, image, resolution=(1e4 / pixel_size, 1e4 / pixel_size), resolutionunit="CENTIMETER",
                         photometric="rgb" if image.ndim == 3 else "minisblack")
        slide = work / f"{name}.ome.zarr"
        shutil.rmtree(slide, ignore_errors=True)
        run(SPARSESEG + ["ingest", str(tif), str(slide), "-q", "--tissue", "none"], log)
        for variant, flags in (("calibrated", []), ("defaults", default_flags)):
            extra = ["--threads", str(threads)] if threads else []
            seconds += run(SPARSESEG + ["segment", str(slide), "--model", str(model), "--name", variant, "-q"]
                           + flags + extra + list(segment_args), log)
            labels = zarr.open_group(slide, mode="r")[f"labels/{variant}/0"][...]
            results[variant].append(accumulate(truth, labels))
    out = {"segment_s": seconds / 2 / max(1, len(held_out))}
    for variant, accs in results.items():
        out[variant] = pooled(accs)
    return out


def pooled(accs) -> dict:
    """F1/PQ/mAP from counts summed over images; AJI pooled over images (intersections and unions summed)."""
    tables = [accuracy_tables(a) for a in accs]
    per_threshold = {}
    for table, _, _ in tables:
        for row in table.itertuples():
            c = per_threshold.setdefault(row.threshold, [0, 0, 0, 0.0])
            c[0] += row.tp
            c[1] += row.tp + row.fn
            c[2] += row.tp + row.fp
            c[3] += row.mean_matched_iou * row.tp
    f1 = {t: 2 * c[0] / (c[1] + c[2]) if c[1] + c[2] else 0.0 for t, c in per_threshold.items()}
    ap = {t: c[0] / (c[1] + c[2] - c[0]) if c[1] + c[2] - c[0] else 0.0 for t, c in per_threshold.items()}
    c05 = per_threshold[min(per_threshold)]
    return {"f1": f1[min(f1)], "mAP": float(np.mean(list(ap.values()))),
            "pq": f1[min(f1)] * (c05[3] / c05[0] if c05[0] else 0.0),
            "aji": float(np.mean([s["aji"] for _, s, _ in tables])),
            "aji_each": [round(s["aji"], 3) for _, s, _ in tables], "f1_each": [round(s["f1@0.5"], 3) for _, s, _ in tables]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", default="monuseg", choices=["monuseg", "dsb-fluo", "dsb-he", "folder"])
    parser.add_argument("--images", type=Path, help="folder dataset: images (PNG)")
    parser.add_argument("--labels", type=Path, help="folder dataset: instance labels (TIFF) of the same stems")
    parser.add_argument("--train", type=int, help="folder dataset: the first N images train, the rest are held out")
    parser.add_argument("--pixel-size", type=float, help="folder dataset: pixel size (um)")
    parser.add_argument("--settings", nargs="+", default=["100%", "10%"])
    parser.add_argument("--minutes", type=float, default=30.0, help="training budget per setting (wall clock)")
    parser.add_argument("--init", type=Path, help="fine-tune this checkpoint instead of training from scratch")
    parser.add_argument("--zero-shot", type=Path, metavar="MODEL", help="evaluate MODEL on every image, no training")
    parser.add_argument("--threads", type=int, help="torch threads for segment (default: all cores)")
    parser.add_argument("--train-args", default="", help="extra `sparseseg train` arguments (recipe experiments)")
    parser.add_argument("--segment-args", default="", help="extra `sparseseg segment` arguments (e.g. --precision bf16)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/accuracy"))
    parser.add_argument("--json", type=Path, help="append each result as a JSON line here")
    args = parser.parse_args()
    if args.dataset != "folder" and not SHARED.exists():
        raise SystemExit(f"needs the research data in {SHARED} (not committed: MoNuSeg is CC BY-NC-SA)")
    train_pairs, held_out, pixel_size = dataset(args.dataset, args.images, args.labels, args.train, args.pixel_size)
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = []
    if args.zero_shot:
        work = args.workdir / f"{args.dataset}-zero-shot"
        work.mkdir(parents=True, exist_ok=True)
        scores = evaluate(args.zero_shot, train_pairs + held_out, pixel_size, work, work / "log.txt", args.threads,
                          tuple(args.segment_args.split()))
        rows.append({"dataset": args.dataset, "setting": "zero-shot", "segment_args": args.segment_args, "model": str(args.zero_shot), **scores})
    for setting in [] if args.zero_shot else args.settings:
        work = args.workdir / f"{args.dataset}-{setting.replace('%', 'pct')}{'-init' if args.init else ''}"
        shutil.rmtree(work, ignore_errors=True)
        (work / "images").mkdir(parents=True)
        (work / "annotations").mkdir()
        for i, (name, image_path, label_path) in enumerate(train_pairs):
            image, labels = read_pair(image_path, label_path)
            iio.imwrite(work / "images" / f"{name}.png", image)
            tifffile.imwrite(work / "annotations" / f"{name}.tif", annotate(labels, setting, i, pixel_size))
        model = work / "model.pt"
        command = SPARSESEG + ["train", "--images", str(work / "images"), "--annotations", str(work / "annotations"),
                               "--pixel-size", str(pixel_size), "--minutes", str(args.minutes), "--out", str(model),
                               "-q", "--init", str(args.init) if args.init else "none"] + args.train_args.split()
        train_s = run(command, work / "log.txt")
        scores = evaluate(model, held_out, pixel_size, work, work / "log.txt", args.threads,
                          tuple(args.segment_args.split()))
        from sparseseg.model.checkpoint import load_checkpoint

        state = load_checkpoint(model)
        rows.append({"dataset": args.dataset, "setting": setting, "init": str(args.init) if args.init else None,
                     "minutes": args.minutes, "train_s": round(train_s), "steps": state["step"],
                     "train_args": args.train_args, "instance_params": state.get("instance_params"), **scores})
    for row in rows:
        cal, dft = row["calibrated"], row["defaults"]
        print(f"{row['dataset']:9s} {row['setting']:10s} F1@0.5 {cal['f1']:.3f} (defaults {dft['f1']:.3f})  "
              f"AJI {cal['aji']:.3f} ({dft['aji']:.3f})  PQ {cal['pq']:.3f}  mAP {cal['mAP']:.3f}  "
              f"train {row.get('train_s', 0)} s ({row.get('steps', '-')} steps)  segment {row['segment_s']:.0f} s/image "
              f"x {len(cal['f1_each'])}  F1 per image {cal['f1_each']}", flush=True)
        if args.json:
            with open(args.json, "a") as fh:
                fh.write(json.dumps(row, default=str) + "\n")


if __name__ == "__main__":
    main()
