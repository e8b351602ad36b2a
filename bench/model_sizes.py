"""Throughput of `segment` for several model sizes, side by side in one run (the accuracy side of the
table comes from bench/accuracy.py or the experiments in docs/accuracy.md).

Each checkpoint segments the same real-content slide (the CMU-1 mosaic of bench/segment.py, recorded
at the model's pixel size) on the same LocalCluster settings; prints parameters, wall time and
megapixels per second, and each model's throughput relative to the first.

    python bench/model_sizes.py --models w8.pt w16.pt w32.pt [--edge 4096] [--workers 2] [--threads 1]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from segment import run  # noqa: E402  (bench/segment.py: one timed `segment` on a LocalCluster)

from sparseseg.model.checkpoint import load_checkpoint  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, nargs="+", required=True)
    parser.add_argument("--edge", type=int, default=4096)
    parser.add_argument("--block", type=int, default=2048)
    parser.add_argument("--margin", type=int, default=48)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/sparseseg-bench/model-sizes"))
    args = parser.parse_args()
    rows = []
    for model in args.models:
        state = load_checkpoint(model)
        config = state["config"]
        parameters = sum(v.numel() for k, v in state["state_dict"].items() if not k.endswith(("running_mean",
                                                                                                "running_var",
                                                                                                "num_batches_tracked")))
        workdir = args.workdir / f"{state['pixel_size_um']}"
        workdir.mkdir(parents=True, exist_ok=True)
        result = run(args.edge, workdir, model, args.block, args.margin, args.workers, args.threads)
        mpx = args.edge ** 2 / 1e6 / result["wall"]
        rows.append((f"{model.parent.name}/{model.name}", config.get("width"), config.get("depth"), parameters,
                     result["wall"], mpx, result["objects"]))
    print(f"{'model':28s} width depth  parameters  wall s   Mpx/s  vs first  objects")
    for name, width, depth, parameters, wall, mpx, objects in rows:
        print(f"{name:28s} {width:5d} {depth:5d} {parameters:11d} {wall:7.1f} {mpx:7.3f} {mpx / rows[0][5]:8.2f}x "
              f"{objects:8d}")


if __name__ == "__main__":
    main()
