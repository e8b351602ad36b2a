"""Annotate-next benchmark: a simulated annotator labels the proposed regions; does `suggest` beat random regions?

Start from a model (default the bundled one). Each round, every strategy picks ``--regions`` squares of
``--size`` um (the same area for every strategy) in the pool images, not yet annotated:
``suggest`` (`sparseseg suggest` with the strategy's current model), ``random`` (uniform over the squares
in tissue) and ``crowded`` (the squares with the most ground-truth nuclei). The annotator "draws" the
ground truth inside them: every nucleus whose centre lies in a square, whole; the rest of the square
background; nuclei cut by the square's edge with their centre outside stay unknown. The strategy's model
is then fine-tuned (`sparseseg train --init`, ``--minutes`` per round) on everything annotated so far and
scored on the held-out images through ingest + segment (F1@0.5, AJI). Prints one line per strategy and
round, and both curves side by side at the end.

Data: MoNuSeg (../shared, benchmark only): the first 10 images are the pool, the last 3 held out.
``--dataset brca``: BRCA-M2C with its classified points (BSD-3-Clause): the annotator clicks every cell whose
point lies in a square (a disk each with its class, the Voronoi edges of all cells inside the square as
background, the rest unknown); the first ``--pool`` `train` images are the pool, scored on the 10 `val` images
by detection F and mean per-class F (`bench/brca.py`).

    python bench/annotate_next.py [--rounds 3] [--regions 4] [--size 50] [--minutes 5] [--strategies suggest random crowded]
                                  [--seed 0]
    python bench/annotate_next.py --dataset brca --pool 20 --rounds 3 --regions 4 --size 50 --minutes 2
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import tifffile
from scipy import ndimage as ndi

sys.path.insert(0, str(Path(__file__).resolve().parent))
from accuracy import SPARSESEG, dataset, evaluate, read_pair, run  # noqa: E402
from brca import ROOT as BRCA  # noqa: E402
from brca import read_points, score  # noqa: E402

from sparseseg.annotations.model import BACKGROUND, FIRST_OBJECT  # noqa: E402
from sparseseg.annotations.points import POINT_RADIUS_UM, point_labels  # noqa: E402
from sparseseg.io.names import slide_stem  # noqa: E402
from sparseseg.train.data import write_class_table  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
BUNDLED = ROOT / "sparseseg" / "data" / "models" / "nuclei_he.pt"


def grid_squares(shape: tuple[int, int], edge: int) -> list[tuple[int, int]]:
    return [(y, x) for y in range(0, shape[0] - edge + 1, edge) for x in range(0, shape[1] - edge + 1, edge)]


def draw(partial: np.ndarray, truth: np.ndarray, y: int, x: int, edge: int) -> None:
    """The annotator: inside the square, background; every nucleus centred inside, whole; cut ones unknown."""
    window = (slice(y, y + edge), slice(x, x + edge))
    inside = truth[window]
    ids = np.unique(inside[inside > 0])
    centres = ndi.center_of_mass(np.ones_like(truth), truth, ids) if ids.size else []
    square = partial[window]
    square[square == 0] = 1
    for k, (cy, cx) in zip(ids, centres):
        if y <= cy < y + edge and x <= cx < x + edge:
            partial[truth == k] = k + 1  # drawn whole (ids >= 2)
        else:
            square[inside == k] = np.where(square[inside == k] > 1, square[inside == k], 0)


@dataclass
class ClickedCells:
    """The truth of a points image: every cell's point and class, and their disks + Voronoi edges."""

    yx: np.ndarray
    classes: np.ndarray
    partial: np.ndarray   # disks of every point (FIRST_OBJECT + index) and the Voronoi edges, whole image

    @property
    def shape(self) -> tuple[int, int]:
        return self.partial.shape

    def __getitem__(self, window) -> np.ndarray:
        """A label-like view for counting (``crowded``): each point's disk id."""
        return np.where(self.partial[window] >= FIRST_OBJECT, self.partial[window], 0)


