"""Benchmark `measure` (per-object table + per-region metrics) on labelled 8k and 16k slides.

Prints the time of the per-object table + per-region metrics (and of the whole command with its
report) as a ratio to one pass reading the label array (same run), and the peak RSS at 1x and 4x. Uses the slides and labels left by bench/segment.py (run that first).

    python bench/measure.py [--workdir /tmp/sparseseg-bench/segment] [--edge 8192]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEP = r"""
import json, resource, sys, time
import numpy as np, zarr
slide, kind, out = sys.argv[1:4]
labels = zarr.open_group(slide, mode="r")["labels/cells/0"]
from sparseseg.measure.run import measure_slide  # imports are not part of the timing
start = time.perf_counter()
if kind == "read":
    h, w = labels.shape
    total = 0
    for y in range(0, h, 2048):
        for x in range(0, w, 2048):
            total += int(np.count_nonzero(labels[y:y + 2048, x:x + 2048]))
else:
    measure_slide(slide, labels="cells", regions="grid:250um", out=out, progress=False, report=kind == "report")
print(json.dumps({"seconds": time.perf_counter() - start,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def step(slide: Path, kind: str, out: Path) -> dict:
    result = subprocess.run([sys.executable, "-c", STEP, str(slide), kind, str(out)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/segment"))
    parser.add_argument("--edge", type=int, default=8192)
    args = parser.parse_args()
    small = args.workdir / f"slide-{args.edge}.ome.zarr"
    large = args.workdir / f"slide-{2 * args.edge}.ome.zarr"
    for slide in (small, large):
        if not (slide / "labels" / "cells").exists():
            raise SystemExit(f"{slide} has no labels/cells: run bench/segment.py first")
    read = step(small, "read", args.workdir / "measure-out")
    measured = step(small, "tables", args.workdir / "measure-out")
    reported = step(small, "report", args.workdir / "measure-out")
    measured_4x = step(large, "tables", args.workdir / "measure-out-4x")
    cells = json.loads((args.workdir / "measure-out" / "metrics.json").read_text())["cells"]
    print(f"1x {args.edge}^2: one pass reading the labels {read['seconds']:.2f} s; per-object table + per-region "
          f"metrics {measured['seconds']:.2f} s ({cells} cells); with the report {reported['seconds']:.2f} s")
    print(f"time ratio tables / read pass: {measured['seconds'] / read['seconds']:.2f}  (goal <= 3); "
          f"with the report: {reported['seconds'] / read['seconds']:.2f}")
    print(f"4x: tables {measured_4x['seconds']:.2f} s ({measured_4x['seconds'] / measured['seconds']:.2f}x the 1x time)")
    print(f"peak RSS: 1x {measured['peak_rss_mb']:.0f} MB, 4x {measured_4x['peak_rss_mb']:.0f} MB, "
          f"ratio {measured_4x['peak_rss_mb'] / measured['peak_rss_mb']:.3f}")


if __name__ == "__main__":
    main()
