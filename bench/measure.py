"""Benchmark `measure` (per-object table + per-region metrics) on labelled 8k and 16k slides.

Prints the time of the per-object table + per-region metrics (also without the image-derived
columns, and of the whole command with its report) as a ratio to one pass reading the label
array, each the best of --repeats runs in its own process, all in one invocation; and the peak
RSS at 1x, 4x and 16x, with its course over each run. Uses the slides and labels left by
bench/segment.py (run that first); the 16x slide is the 4x one 2 x 2 times, built on first use.

    python bench/measure.py [--workdir /tmp/sparseseg-bench/segment] [--edge 8192] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

STEP = r"""
import json, resource, sys, threading, time
import numpy as np, zarr
slide, kind, out, repeats = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
labels = zarr.open_group(slide, mode="r")["labels/cells/0"]
image = zarr.open_group(slide, mode="r")["0"]
from sparseseg.measure.run import measure_slide  # imports are not part of the timing


def once():
    if kind in ("read", "read_both"):  # one pass over the labels; or over the labels and the image (measure's input)
        h, w = labels.shape
        total = 0
        for y in range(0, h, 2048):
            for x in range(0, w, 2048):
                total += int(np.count_nonzero(labels[y:y + 2048, x:x + 2048]))
                if kind == "read_both":
                    total += image[:, y:y + 2048, x:x + 2048].shape[0]
    else:
        measure_slide(slide, labels="cells", regions="grid:250um", out=out, progress=False, report=kind == "report",
                      intensities=kind != "shapes")


def rss_mb():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20


samples, done = [], threading.Event()


def sample():  # resident memory every 10 ms: its course shows whether it levels off
    while not done.wait(0.01):
        samples.append(rss_mb())


sampler = threading.Thread(target=sample, daemon=True)
sampler.start()
times = []
for _ in range(repeats):  # the best of a few runs in one process: the machine is noisy, both sides alike
    start = time.perf_counter()
    once()
    times.append(time.perf_counter() - start)
done.set()
sampler.join()
quarters = [max(part) for part in np.array_split(np.array(samples), 4)] if len(samples) >= 4 else []
print(json.dumps({"seconds": min(times), "first": times[0], "rss_quarters_mb": quarters,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def mosaic_2x2(src: Path, dst: Path) -> Path:
    """A slide twice as high and wide as ``src``: its image and cells 2 x 2 times, ids offset per copy.

    Built once (with the library's own pyramid writers) and kept in the work folder: the 16x run.
    """
    if (dst / "labels" / "cells").exists():
        return dst
    import dask.array as da
    import numpy as np
    import zarr

    from sparseseg.ingest import write_image_pyramid
    from sparseseg.io.labels import write_label_pyramid
    from sparseseg.io.omezarr import open_omezarr_slide
    from sparseseg.io.slide import Slide

    slide = open_omezarr_slide(src)
    level0 = slide.levels[0]
    doubled = Slide(path=dst, source_format="ome-zarr", levels=(da.block([[level0, level0], [level0, level0]]),),
                    pixel_size_um=slide.pixel_size_um, channel_names=slide.channel_names)
    write_image_pyramid(doubled, zarr.open_group(dst, mode="w", zarr_format=2), "0.4", 1024)
    labels = zarr.open_group(src, mode="r")["labels/cells/0"]
    (h, w), step = labels.shape, int(da.from_zarr(labels).max().compute()) + 1

    def block(window: tuple[slice, slice]) -> np.ndarray:  # level-0 chunks never straddle two copies
        copy_y, copy_x = window[0].start // h, window[1].start // w
        part = np.asarray(labels[window[0].start - copy_y * h: window[0].stop - copy_y * h,
                                 window[1].start - copy_x * w: window[1].stop - copy_x * w])
        return np.where(part > 0, part + (2 * copy_y + copy_x) * step, 0).astype(np.uint32)

    write_label_pyramid(dst, "cells", block, np.uint32, False, "bench: the source's cells 2 x 2 times")
    return dst


def step(slide: Path, kind: str, out: Path, repeats: int) -> dict:
    result = subprocess.run([sys.executable, "-c", STEP, str(slide), kind, str(out), str(repeats)], check=True,
                            capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/segment"))
    parser.add_argument("--edge", type=int, default=8192)
    parser.add_argument("--repeats", type=int, default=5, help="timed runs per measurement, best kept (default 5)")
    args = parser.parse_args()
    small = args.workdir / f"slide-{args.edge}.ome.zarr"
    large = args.workdir / f"slide-{2 * args.edge}.ome.zarr"
    for slide in (small, large):
        if not (slide / "labels" / "cells").exists():
            raise SystemExit(f"{slide} has no labels/cells: run bench/segment.py first")
    out = args.workdir / "measure-out"
    read = step(small, "read", out, args.repeats)
    read_both = step(small, "read_both", out, args.repeats)
    shapes = step(small, "shapes", out, args.repeats)
    measured = step(small, "tables", out, args.repeats)
    reported = step(small, "report", out, args.repeats)
    measured_4x = step(large, "tables", args.workdir / "measure-out-4x", 1)  # one run: its peak RSS is the point
    measured_1x = step(small, "tables", out, 1)  # the same, at 1x
    huge = mosaic_2x2(large, args.workdir / f"slide-{4 * args.edge}-mosaic.ome.zarr")
    measured_16x = step(huge, "tables", args.workdir / "measure-out-16x", 1)
    cells = json.loads((out / "metrics.json").read_text())["cells"]
    print(f"1x {args.edge}^2 ({cells} cells), best of {args.repeats} runs each: one pass reading the labels "
          f"{read['seconds']:.3f} s; per-object table + per-region metrics {measured['seconds']:.3f} s "
          f"(shape columns only, no image read: {shapes['seconds']:.3f} s); with the report {reported['seconds']:.3f} s")
    print(f"time ratio tables / read pass: {measured['seconds'] / read['seconds']:.2f}  (goal <= 3); shape columns "
          f"only: {shapes['seconds'] / read['seconds']:.2f}; with the report: {reported['seconds'] / read['seconds']:.2f}")
    print(f"reading what the tables need, labels and image, no computing: {read_both['seconds']:.3f} s, ratio "
          f"{read_both['seconds'] / read['seconds']:.2f}")
    print(f"first runs (cold process): read {read['first']:.3f} s, tables {measured['first']:.3f} s, ratio "
          f"{measured['first'] / read['first']:.2f}")
    print(f"4x: tables {measured_4x['seconds']:.2f} s ({measured_4x['seconds'] / measured_1x['seconds']:.2f}x the 1x "
          f"single run)")
    print(f"16x (the 4x slide 2 x 2 times): tables {measured_16x['seconds']:.2f} s "
          f"({measured_16x['seconds'] / measured_4x['seconds']:.2f}x the 4x run)")
    peak_1x, peak_4x, peak_16x = (run["peak_rss_mb"] for run in (measured_1x, measured_4x, measured_16x))
    print(f"peak RSS (single runs): 1x {peak_1x:.0f} MB, 4x {peak_4x:.0f} MB, 16x {peak_16x:.0f} MB; "
          f"ratio 4x/1x {peak_4x / peak_1x:.3f}, 16x/4x {peak_16x / peak_4x:.3f}")
    for name, run in (("1x", measured_1x), ("4x", measured_4x), ("16x", measured_16x)):
        print(f"RSS peak in each quarter of the {name} run: "
              + ", ".join(f"{value:.0f}" for value in run["rss_quarters_mb"]) + " MB")

if __name__ == "__main__":
    main()