def clicked_cells(points_csv: Path, shape: tuple[int, int], pixel_size: float) -> ClickedCells:
    yx, classes = read_points(points_csv)
    partial, _ = point_labels(shape, yx, POINT_RADIUS_UM / pixel_size)
    return ClickedCells(yx, classes, partial)


def click(partial: np.ndarray, table: dict[int, str], cells: ClickedCells, y: int, x: int, edge: int) -> None:
    """The point annotator: inside the square, every cell whose point lies in it gets its disk and class, the
    Voronoi edges are background; disks of cells clicked outside the square stay unknown."""
    window = (slice(y, y + edge), slice(x, x + edge))
    inside = np.flatnonzero((cells.yx[:, 0] >= y) & (cells.yx[:, 0] < y + edge) & (cells.yx[:, 1] >= x)
                            & (cells.yx[:, 1] < x + edge))
    ids = FIRST_OBJECT + inside
    truth = cells.partial[window]
    known = (truth == BACKGROUND) | np.isin(truth, ids)
    square = partial[window]
    square[known & (square == 0)] = truth[known & (square == 0)]
    table.update({int(i): str(cells.classes[k]) for i, k in zip(ids, inside) if cells.classes[k]})


def pick(strategy: str, pool, annotated: dict, truths: dict, edge: int, size_um: float, n: int, model: Path,
         work: Path, rng: np.random.Generator, log: Path) -> list[tuple[str, int, int]]:
    """(image name, y, x) of the ``n`` squares ``strategy`` proposes, none annotated yet."""
    free = [(name, y, x) for name, _, _ in pool for y, x in grid_squares(truths[name].shape, edge)
            if not annotated[name][y:y + edge, x:x + edge].any()]
    if strategy == "random":
        return [free[i] for i in rng.choice(len(free), size=n, replace=False)]
    if strategy == "crowded":
        def count(item):
            name, y, x = item
            return len(np.unique(truths[name][y:y + edge, x:x + edge])) - 1
        return sorted(free, key=lambda item: (-count(item), rng.random()))[:n]
    out = work / "suggest"
    slides = [work / "slides" / f"{name}.ome.zarr" for name, _, _ in pool]
    run(SPARSESEG + ["suggest", *map(str, slides), "--model", str(model), "--regions", str(n), "--size",
                     str(size_um), "--min-tissue", "0", "--out", str(out), "--overwrite"], log)
    chosen = []
    for slide in slides:
        name = slide_stem(slide)
        for feature in json.loads((out / f"{name}.geojson").read_text())["features"]:
            ring = np.asarray(feature["geometry"]["coordinates"][0])
            chosen.append((name, int(ring[:, 1].min()), int(ring[:, 0].min())))
    return chosen


def load_pool(args) -> tuple[list, list, float, dict, dict]:
    """(pool, held-out, pixel size, images, truths): MoNuSeg label images or BRCA-M2C clicked cells."""
    if args.dataset == "monuseg":
        pool, held_out, pixel_size = dataset("monuseg", None, None, None, None)
        images, truths = {}, {}
        for name, image_path, label_path in pool:
            images[name], truths[name] = read_pair(image_path, label_path)
        return pool, held_out, pixel_size, images, truths
    rows = [r for r in csv.DictReader(open(BRCA / "index.csv")) if r["split"] == "train"][:args.pool]
    pixel_size = float(rows[0]["microns_per_pixel"])
    pool = [(r["name"], BRCA / "images" / f"{r['name']}.png", BRCA / "points" / f"{r['name']}.csv") for r in rows]
    images = {name: iio.imread(png)[..., :3] for name, png, _ in pool}
    truths = {name: clicked_cells(points, images[name].shape[:2], pixel_size) for name, _, points in pool}
    return pool, [], pixel_size, images, truths


