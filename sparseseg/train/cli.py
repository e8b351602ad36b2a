"""`sparseseg train`: its arguments, and the request they make (the policy is in ``train.request``)."""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path


def add_train_arguments(p: argparse.ArgumentParser, positive_int, positive_float) -> None:
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", nargs="+", type=Path, metavar="SLIDE.ome.zarr",
                      help="annotated OME-Zarr slides (labels/annotations)")
    data.add_argument("--images", type=Path, metavar="DIR", help="folder of images (with --annotations)")
    p.add_argument("--annotations", type=Path, metavar="DIR",
                   help="folder of partial-instance maps (TIFF/PNG) with the images' file stems")
    p.add_argument("--out", type=Path, required=True, metavar="MODEL.pt", help="checkpoint to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out checkpoint")
    p.add_argument("--init", metavar="MODEL.pt|NAME|none",
                   help="start from this checkpoint or bundled model (transfer learning; `sparseseg models`); default: "
                        "the bundled model when the data has its channels and no --depth/--width is asked, "
                        "'none' trains from scratch")
    p.add_argument("--resume", action="store_true", help="continue the run stored in --out")
    p.add_argument("--loss", choices=("sketchpose", "eikonal", "masked"), default="sketchpose")
    budget = p.add_mutually_exclusive_group()
    budget.add_argument("--minutes", type=positive_float, metavar="M", help="wall-clock budget")
    budget.add_argument("--epochs", type=positive_float, metavar="E", default=None,
                        help="passes over the data; one epoch = as many patches as cover the images' area once "
                             "(default 50 when no budget is given)")
    p.add_argument("--workers", type=positive_int, metavar="N", help="data-parallel training on N local Dask workers")
    p.add_argument("--scheduler", metavar="ADDR", help="data-parallel training on every worker of this Dask scheduler")
    p.add_argument("--pixel-size", type=positive_float, metavar="UM",
                   help="pixel size of --images data (slides record theirs)")
    p.add_argument("--train-pixel-size", type=positive_float, metavar="UM",
                   help="train at this pixel size, the data resampled onto it (e.g. an --init model's); default: "
                        "the data's own (the finest, when slides differ)")
    p.add_argument("--channels", metavar="NAME[,NAME]", help="channels to train on (names or indices)")
    p.add_argument("--patch", type=positive_int, default=None, metavar="PX")
    p.add_argument("--batch", type=positive_int, default=None)
    p.add_argument("--lr", type=positive_float, default=None)
    p.add_argument("--depth", type=positive_int, default=None)
    p.add_argument("--width", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--point-encoding", choices=("voronoi", "disks", "clusters"), default="voronoi",
                   help="clicked cells (points) as training labels: a disk each plus the Voronoi edges between them "
                        "as background (default; Qu et al. 2019), the disks alone, or each click's colour cluster "
                        "as its cell's extent (image folders only; what the bundled model v3 learnt from)")
    p.add_argument("--class-weight", type=float, default=None, metavar="W",
                   help="weight of the cell-class loss against the instance loss (default 1; classified points or "
                        "objects in the annotations give the model a class head)")
    p.add_argument("--zoom", type=positive_float, default=None, metavar="F",
                   help="scale augmentation: each patch rescaled by a factor in [1/F, F] (log-uniform; default 1.25, "
                        "1 turns it off): larger teaches the model nuclei of more sizes at one pixel size")
    p.add_argument("--no-calibrate", action="store_true",
                   help="skip tuning the instance parameters on the validation annotations")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def request_from_args(args: argparse.Namespace):
    """The ``TrainRequest`` of a parsed ``sparseseg train`` command line (recorded verbatim in the checkpoint)."""
    from dataclasses import replace

    from sparseseg.infer.predictor import default_device
    from sparseseg.model.registry import resolve_model
    from sparseseg.model.unet import UNetConfig
    from sparseseg.train.loop import TrainConfig
    from sparseseg.train.request import DataSpec, TrainRequest

    channels = tuple(c.strip() for c in args.channels.split(",")) if args.channels else None
    data = DataSpec(slides=tuple(str(p) for p in args.data or ()),
                    images=str(args.images) if args.images else None,
                    annotations=str(args.annotations) if args.annotations else None, channels=channels,
                    point_encoding=args.point_encoding)
    config = TrainConfig(loss=args.loss, seed=args.seed, device=args.device or default_device())
    config = replace(config, **{k: getattr(args, k) for k in ("patch", "batch", "lr", "class_weight")
                                if getattr(args, k) is not None})
    if args.zoom is not None:
        config = replace(config, augmentation=replace(config.augmentation, zoom=args.zoom))
    model = UNetConfig()
    model = replace(model, **{k: getattr(args, k) for k in ("depth", "width") if getattr(args, k) is not None})
    command = "sparseseg " + " ".join(shlex.quote(a) for a in getattr(args, "argv", sys.argv[1:]))
    scratch = args.init is not None and args.init.lower() == "none"
    init = resolve_model(args.init) if args.init and not scratch else None
    bundled_init = args.init is None and not args.resume and args.depth is None and args.width is None
    return TrainRequest(data=data, out=args.out, model=model, config=config, init=init, resume=args.resume,
                        overwrite=args.overwrite, minutes=args.minutes, epochs=args.epochs, workers=args.workers,
                        scheduler=args.scheduler, pixel_size_um=args.pixel_size,
                        model_pixel_size_um=args.train_pixel_size, calibrate=not args.no_calibrate, command=command,
                        bundled_init=bundled_init)
