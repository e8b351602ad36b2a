"""Benchmark: full-pyramid ingest vs a plain tifffile-to-zarr level-0 copy, and peak RSS at 1x/4x area.

The source is a real-content mosaic: the CC0 CMU-1 region tiled periodically into a JPEG-tiled
TIFF (like an SVS) of EDGE x EDGE pixels (1x) and 2*EDGE x 2*EDGE pixels (4x area). Each measured
step runs in its own subprocess so its peak RSS is its own.

    python bench/ingest.py [--edge 16384] [--workdir /tmp/sparseseg-bench]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile

ROOT = Path(__file__).resolve().parents[1]
CMU = ROOT / "sparseseg" / "data" / "cmu_small_region.svs"
TILE = 256

STEP = r"""
import json, resource, sys, time
import dask, dask.array as da, numpy as np, tifffile, zarr
from numcodecs import Blosc
kind, src, dst = sys.argv[1:4]
start = time.perf_counter()
if kind == "plain":
    source = zarr.open_array(tifffile.imread(src, aszarr=True), mode="r")
    target = zarr.create_array(dst, shape=source.shape, chunks=(1024, 1024, source.shape[2]), dtype=source.dtype,
                               zarr_format=2, compressors=Blosc(cname="lz4", clevel=5, shuffle=Blosc.SHUFFLE))
    with dask.config.set(scheduler="threads"):
        da.store(da.from_zarr(source).rechunk(target.chunks), target, lock=False)
else:
    from sparseseg.ingest import ingest
    ingest(src, dst)
elapsed = time.perf_counter() - start
print(json.dumps({"seconds": elapsed, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_mosaic(path: Path, edge: int) -> None:
    """Tile the CMU region periodically into an ``edge`` x ``edge`` JPEG-tiled TIFF, streaming tiles."""
    cmu = tifffile.imread(CMU)
    h, w = cmu.shape[:2]

    def tiles():
        for y in range(0, edge, TILE):
            rows = np.arange(y, y + TILE) % h
            for x in range(0, edge, TILE):
                yield cmu[np.ix_(rows, np.arange(x, x + TILE) % w)]

    tifffile.imwrite(path, tiles(), shape=(edge, edge, 3), dtype=np.uint8, tile=(TILE, TILE),
                     photometric="rgb", compression="jpeg", compressionargs={"level": 90},
                     resolution=(1e4 / 0.499, 1e4 / 0.499), resolutionunit="CENTIMETER", bigtiff=True)


def time_tile_decoding(path: Path) -> tuple[float, float]:
    """Seconds (one thread) to decode every level-0 tile with tifffile, and to check each one strictly."""
    from sparseseg.io.jpeg_check import jpeg_tiles

    with tifffile.TiffFile(path) as tif:
        page = tif.pages[0]
        start = time.perf_counter()
        for _ in page.segments(maxworkers=1):
            pass
        decode = time.perf_counter() - start
        height, width = page.shape[:2]
    tiles = jpeg_tiles(str(path), 0, 0, path.stat().st_mtime_ns)
    start = time.perf_counter()
    tiles.verify(slice(0, height), slice(0, width))
    return decode, time.perf_counter() - start


def run_step(kind: str, src: Path, dst: Path) -> dict:
    shutil.rmtree(dst, ignore_errors=True)
    out = subprocess.run([sys.executable, "-c", STEP, kind, str(src), str(dst)], check=True,
                         capture_output=True, text=True)
    shutil.rmtree(dst, ignore_errors=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", type=int, default=16384, help="1x mosaic edge in pixels (default 16384)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench"))
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    sources = {}
    for factor in (1, 2):
        edge = args.edge * factor
        path = args.workdir / f"mosaic-{edge}.tif"
        if not path.exists():
            t = time.perf_counter()
            write_mosaic(path, edge)
            print(f"wrote {path.name} ({edge}x{edge}, {path.stat().st_size / 1e6:.0f} MB) in "
                  f"{time.perf_counter() - t:.0f} s", flush=True)
        sources[factor * factor] = path
    dst = args.workdir / "out.ome.zarr"
    plain = run_step("plain", sources[1], args.workdir / "plain.zarr")
    full_1x = run_step("ingest", sources[1], dst)
    full_4x = run_step("ingest", sources[4], dst)
    megapixels = args.edge**2 / 1e6
    print(f"plain level-0 copy, 1x ({args.edge}^2): {plain['seconds']:.1f} s, peak RSS {plain['peak_rss_mb']:.0f} MB")
    print(f"full pyramid ingest, 1x: {full_1x['seconds']:.1f} s ({megapixels / full_1x['seconds']:.1f} Mpx/s), "
          f"peak RSS {full_1x['peak_rss_mb']:.0f} MB")
    print(f"full pyramid ingest, 4x: {full_4x['seconds']:.1f} s, peak RSS {full_4x['peak_rss_mb']:.0f} MB")
    print(f"ratio ingest/plain copy (1x): {full_1x['seconds'] / plain['seconds']:.2f}  (goal <= 1.5)")
    print(f"peak RSS 4x/1x: {full_4x['peak_rss_mb'] / full_1x['peak_rss_mb']:.3f}  (goal <= 1.15)")
    print(f"wall time 4x/1x: {full_4x['seconds'] / full_1x['seconds']:.2f}")
    decode, check = time_tile_decoding(sources[1])
    print(f"level-0 JPEG tiles, 1 thread: decode {decode:.2f} s, strict check (io.jpeg_check) {check:.2f} s, "
          f"ratio check/decode {check / decode:.2f}, check/ingest {check / full_1x['seconds']:.3f}")


if __name__ == "__main__":
    main()