def write_annotation(folder: Path, name: str, partial: np.ndarray, table: dict[int, str]) -> Path:
    """The annotation of one pool image (and its class table when cells carry classes)."""
    tifffile.imwrite(folder / f"{name}.tif", partial)
    if table:
        write_class_table(folder / f"{name}.csv", table)
    return folder / f"{name}.tif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", choices=("monuseg", "brca"), default="monuseg")
    parser.add_argument("--pool", type=int, default=20, help="brca: the first N train images are the pool")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--regions", type=int, default=4, help="squares per round and strategy")
    parser.add_argument("--size", type=float, default=50.0, help="square edge (um)")
    parser.add_argument("--minutes", type=float, default=5.0, help="fine-tuning per round")
    parser.add_argument("--strategies", nargs="+", default=["suggest", "random", "crowded"])
    parser.add_argument("--model", type=Path, default=BUNDLED)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0, help="random squares' draw and training's seed")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/annotate-next"))
    args = parser.parse_args()
    pool, held_out, pixel_size, images, truths = load_pool(args)
    points = args.dataset == "brca"
    edge = int(round(args.size / pixel_size))
    shutil.rmtree(args.workdir, ignore_errors=True)
    curves = {}
    for strategy in args.strategies:
        work = args.workdir / strategy
        (work / "slides").mkdir(parents=True)
        (work / "images").mkdir()
        (work / "annotations").mkdir()
        (work / "eval").mkdir()
        log = work / "log.txt"
        for name, _, _ in pool:
            tif = work / f"{name}.tif"
            tifffile.imwrite(tif, images[name], resolution=(1e4 / pixel_size, 1e4 / pixel_size),
                             resolutionunit="CENTIMETER", photometric="rgb")
            run(SPARSESEG + ["ingest", str(tif), str(work / "slides" / f"{name}.ome.zarr"), "-q", "--tissue",
                             "none"], log)
        annotated = {name: np.zeros(truths[name].shape, np.uint32) for name in truths}
        tables: dict[str, dict[int, str]] = {name: {} for name in truths}
        rng = np.random.default_rng(args.seed)
        model, curve = args.model, []
        for round_ in range(1, args.rounds + 1):
            for name, y, x in pick(strategy, pool, annotated, truths, edge, args.size, args.regions, model, work,
                                   rng, log):
                if points:
                    click(annotated[name], tables[name], truths[name], y, x, edge)
                else:
                    draw(annotated[name], truths[name], y, x, edge)
            for name, image_path, _ in pool:  # the slides know what is annotated: suggest skips it
                if annotated[name].any():
                    tif = write_annotation(work / "annotations", name, annotated[name], tables[name])
                    shutil.copy(image_path, work / "images" / f"{name}.png")
                    run(SPARSESEG + ["annotations", "import", str(work / "slides" / f"{name}.ome.zarr"), str(tif),
                                     "--overwrite"], log)
            out = work / f"round{round_}.pt"
            run(SPARSESEG + ["train", "--images", str(work / "images"), "--annotations", str(work / "annotations"),
                             "--pixel-size", str(pixel_size), "--init", str(model), "--minutes", str(args.minutes),
                             "--out", str(out), "-q", "--seed", str(args.seed)]
                + (["--loss", "eikonal", "--class-weight", "5"] if points else []),
                log)
            model = out
            area = sum(int((a > 0).sum()) for a in annotated.values()) * pixel_size**2 / 1e6
            if points:
                detection, per_class, _ = score(model, "val", args.threads)
                scores = {"f1": detection.f1, "class": float(np.mean([k.f1 for k in per_class.values()]))}
                line = f"detection F {scores['f1']:.3f}  mean class F {scores['class']:.3f}"
            else:
                scores = evaluate(model, held_out, pixel_size, work / "eval", log, args.threads)["calibrated"]
                line = f"F1@0.5 {scores['f1']:.3f}  AJI {scores['aji']:.3f}"
            curve.append(line)
            print(f"{strategy:8s} round {round_}: {line}  annotated {area:.4f} mm2", flush=True)
        curves[strategy] = curve
    print("round  " + "  ".join(f"{s:>32s}" for s in curves))
    for r in range(args.rounds):
        print(f"{r + 1:5d}  " + "  ".join(c[r] for c in curves.values()))


if __name__ == "__main__":
    main()
