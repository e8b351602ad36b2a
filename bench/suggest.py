"""Time `suggest` (network and from a saved segmentation) against `segment` on one slide, side by side,
and compare the two `suggest` paths square by square.

    python bench/suggest.py [--slide SLIDE.ome.zarr] [--repeats 3] [--workers 2] [--size 100]

Each repeat runs, in turn: `segment` (which saves its doubt map), `suggest` with the network (and its
mirror pass), and `suggest --from-segmentation` on that segment run. Wall times of the commands as a user
runs them (Dask start-up included); medians and their ratios are printed. Then every candidate square is
scored both ways and the rank correlations of the components, the objects and the three-component scores
are printed. Default slide: the committed CC0 CMU region (2967 x 2220, 0.499 um/px), ingested into a
temporary folder.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.model.normalize import slide_normalization
from sparseseg.model.registry import resolve_model
from sparseseg.suggest import Candidate, candidate_grid, rank_candidates, score_in_process, score_saved_rows

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "tests" / "data" / "slides" / "cmu_small_region.pyramid.ome.tif"


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "sparseseg.cli", *argv], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def agreement(slide: Path, name: str, size_um: float) -> None:
    """Score every candidate square with the network and from the saved map; print how alike they are."""
    info = open_omezarr_slide(slide)
    edge = round(size_um / info.pixel_size_um[0])
    normalization = slide_normalization(info.levels)
    origins = candidate_grid(slide, tuple(info.shape[1:]), edge, 0.5)
    network = score_in_process(slide, resolve_model(None), origins, edge, 1.0, normalization, "cpu")
    saved = score_saved_rows(slide, name, origins, edge, normalization)
    pairs = [(n, s) for n, s in zip(network, saved) if s is not None]
    print(f"\n{len(pairs)} squares of {size_um:g} um scored both ways (network with its mirror pass; saved map)")
    print("| component | rank correlation | median relative difference |\n|---|---|---|")
    for key in ("flow_error", "near_threshold", "class_doubt"):
        a, b = np.array([n[0][key] for n, _ in pairs]), np.array([s[0][key] for _, s in pairs])
        print(f"| {key} | {spearmanr(a, b)[0]:.3f} | {np.median(np.abs(a - b) / np.maximum(np.abs(a), 1e-12)):.1%} |")
    print(f"| objects per square | {spearmanr([n[2] for n, _ in pairs], [s[2] for _, s in pairs])[0]:.3f} | |")
    ranked = []
    for scored in zip(*pairs):
        candidates = [Candidate(str(slide), 0, k, edge, {k2: v for k2, v in c.items() if k2 != "disagreement"}, d, o)
                      for k, (c, d, o) in enumerate(scored)]
        rank_candidates(candidates)
        ranked.append(candidates)
    print(f"three-component scores: rank correlation {spearmanr(*[[c.score for c in r] for r in ranked])[0]:.3f}")
    top = [{c.x for c in sorted(r, key=lambda c: -c.score)[:10]} for r in ranked]
    print(f"top 10 squares shared: {len(top[0] & top[1])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slide", type=Path, default=None, help="an OME-Zarr slide (default: the CMU region)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--size", type=float, default=100.0, help="proposal edge in um")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        slide = args.slide
        if slide is None:
            slide = Path(tmp) / "cmu.ome.zarr"
            subprocess.run([sys.executable, "-m", "sparseseg.cli", "ingest", str(CMU), str(slide), "-q"], check=True)
        workers = ["--workers", str(args.workers)]
        common = ["--regions", "10", "--size", str(args.size), "--overwrite"]
        times: dict[str, list[float]] = {"segment": [], "suggest (network + mirror)": [],
                                         "suggest --from-segmentation": []}
        for repeat in range(args.repeats):
            times["segment"].append(timed(["segment", str(slide), "--name", "bench_suggest", "--overwrite", "-q",
                                           *workers]))
            times["suggest (network + mirror)"].append(
                timed(["suggest", str(slide), "--out", f"{tmp}/network", *common, *workers]))
            times["suggest --from-segmentation"].append(
                timed(["suggest", str(slide), "--out", f"{tmp}/saved", "--from-segmentation", "bench_suggest",
                       *common]))
            print(f"repeat {repeat + 1}: " + ", ".join(f"{k} {v[-1]:.2f} s" for k, v in times.items()), flush=True)
        agreement(slide, "bench_suggest", args.size)
    medians = {k: statistics.median(v) for k, v in times.items()}
    print("\n| command | median wall time |\n|---|---|")
    for name, value in medians.items():
        print(f"| {name} | {value:.2f} s |")
    segment = medians["segment"]
    print(f"\nsuggest (network) / segment: {medians['suggest (network + mirror)'] / segment:.2f}")
    print(f"suggest --from-segmentation / segment: {medians['suggest --from-segmentation'] / segment:.3f}")
    print(f"suggest (network) / suggest --from-segmentation: "
          f"{medians['suggest (network + mirror)'] / medians['suggest --from-segmentation']:.1f}")


if __name__ == "__main__":
    main()
