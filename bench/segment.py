"""Benchmark `segment` on real-content slides of 8k x 8k (1x) and 16k x 16k (4x area).

Prints, measured in one run: (1) overhead = segment wall time / pure network forward time over
the same tiles (the blocks in segment's groups, each group sharing its tile cache as in segment),
on the same Dask workers with the same torch threads (run as plain tasks after segment); both on warm
workers (imports done, model loaded, one tile run: the warm-up's seconds are printed, a cold `segment`
pays them once per worker); (2) amplification = network input pixels (tiles run x tile area) / pixels written; (3) peak
RSS per worker at 1x and 4x; (4) wall time 4x / 1x; (5) throughput in megapixels/s.
The slides tile the CC0 CMU-1 region (JPEG-tiled TIFF, then `sparseseg ingest` with the model's
pixel size, so no resampling is timed); the model is the committed DSB nuclei checkpoint (or --model).

`--save-labels F.npy` keeps the 1x labels; `--compare-labels F.npy` prints how many objects of the saved run are
found again identically (same pixel set) and F1@0.5 / F1@0.9 against them (another version or precision).

    python bench/segment.py [--edge 8192] [--block 2048] [--tile 1024] [--model MODEL.pt] [--workers 2] [--threads 1]
                            [--precision fp32|bf16] [--only-1x] [--save-labels F.npy] [--compare-labels F.npy]
"""

from __future__ import annotations

import argparse
import resource
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import zarr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import write_mosaic  # noqa: E402  (the ingest benchmark's real-content mosaic)

from sparseseg.cluster import worker_environment  # noqa: E402
from sparseseg.infer.tiles import SLIDE_TILE  # noqa: E402
from sparseseg.ingest import ingest  # noqa: E402
from sparseseg.metrics.matching import matching  # noqa: E402
from sparseseg.model.checkpoint import load_checkpoint  # noqa: E402
from sparseseg.segment import SegmentOptions, segment_slide  # noqa: E402
from sparseseg.segment.plan import BlockJob, plan_segment  # noqa: E402
from sparseseg.segment.run import block_groups  # noqa: E402
from sparseseg.segment.worker import slide_fields  # noqa: E402

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "sparseseg" / "data" / "models" / "nuclei_he.pt"


def _worker_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _forward_group(job: BlockJob, blocks: list, threads: int) -> int:
    """Read + normalise + network over the blocks of one segment task (the worker's tile cache, as segment);
    returns the tiles it ran."""
    torch.set_num_threads(threads)
    fields = slide_fields(job)
    before = fields.tiles_computed
    for block in blocks:
        fields.compute([fields.load(block.context)])  # the output stays on the worker
    return fields.tiles_computed - before


def _forget_tiles() -> None:
    """Drop the worker's cached fields (and tile outputs) of segment's run: the baseline computes its own."""
    from sparseseg.segment.worker import _run_fields

    _run_fields.cache_clear()


def _warm_up(job: BlockJob, threads: int) -> float:
    """Import, load the model and run one tile on this worker, then forget that tile; returns the seconds."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    fields = slide_fields(job)
    fields.compute([fields.load((slice(0, 1), slice(0, 1)))])
    _forget_tiles()
    return time.perf_counter() - start


def warm_workers(client, slide: Path, model: Path, options: SegmentOptions) -> float:
    """Warm every worker (``_warm_up``) before anything is timed; returns the slowest worker's seconds."""
    job = plan_segment(slide, model, replace(options, overwrite=True)).job
    return max(client.run(_warm_up, job, options.threads).values())


def forward_only_seconds(client, slide: Path, model: Path, options: SegmentOptions, workers: int
                         ) -> tuple[float, int]:
    """(seconds, tiles): the network forward (read + normalise + predict) over exactly the tiles segment's blocks
    run, in segment's block groups, as Dask tasks on the same workers with the same torch threads, nothing
    else. Runs after segment, on workers warmed the same way."""
    plan = plan_segment(slide, model, replace(options, overwrite=True))
    groups = block_groups(list(plan.grid.blocks()), workers)
    client.run(_warm_up, plan.job, options.threads)  # also drops segment's cached tiles
    start = time.perf_counter()
    tiles = client.gather(client.map(_forward_group, [plan.job] * len(groups), groups,
                                     [options.threads] * len(groups), pure=False))
    return time.perf_counter() - start, sum(tiles)


def run(edge: int, workdir: Path, model: Path, block: int, margin: int, workers: int, threads: int,
        forward: bool = False, tile: int = SLIDE_TILE, precision: str = "fp32") -> dict:
    from distributed import Client, LocalCluster

    source = workdir / f"mosaic-{edge}.tif"
    if not source.exists():
        write_mosaic(source, edge)
    slide = workdir / f"slide-{edge}.ome.zarr"
    if not slide.exists():  # recorded at the model's pixel size: the bench times the pipeline, not resampling
        ingest(source, slide, pixel_size_um=load_checkpoint(model)["pixel_size_um"])
    for group in ("cells", "cells_classes"):  # a previous run's labels and class pyramid
        shutil.rmtree(slide / "labels" / group, ignore_errors=True)
    with worker_environment():  # as sparseseg's own local clusters (sparseseg.cluster)
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        options = SegmentOptions(block=block, margin=margin, threads=threads, tile=tile, precision=precision,
                                 scheduler=cluster.scheduler_address, progress=False)
        warm = warm_workers(client, slide, model, options)
        start = time.perf_counter()
        result = segment_slide(slide, model, options)
        wall = time.perf_counter() - start
        rss = max(client.run(_worker_peak_rss_mb).values())
        forward, tiles = forward_only_seconds(client, slide, model, options, workers) if forward else (None, None)
    labels = zarr.open_group(slide, mode="r")["labels/cells/0"]
    return {"edge": edge, "wall": wall, "objects": result.n_objects, "amplification": result.amplification,
            "worker_rss_mb": rss, "skipped": result.skipped_blocks, "blocks": result.n_blocks,
            "shape": labels.shape, "forward": forward, "timings": result.timings, "large": result.large_objects,
            "large_pixels": result.large_pixels, "forward_tiles": tiles, "large_tiles": result.large_tiles,
            "large_windows": result.large_windows, "warm_up": warm}


