"""Benchmark: Sketchpose targets of a 512x512 patch with ~50 real nuclei, vs one scipy EDT.

The patch is a real DSB2018 H&E label crop (tests/data), upsampled 2x to nuclei of realistic size
at 512x512. Both timings are medians of repeated runs in this process.

    python bench/targets.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import tifffile
from scipy import ndimage as ndi

from sparseseg.annotations import PatchAnnotation, compute_targets
from sparseseg.annotations.sparsify import sparsify_dense

LABELS = Path(__file__).resolve().parents[1] / "tests" / "data" / "dsb2018" / "labels" / "he_0121d675.tif"


def median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    crop = tifffile.imread(LABELS)[:256, 32:288]
    labels = np.kron(crop, np.ones((2, 2), crop.dtype)).astype(np.int64)  # 512 x 512
    n_objects = len(np.unique(labels)) - 1
    dense = PatchAnnotation.from_dense(labels)
    sparse = sparsify_dense(labels, 0.10, seed=0)
    edt_ms = median_ms(lambda: ndi.distance_transform_edt(labels > 0), args.repeats)
    dense_ms = median_ms(lambda: compute_targets(dense), args.repeats)
    sparse_ms = median_ms(lambda: compute_targets(sparse), args.repeats)
    print(f"patch 512x512, {n_objects} objects")
    print(f"one scipy distance_transform_edt: {edt_ms:.1f} ms")
    print(f"targets, dense annotation: {dense_ms:.1f} ms  (ratio {dense_ms / edt_ms:.2f}x EDT)")
    print(f"targets, 10% GP-sparse annotation: {sparse_ms:.1f} ms  (ratio {sparse_ms / edt_ms:.2f}x EDT)")
    print("goals: <= 30 ms and <= 6x one EDT")


if __name__ == "__main__":
    main()
