"""What the class head costs `segment`: the same network with and without its class head, side by side.

Both checkpoints share every weight of the body and the distance/flow outputs; the untyped one is the typed
one with its class channels cut off. Each segments the same real-content slide (the CMU-1 region tiled to
``--edge``), twice, in alternating order; the ratio of the best times is the throughput with / without the
head (the goal is >= 0.90).

    python bench/classes.py --model /tmp/models/typed.pt [--edge 4096] [--workers 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import write_mosaic  # noqa: E402

from sparseseg.ingest import ingest  # noqa: E402
from sparseseg.model.checkpoint import load_checkpoint  # noqa: E402
from sparseseg.segment import SegmentOptions, segment_slide  # noqa: E402


def without_classes(model: Path, out: Path) -> Path:
    """``model`` with its class head cut off (body, distance and flow outputs untouched)."""
    state = load_checkpoint(model)
    outputs = 3 + int(state["config"].get("boundary_head", False))
    state["state_dict"]["head.weight"] = state["state_dict"]["head.weight"][:outputs].clone()
    state["state_dict"]["head.bias"] = state["state_dict"]["head.bias"][:outputs].clone()
    state["config"] = {**state["config"], "classes": 0}
    state["classes"] = []
    torch.save(state, out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a checkpoint with a class head")
    parser.add_argument("--edge", type=int, default=4096)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/classes"))
    args = parser.parse_args()
    if not load_checkpoint(args.model).get("classes"):
        raise SystemExit(f"{args.model} has no class head")
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    tif = args.workdir / "mosaic.tif"
    write_mosaic(tif, args.edge)
    slide = ingest(tif, args.workdir / "slide.ome.zarr", progress=False)
    models = {"with head": args.model, "without": without_classes(args.model, args.workdir / "untyped.pt")}
    times = {name: [] for name in models}
    for name in list(models) + list(reversed(models)):
        options = SegmentOptions(workers=args.workers, threads=args.threads, overwrite=True, progress=False)
        start = time.perf_counter()
        result = segment_slide(slide, models[name], options)
        times[name].append(time.perf_counter() - start)
        print(f"{name}: {times[name][-1]:.1f} s, {result.n_objects} objects", flush=True)
    best = {name: min(t) for name, t in times.items()}
    mpx = args.edge**2 / 1e6
    print(f"{args.edge}x{args.edge}, {args.workers} worker(s) x {args.threads} thread(s): with the class head "
          f"{mpx / best['with head']:.3f} Mpx/s, without {mpx / best['without']:.3f} Mpx/s; throughput ratio "
          f"{best['without'] / best['with head']:.3f}")


if __name__ == "__main__":
    main()
