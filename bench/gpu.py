"""Segment, train (DDP) and the process-archive flow on the GPUs present, or on the CPU where there are none.

Prints, measured in one run:
- segment on a real-content slide (the CMU region tiled, JPEG-tiled TIFF -> `sparseseg ingest`) with 1 and
  with several Dask workers (one GPU each, `torch.cuda.set_device` per worker): wall time, Mpx/s, the
  devices' busy percentage (`nvidia-smi` sampled every 200 ms during the run; "n/a" without a GPU), and
  where the workers' pipelines spent their time: waiting on reads, in the network, waiting on the previous
  block's instances (`segment.engine.PIPELINE_SECONDS`, collected from every worker);
- `sparseseg train` data-parallel over the same worker counts for a fixed budget (the committed DSB H&E
  images with complete labels): optimiser steps per second and the devices' busy percentage;
- the `process-archive` Prefect flow (ephemeral API) over two slides: wall time and Mpx/s.

On a machine without CUDA every stage runs on the CPU (one torch thread per worker), which is how the
script is tested; on a GPU machine it is the measurement of issue 25.

    python bench/gpu.py [--edge 8192] [--workers 1 2] [--train-minutes 1] [--precision fp32|bf16] [--device auto]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[1]))  # flows/
from ingest import write_mosaic  # noqa: E402  (the ingest benchmark's real-content mosaic)

from sparseseg.cluster import worker_environment  # noqa: E402
from sparseseg.ingest import ingest  # noqa: E402
from sparseseg.segment import SegmentOptions, segment_slide  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "sparseseg" / "data" / "models" / "nuclei_he.pt"
TRAIN_DATA = ROOT / "tests" / "data" / "dsb2018"


class BusySampler:
    """Mean utilisation (%) of the first ``gpus`` GPUs while the context is open (``nvidia-smi -lms 200``)."""

    def __init__(self, gpus: int):
        self.gpus = gpus
        self.samples: list[float] = []
        self._process = None

    def __enter__(self) -> BusySampler:
        if self.gpus and shutil.which("nvidia-smi"):
            self._process = subprocess.Popen(
                ["nvidia-smi", "--query-gpu=index,utilization.gpu", "--format=csv,noheader,nounits", "-lms", "200"],
                stdout=subprocess.PIPE, text=True)
            threading.Thread(target=self._collect, daemon=True).start()
        return self

    def _collect(self) -> None:
        for line in self._process.stdout:
            index, busy = (part.strip() for part in line.split(","))
            if index.isdigit() and int(index) < self.gpus and busy.replace(".", "").isdigit():
                self.samples.append(float(busy))

    def __exit__(self, *exc) -> None:
        if self._process is not None:
            self._process.terminate()
            self._process.wait()

    def describe(self) -> str:
        return f"{sum(self.samples) / len(self.samples):.0f} %" if self.samples else "n/a"


def _bind_device(index: int, device: str) -> str:
    """Pin this worker to GPU ``index`` (CPU: one torch thread); what it will compute on."""
    if device == "cuda":
        torch.cuda.set_device(index % torch.cuda.device_count())
        return f"cuda:{torch.cuda.current_device()} {torch.cuda.get_device_name()}"
    torch.set_num_threads(1)
    return "cpu"


def _reset_pipeline_seconds() -> None:
    from sparseseg.segment import engine

    engine.PIPELINE_SECONDS = engine.PipelineSeconds()


def _pipeline_seconds() -> tuple[float, float, float, int]:
    from sparseseg.segment.engine import PIPELINE_SECONDS as s

    return s.read_wait, s.forward, s.instances_wait, s.blocks


def make_slide(workdir: Path, edge: int) -> Path:
    source = workdir / f"mosaic-{edge}.tif"
    if not source.exists():
        write_mosaic(source, edge)
    slide = workdir / f"slide-{edge}.ome.zarr"
    if not slide.exists():
        ingest(source, slide, pixel_size_um=0.5, progress=False)
    return slide


def bench_segment(slide: Path, edge: int, workers: int, device: str, gpus: int, precision: str) -> str:
    from distributed import Client, LocalCluster

    with worker_environment():
        cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        addresses = sorted(client.scheduler_info()["workers"])
        bound = [client.run(_bind_device, i, device, workers=[a])[a] for i, a in enumerate(addresses)]
        client.run(_reset_pipeline_seconds)
        options = SegmentOptions(scheduler=cluster.scheduler_address, device=device, overwrite=True, progress=False,
                                 precision=precision, threads=1 if device == "cpu" else None)
        with BusySampler(min(workers, gpus)) as busy:
            start = time.perf_counter()
            result = segment_slide(slide, MODEL, options)
            wall = time.perf_counter() - start
        seconds = list(client.run(_pipeline_seconds).values())
    read_wait, forward, instances_wait, blocks = (sum(s[i] for s in seconds) for i in range(4))
    pipeline = max(read_wait + forward + instances_wait, 1e-9)
    return (f"segment {edge}^2, {workers} worker(s) [{', '.join(sorted(set(bound)))}], {precision}: {wall:.1f} s, "
            f"{edge * edge / 1e6 / wall:.2f} Mpx/s, {result.n_objects} objects, device busy {busy.describe()}; "
            f"pipeline over {blocks} blocks: waiting on reads {read_wait:.1f} s ({read_wait / pipeline:.1%}), "
            f"network {forward:.1f} s ({forward / pipeline:.1%}), waiting on instances {instances_wait:.1f} s "
            f"({instances_wait / pipeline:.1%})")


def bench_train(workdir: Path, workers: int, device: str, gpus: int, minutes: float) -> str:
    images, annotations = workdir / "train-images", workdir / "train-annotations"
    for folder in (images, annotations):
        folder.mkdir(exist_ok=True)
    for path in sorted((TRAIN_DATA / "images").glob("he_*.png")):
        shutil.copy(path, images / path.name)
        shutil.copy(TRAIN_DATA / "labels" / f"{path.stem}.tif", annotations / f"{path.stem}.tif")
    out = workdir / f"train-{workers}.pt"
    command = [sys.executable, "-m", "sparseseg.cli", "train", "--images", str(images), "--annotations",
               str(annotations), "--pixel-size", "0.5", "--minutes", str(minutes), "--out", str(out), "--overwrite",
               "--no-calibrate", "--device", device, "-q"] + (["--workers", str(workers)] if workers > 1 else [])
    with BusySampler(min(workers, gpus)) as busy:
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True, text=True)
        wall = time.perf_counter() - start
    from sparseseg.model.checkpoint import load_checkpoint

    steps = int(load_checkpoint(out)["step"])
    return (f"train {workers} rank(s) on {device}: {steps} steps in {wall:.1f} s (budget {minutes * 60:.0f} s), "
            f"{steps / (minutes * 60):.2f} steps/s of budget, device busy {busy.describe()}")


def bench_flow(workdir: Path, edge: int, gpus: int) -> str:
    from flows.pipeline import process_archive

    archive, output = workdir / "archive", workdir / "archive-out"
    shutil.rmtree(output, ignore_errors=True)
    archive.mkdir(exist_ok=True)
    for name in ("a", "b"):
        target = archive / f"{name}.tif"
        if not target.exists():
            write_mosaic(target, edge)
    with BusySampler(gpus) as busy:
        start = time.perf_counter()
        rows = process_archive(str(archive), str(output), str(MODEL))
        wall = time.perf_counter() - start
    cells = sum(int(row.get("cells", 0) or 0) for row in rows)
    return (f"process-archive flow, 2 slides of {edge}^2: {wall:.1f} s, {2 * edge * edge / 1e6 / wall:.2f} Mpx/s "
            f"end to end (ingest, segment, measure, export), {cells} cells, device busy {busy.describe()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edge", type=int, default=8192, help="slide edge in px (segment)")
    parser.add_argument("--flow-edge", type=int, default=2048, help="slide edge in px (process-archive flow)")
    parser.add_argument("--workers", type=int, nargs="+", help="worker counts (default: 1 and the GPU count, "
                                                               "or 1 and 2 on a CPU)")
    parser.add_argument("--train-minutes", type=float, default=1.0)
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--stages", nargs="+", choices=("segment", "train", "flow"),
                        default=["segment", "train", "flow"])
    parser.add_argument("--workdir", type=Path, help="default: a temporary folder, removed afterwards")
    args = parser.parse_args()
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    counts = args.workers or sorted({1, max(gpus, 2 if device == "cpu" else 1)})
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="sparseseg-gpu-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"device {device}, {gpus} GPU(s)" + (f" ({torch.cuda.get_device_name(0)})" if gpus else "")
          + f", worker counts {counts}", flush=True)
    try:
        if "segment" in args.stages:
            slide = make_slide(workdir, args.edge)
            for workers in counts:
                print(bench_segment(slide, args.edge, workers, device, gpus, args.precision), flush=True)
        if "train" in args.stages:
            for workers in counts:
                print(bench_train(workdir, workers, device, gpus, args.train_minutes), flush=True)
        if "flow" in args.stages:
            print(bench_flow(workdir, args.flow_edge, gpus), flush=True)
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