def identical_objects(before: np.ndarray, after: np.ndarray) -> tuple[int, int]:
    """(objects of ``before`` that are exactly one object of ``after``, objects of ``before``)."""
    pairs, counts = np.unique(np.stack([before.ravel(), after.ravel()]), axis=1, return_counts=True)
    sizes_before = np.bincount(before.ravel())
    sizes_after = np.bincount(after.ravel())
    same = (pairs[0] > 0) & (pairs[1] > 0) & (counts == sizes_before[pairs[0]]) & (counts == sizes_after[pairs[1]])
    return int(same.sum()), int(np.count_nonzero(sizes_before[1:]))


def compare_labels(saved: Path, labels: np.ndarray) -> str:
    before = np.load(saved)
    same, total = identical_objects(before, labels)
    scores = {s.threshold: s.f1 for s in matching(before, labels, thresholds=(0.5, 0.9))}
    return (f"labels against {saved.name}: {same} of {total} objects identical ({same / max(total, 1):.4f}), "
            f"F1@0.5 {scores[0.5]:.4f}, F1@0.9 {scores[0.9]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", type=int, default=8192)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--margin", type=int, default=48)
    parser.add_argument("--tile", type=int, default=SLIDE_TILE, help="network tile edge (segment --tile)")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/segment"))
    parser.add_argument("--workers", type=int, default=2, help="Dask worker processes (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="segment --precision")
    parser.add_argument("--only-1x", action="store_true", help="measure (1) and (2) only, at 1x")
    parser.add_argument("--save-labels", type=Path, help="keep the 1x labels in this .npy file")
    parser.add_argument("--compare-labels", type=Path, help="compare the 1x labels with those of a saved run")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    small = run(args.edge, args.workdir, args.model, args.block, args.margin, args.workers, args.threads, forward=True,
                tile=args.tile, precision=args.precision)
    if args.save_labels or args.compare_labels:
        labels = zarr.open_group(args.workdir / f"slide-{args.edge}.ome.zarr", mode="r")["labels/cells/0"][...]
        if args.save_labels:
            np.save(args.save_labels, labels)
        if args.compare_labels:
            print(compare_labels(args.compare_labels, labels))
    forward = small["forward"]
    large_line = (f"grown windows: {small['large']} objects grown, {small['large_windows']} windows, "
                  f"{small['large_pixels'] / 1e6:.2f} Mpx labelled again, {small['large_tiles']} more network tiles "
                  f"(forward-only ran the blocks' {small['forward_tiles']} tiles)")
    # the forward over every tile segment ran (the blocks' and those of grown windows), at the measured time per tile
    all_tiles = forward * (small["forward_tiles"] + small["large_tiles"]) / small["forward_tiles"]
    if args.only_1x:
        print(f"1x {args.edge}^2: segment {small['wall']:.1f} s, forward {forward:.1f} s, overhead "
              f"{small['wall'] / forward:.2f} (against every tile segment ran: {small['wall'] / all_tiles:.2f}), "
              f"amplification {small['amplification']:.3f}, "
              f"{args.edge**2 / 1e6 / small['wall']:.2f} Mpx/s, worker RSS {small['worker_rss_mb']:.0f} MB; "
              f"{small['objects']} objects, passes {small['timings']}; workers' warm-up before timing "
              f"{small['warm_up']:.1f} s")
        print(large_line)
        return
    large = run(2 * args.edge, args.workdir, args.model, args.block, args.margin, args.workers, args.threads,
                tile=args.tile, precision=args.precision)
    mpx = args.edge**2 / 1e6
    print(f"1x {args.edge}^2: segment {small['wall']:.1f} s, {small['objects']} objects, "
          f"{small['blocks']} blocks ({small['skipped']} without tissue); passes {small['timings']}; workers' "
          f"warm-up before timing {small['warm_up']:.1f} s")
    print(large_line)
    print(f"1x pure network forward over the same tiles, workers ({args.workers}) and threads ({args.threads}): "
          f"{forward:.1f} s")
    print(f"(1) overhead segment / forward: {small['wall'] / forward:.2f}  (goal <= 1.10); against the forward over "
          f"every tile segment ran, grown windows' included: {small['wall'] / all_tiles:.2f}")
    print(f"(2) amplification (network input pixels / pixels written): {small['amplification']:.3f}")
    print(f"(3) peak RSS per worker: 1x {small['worker_rss_mb']:.0f} MB, 4x {large['worker_rss_mb']:.0f} MB, "
          f"ratio {large['worker_rss_mb'] / small['worker_rss_mb']:.3f}  (goal <= 1.15)")
    print(f"(4) wall time 4x / 1x: {large['wall'] / small['wall']:.2f}  (goal <= 4.4)")
    print(f"(5) throughput: {mpx / small['wall']:.2f} Mpx/s at 1x, {4 * mpx / large['wall']:.2f} Mpx/s at 4x")


if __name__ == "__main__":
    main()
