"""`sparseseg train`: argument handling kept out of the generic CLI module."""

from __future__ import annotations

import argparse
import math
import shlex
import sys
from pathlib import Path

from sparseseg.errors import InputError


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", nargs="+", type=Path, metavar="SLIDE.ome.zarr",
                      help="annotated OME-Zarr slides (labels/annotations)")
    data.add_argument("--images", type=Path, metavar="DIR", help="folder of images (with --annotations)")
    p.add_argument("--annotations", type=Path, metavar="DIR",
                   help="folder of partial-instance maps (TIFF/PNG) with the images' file stems")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.pt", help="checkpoint to write")
    p.add_argument("--init", type=Path, metavar="MODEL.pt", help="start from this checkpoint (transfer learning)")
    p.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    p.add_argument("--loss", choices=("sketchpose", "eikonal", "masked"), default="sketchpose")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=float, metavar="M", help="wall-clock budget")
    budget.add_argument("--epochs", type=float, metavar="E", default=None,
                        help="passes over the data; one epoch = as many patches as cover the images' area once")
    p.add_argument("--workers", type=int, metavar="N", help="data-parallel training on N local Dask workers")
    p.add_argument("--scheduler", metavar="ADDR", help="data-parallel training on every worker of this Dask scheduler")
    p.add_argument("--pixel-size", type=float, metavar="UM", help="pixel size of --images data (slides record theirs)")
    p.add_argument("--patch", type=int, default=128, metavar="PX")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--depth", type=int, default=3)
    p.add_argument("--width", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def run_train(args: argparse.Namespace) -> dict:
    import torch

    from sparseseg.model.unet import UNetConfig
    from sparseseg.train.distributed import open_sources, train_on_dask
    from sparseseg.train.loop import TrainConfig, train

    if args.images is not None and args.annotations is None:
        raise InputError(None, "--images needs --annotations DIR")
    spec = {"slides": [str(p) for p in args.data]} if args.data else \
        {"images": str(args.images), "annotations": str(args.annotations)}
    sources = open_sources(spec)
    channels = {s.n_channels for s in sources}
    if len(channels) != 1:
        raise InputError(None, f"training images mix channel counts {sorted(channels)}")
    pixel_size = args.pixel_size
    if pixel_size is None and args.data:
        sizes = {s.pixel_size_um[0] for s in sources if s.pixel_size_um}
        pixel_size = sizes.pop() if len(sizes) == 1 else None
    area = sum(s.shape[0] * s.shape[1] for s in sources)
    per_epoch = max(1, math.ceil(area / (args.patch**2 * args.batch)))
    steps = 10**9 if args.minutes else max(1, round((args.epochs or 50) * per_epoch))
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    config = TrainConfig(loss=args.loss, patch=args.patch, batch=args.batch, lr=args.lr, steps=steps,
                         minutes=args.minutes, seed=args.seed, device=device)
    model_config = UNetConfig(in_channels=channels.pop(), depth=args.depth, width=args.width)
    command = "sparseseg " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    # with 5+ images/slides, every 5th is held out for the validation loss (never trained on)
    val_sources = sources[4::5] if len(sources) >= 5 else None
    train_sources = [s for i, s in enumerate(sources) if i % 5 != 4] if val_sources else sources
    if args.workers or args.scheduler:
        return train_on_dask(spec, args.out, model_config, config, workers=args.workers, scheduler=args.scheduler,
                             init=args.init, resume=args.resume, command=command, pixel_size_um=pixel_size)
    return train(train_sources, args.out, model_config, config, init=args.init, resume=args.resume, command=command,
                 pixel_size_um=pixel_size, progress=not args.quiet, val_sources=val_sources)
