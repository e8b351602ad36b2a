"""The ``sparseseg`` command line: one subcommand per pipeline stage; it only builds requests and calls the library.

Every error a user can cause ends as one line on stderr naming the file or option, and exit code 2:
bad arguments (checked when parsed), bad input files (``InputError``), operating-system errors
(permissions, missing folders, a full disk, a closed pipe). Interrupts exit with 130.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

from sparseseg import __version__
from sparseseg.errors import InputError
from sparseseg.infer.tiles import SLIDE_TILE

log = logging.getLogger("sparseseg")


# ---------------------------------------------------------------- argument types: checked at parse time


def _number_type(convert, kind: str, valid, requirement: str):
    """An argparse ``type``: ``convert`` the text (``kind`` names it in the error), then check ``valid``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expects {kind}, got {text!r}") from None
        if not valid(value):
            raise argparse.ArgumentTypeError(f"{requirement}, got {text}")
        return value

    return parse


positive_int = _number_type(int, "a whole number", lambda v: v >= 1, "must be at least 1")
non_negative_int = _number_type(int, "a whole number", lambda v: v >= 0, "must be >= 0")
port_number = _number_type(int, "a whole number", lambda v: 0 <= v <= 65535, "must be a TCP port, 0..65535")
positive_float = _number_type(float, "a number", lambda v: math.isfinite(v) and v > 0, "must be a finite number > 0")
finite_float = _number_type(float, "a number", math.isfinite, "must be a finite number")


def names(text: str) -> tuple[str, ...]:
    """NAME[,NAME...] (channel names or indices)."""
    items = tuple(n.strip() for n in text.split(",") if n.strip())
    if not items:
        raise argparse.ArgumentTypeError("expects NAME[,NAME...]")
    return items


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors ("sparseseg segment: error: argument --block: ...") and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}\n")


# ---------------------------------------------------------------- commands


def _cmd_ingest(args: argparse.Namespace) -> int:
    from sparseseg.ingest import ingest

    dst = ingest(args.src, args.dst, ngff=args.ngff, pixel_size_um=args.pixel_size, chunk=args.chunk,
                 tissue=args.tissue, overwrite=args.overwrite, progress=not args.quiet,
                 fill_missing=args.fill_missing, reader=args.reader)
    print(f"wrote {dst}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from sparseseg.model.registry import describe_models

    rows = describe_models()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        accuracy = "; ".join(f"{k}: {v}" for k, v in (row.get("accuracy") or {}).items())
        print(f"{row['name']}{' (default)' if row['default'] else ''}: {row['megabytes']} MB, "
              f"{row['parameters'] / 1e6:.2f}M parameters, {row['pixel_size_um']} um/px, "
              f"{row['in_channels']} channels ({', '.join(row['channels'] or []) or 'unnamed'}), "
              f"classes: {', '.join(row['classes']) or 'none'}")
        for key in ("data", "licence"):
            if row.get(key):
                print(f"  {key}: {row[key]}")
        if accuracy:
            print(f"  measured: {accuracy}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from sparseseg.info import describe_slide, format_description

    info = describe_slide(args.slide)
    print(json.dumps(info, indent=2) if args.json else format_description(info))
    return 0


def _cmd_annotations_import(args: argparse.Namespace) -> int:
    from sparseseg.annotations.geojson import DEFAULT_CLASS_ROLES
    from sparseseg.annotations.importer import import_annotations

    roles = None
    if args.class_map:
        roles = dict(DEFAULT_CLASS_ROLES)
        for item in args.class_map:
            name, sep, role = item.partition("=")
            if not sep or not name.strip():
                raise InputError(None, f"--class-map expects NAME=ROLE, got {item!r}")
            roles[name.strip().lower()] = role.strip().lower()
    summary = import_annotations(args.slide, args.file, kind=args.kind, class_roles=roles, overwrite=args.overwrite)
    print(f"imported {args.file} into {args.slide}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from sparseseg.train.cli import request_from_args
    from sparseseg.train.request import run_training

    result = run_training(request_from_args(args), progress=not args.quiet, announce=lambda line: print(line, flush=True))
    history = result["history"]
    val = [h["val_loss"] for h in history if "val_loss" in h]
    print(f"wrote {args.out} after {result['step']} steps; validation loss {val[0]:.4f} -> {val[-1]:.4f}"
          if val else f"wrote {args.out}")
    if result.get("calibration"):
        c = result["calibration"]
        print(f"instance parameters calibrated on {c['objects']} annotated objects: {c['score_name']} "
              f"{c['default_score']:.3f} (defaults) -> {c['score']:.3f}; stored in {args.out}")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from sparseseg.train.calibrate import calibrate_checkpoint
    from sparseseg.train.request import DataSpec

    data = DataSpec(slides=tuple(str(p) for p in args.data or ()), images=str(args.images) if args.images else None,
                    annotations=str(args.annotations) if args.annotations else None, channels=args.channels)
    result = calibrate_checkpoint(args.model, data.open(), out=args.out, device=args.device,
                                  overwrite=args.overwrite)
    if result is None:
        raise InputError(args.annotations or args.data[0], "holds no annotated object to calibrate on")
    print(f"calibrated on {result.objects} annotated objects in {result.windows} windows ({result.settings} settings): "
          f"mean F1 at IoU 0.5/0.7 {result.default_score:.3f} -> {result.score:.3f}, F1@0.5 {result.default_f1:.3f} -> "
          f"{result.f1:.3f}; wrote {args.out or args.model}")
    return 0


def _instance_overrides(args: argparse.Namespace) -> dict:
    """Instance parameters given on the command line (they override the checkpoint's calibrated ones)."""
    return {name: getattr(args, name) for name in ("distance_threshold", "flow_error_threshold", "min_size",
                                                   "n_steps") if getattr(args, name, None) is not None}


def _cmd_segment(args: argparse.Namespace) -> int:
    from sparseseg.segment import SegmentOptions, segment_slide

    options = SegmentOptions(name=args.name, block=args.block, margin=args.margin, workers=args.workers,
                             scheduler=args.scheduler, device=args.device, threads=args.threads, batch=args.batch,
                             tile=args.tile, resume=args.resume, overwrite=args.overwrite, large_objects=args.large_objects,
                             max_object_um=args.max_object_um, params=_instance_overrides(args),
                             channels=args.channels, fill_missing=args.fill_missing, tta=args.tta,
                             precision=args.precision, working_pixel_size_um=args.working_pixel_size,
                             progress=not args.quiet)
    result = segment_slide(args.slide, args.model, options)
    left_out = result.too_large + result.dropped_objects
    print(f"wrote {result.labels}: {result.n_objects} objects from {result.n_blocks} blocks "
          f"({result.skipped_blocks} without tissue skipped; {result.large_objects} larger than --margin segmented "
          f"on grown windows" + (f"; {left_out} left out" if left_out else "")
          + (f"; {result.trimmed_objects} cut to their largest piece, {result.trimmed_pixels} px of stray pieces "
             "left as background" if result.trimmed_objects else "") + ")")
    return 0


def _cmd_measure(args: argparse.Namespace) -> int:
    from sparseseg.measure.run import measure_slide

    summary = measure_slide(args.slide, labels=args.labels, regions=args.regions, truth=args.truth, out=args.out,
                            margin=args.margin, progress=not args.quiet, report=not args.no_report,
                            intensities=not args.no_intensities, threads=args.threads, channels=args.channels,
                            truth_points=args.truth_points, match_um=args.match_um, fill_missing=args.fill_missing,
                            compare=args.compare)
    density = summary["density_per_mm2"]
    print(f"{summary['cells']} cells, {summary['tissue_area_mm2']:.4f} mm2 of tissue, "
          f"{density:.4f} cells/mm2" if density is not None else f"{summary['cells']} cells")
    if "accuracy" in summary:
        a = summary["accuracy"]
        print("accuracy: " + ", ".join(f"{k} {a[k]:.4f}" for k in ("precision@0.5", "recall@0.5", "f1@0.5", "mAP",
                                                                   "pq@0.5", "aji", "mean_dice")))
    if "point_accuracy" in summary:
        a = summary["point_accuracy"]
        print(f"cells against annotated points: detection F {a['detection_f1']:.4f} (precision {a['precision']:.4f}, "
              f"recall {a['recall']:.4f})" + (f", mean class F {a['mean_class_f1']:.4f} ("
                                               + ", ".join(f"{k} {v:.4f}" for k, v in a['class_f1'].items()) + ")"
                                               if "class_f1" in a else ""))
    if "report" in summary:
        print(f"report: {summary['report']}")
    return 0


def _cmd_export_geojson(args: argparse.Namespace) -> int:
    from sparseseg.export.geojson import export_slide_geojson

    count = export_slide_geojson(Path(args.slide), args.labels, Path(args.out), classification=args.classification,
                                 margin=args.margin, object_type=args.object_type, measurements=args.measurements,
                                 overwrite=args.overwrite, fill_missing=args.fill_missing)
    print(f"wrote {count} detections to {args.out}")
    return 0


def _cmd_suggest(args: argparse.Namespace) -> int:
    from sparseseg.model.registry import resolve_model
    from sparseseg.suggest import SuggestOptions, suggest

    if args.from_segmentation is not None and args.model is not None:
        raise InputError(None, "--model and --from-segmentation exclude each other: the saved uncertainty is the "
                               "segmentation's model's")
    options = SuggestOptions(regions=args.regions, size_um=args.size, min_tissue=args.min_tissue, workers=args.workers,
                             scheduler=args.scheduler, device=args.device, overwrite=args.overwrite,
                             from_segmentation=args.from_segmentation)
    model = None if args.from_segmentation is not None else resolve_model(args.model)
    proposals = suggest(args.slides, model, Path(args.out), options)
    print(f"wrote {len(proposals)} regions to annotate next to {args.out} (one GeoJSON per slide, index.html): "
          + ", ".join(f"#{c.rank} {Path(c.slide).name} y {c.y} x {c.x} score {c.score:.3f}" for c in proposals[:5])
          + (" ..." if len(proposals) > 5 else ""))
    return 0


def _cmd_view(args: argparse.Namespace) -> int:
    import time
    import webbrowser

    from sparseseg.view import serve

    viewer = serve(args.slide, labels=args.labels, port=args.port, fill_missing=args.fill_missing)
    print(f"serving {args.slide} on {viewer.base_url}/data/ (this machine only); Ctrl-C stops")
    print(f"neuroglancer: {viewer.url}", flush=True)
    if not args.no_browser:
        webbrowser.open(viewer.url)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        viewer.close()
        print("stopped")
        return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from sparseseg.demo import run_demo

    run_demo(Path(args.out), progress=not args.quiet)
    return 0


# ---------------------------------------------------------------- the parser


def _add_instance_arguments(p: argparse.ArgumentParser) -> None:
    """Instance parameters; by default those stored (calibrated) in the checkpoint."""
    group = p.add_argument_group("instance parameters (default: the values calibrated and stored in the model)")
    group.add_argument("--distance-threshold", type=finite_float, metavar="PX",
                       help="foreground: predicted distance above this")
    group.add_argument("--flow-error-threshold", type=positive_float, metavar="E",
                       help="drop objects whose flow error exceeds E")
    group.add_argument("--min-size", type=non_negative_int, metavar="PX",
                       help="drop objects smaller than PX pixels (model grid)")
    group.add_argument("--steps", dest="n_steps", type=positive_int, metavar="N", help="Euler steps along the flow")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="sparseseg", description="Whole-slide nucleus/cell segmentation trained from sparse "
                    "annotations.")
    parser.add_argument("--version", action="version", version=f"sparseseg {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (and tracebacks)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=Parser)

    p = sub.add_parser("ingest", help="convert a slide (SVS, NDPI, MRXS, SCN, BIF, Philips, DICOM WSI, OME-TIFF, TIFF, "
                       "PNG, OME-Zarr) to an OME-Zarr pyramid",
                       description="Convert a slide into an OME-Zarr image pyramid with a tissue mask label.")
    p.add_argument("src", type=Path, help="slide file (any OpenSlide format, OME-TIFF, TIFF, PNG/JPEG), DICOM WSI "
                   "folder or OME-Zarr")
    p.add_argument("dst", type=Path, help="output directory, e.g. slide.ome.zarr")
    p.add_argument("--ngff", choices=("0.4", "0.5"), default="0.4",
                   help="NGFF version: 0.4 (zarr v2, read by most viewers and QuPath; default) or 0.5 (zarr v3)")
    p.add_argument("--pixel-size", type=positive_float, metavar="UM", help="level-0 pixel size in micrometres "
                   "(overrides the file's; needed when the source records none)")
    p.add_argument("--chunk", type=positive_int, default=1024, metavar="PX",
                   help="chunk edge in pixels, a multiple of 16 >= 64 (default 1024)")
    p.add_argument("--tissue", choices=("auto", "brightfield", "fluorescence", "none"), default="auto",
                   help="tissue-mask method (auto: brightfield for 8-bit RGB, else fluorescence)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace DST if it is an OME-Zarr written by sparseseg (only once the new one is complete)")
    p.add_argument("--fill-missing", action="store_true",
                   help="read missing chunks of an OME-Zarr source as its fill value (default: an error)")
    p.add_argument("--reader", choices=("auto", "tifffile", "openslide", "wsidicom", "zarr", "image"), default="auto",
                   help="auto (default): tifffile for the TIFFs it reads itself (SVS, OME-TIFF, NDPI, generic), "
                        "OpenSlide for other vendor formats (MRXS, SCN, BIF, Philips...), wsidicom for DICOM WSI")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_ingest)

    p = sub.add_parser("models", help="list the bundled models", description="The bundled models: pixel size, "
                       "channels, cell classes, training data, licence and measured accuracy (docs/models.md).")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("info", help="describe an OME-Zarr slide", description="Print levels, shapes, dtype, "
                       "chunks, pixel size and labels of an OME-Zarr slide.")
    p.add_argument("slide", type=Path, help="SLIDE.ome.zarr")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("annotations", help="manage sparse annotations of a slide",
                       description="Sparse annotations stored in the slide's OME-Zarr (see docs/annotations.md).")
    annotations = p.add_subparsers(dest="action", required=True, metavar="ACTION", parser_class=Parser)
    p = annotations.add_parser("import", help="import a label image or a QuPath GeoJSON export",
                               description="Import annotations into SLIDE.ome.zarr: a label image (TIFF/PNG/zarr "
                               "at level-0 size) or a QuPath GeoJSON export (level-0 pixel coordinates).")
    p.add_argument("slide", type=Path, help="SLIDE.ome.zarr (from `sparseseg ingest`)")
    p.add_argument("file", type=Path, help="label image (.tif/.png/.zarr) or GeoJSON (.geojson/.json[.gz])")
    p.add_argument("--kind", choices=("partial", "dense", "foreground"), default="partial",
                   help="label images: partial = 0 unknown / 1 background / k>=2 objects (default); dense = "
                        "0 background / k>0 complete objects; foreground = image-level mask (>0 foreground)")
    p.add_argument("--class-map", action="append", metavar="NAME=ROLE",
                   help="GeoJSON: map a QuPath class to object|background|foreground|boundary|point|ignore "
                        "(repeatable; added to the defaults)")
    p.add_argument("--overwrite", action="store_true", help="replace existing annotations")
    p.set_defaults(func=_cmd_annotations_import)

    p = sub.add_parser("train", help="train a distance+flow U-Net from sparse annotations",
                       description="Train from annotated slides (--data) or image folders (--images/--annotations), "
                       "in one process or data-parallel over Dask workers (--workers/--scheduler); then calibrate "
                       "the instance parameters on the held-out annotations.")
    from sparseseg.train.cli import add_train_arguments

    add_train_arguments(p, positive_int, positive_float)
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("calibrate", help="tune a model's instance parameters on annotated images",
                       description="Tune the instance parameters (distance threshold, Euler steps, merge ratio, "
                       "flow-error threshold, minimum size) of a checkpoint on annotated images or slides, scored "
                       "on annotated pixels only, and store them in the checkpoint (segment uses them).")
    p.add_argument("--model", type=Path, required=True, metavar="MODEL.pt")
    data = p.add_mutually_exclusive_group(required=True)
    data.add_argument("--data", nargs="+", type=Path, metavar="SLIDE.ome.zarr", help="annotated OME-Zarr slides")
    data.add_argument("--images", type=Path, metavar="DIR", help="folder of images (with --annotations)")
    p.add_argument("--annotations", type=Path, metavar="DIR", help="folder of partial-instance maps")
    p.add_argument("--channels", type=names, metavar="NAME[,NAME]", help="channels the model takes")
    p.add_argument("--out", type=Path, metavar="MODEL.pt", help="write the calibrated checkpoint here (default: "
                   "update --model in place)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out checkpoint")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.set_defaults(func=_cmd_calibrate)

    p = sub.add_parser("segment", help="segment every cell of a slide into labels/<name>",
                       description="Predict distance + flow block by block on Dask workers (halo from the "
                       "network's receptive field), derive instances from the flows, stitch them across block "
                       "borders by ownership (objects larger than the margin on grown windows), and write a "
                       "uint32 label pyramid.")
    p.add_argument("slide", type=Path, help="SLIDE.ome.zarr")
    p.add_argument("--model", metavar="MODEL.pt|NAME", default=None,
                   help="a checkpoint, or a bundled model's name (default nuclei_he; `sparseseg models` lists them)")
    p.add_argument("--name", default="cells", help="label group name, one folder name (default cells)")
    p.add_argument("--tta", action="store_true",
                   help="test-time augmentation: average the network over the 8 flips / 90-degree rotations "
                        "(8x the network work; tiled still equals whole)")
    p.add_argument("--precision", choices=("fp32", "bf16", "auto"), default="fp32",
                   help="network arithmetic: fp32 (default), bf16 (about 1.6x faster on CPUs with AVX512-BF16/AMX "
                        "and on GPUs; see docs/benchmarks.md for its accuracy), auto = bf16 where the hardware has it")
    p.add_argument("--working-pixel-size", type=positive_float, metavar="UM",
                   help="run the model on a grid of UM micrometres per pixel instead of the pixel size it was trained "
                        "at (its instance parameters stay in pixels of that grid); a finer grid can suit 40x slides "
                        "(docs/accuracy.md)")
    p.add_argument("--block", type=positive_int, default=2048, metavar="PX",
                   help="block edge in px, a multiple of the network downsampling factor (default 2048)")
    p.add_argument("--margin", type=non_negative_int, default=48, metavar="PX",
                   help="instance context around each block (default 48, rounded up to the downsampling factor); "
                        "objects larger than it are segmented again on grown windows")
    cluster = p.add_mutually_exclusive_group()
    cluster.add_argument("--workers", type=positive_int, metavar="N", help="local Dask worker processes (default 1)")
    cluster.add_argument("--scheduler", metavar="ADDR", help="address of a running Dask scheduler")
    p.add_argument("--device", choices=("cuda", "cpu"), help="default: on each worker, cuda where it has a GPU")
    p.add_argument("--threads", type=positive_int, metavar="N",
                   help="torch threads per worker (default: local workers share this machine's cores; workers of "
                        "--scheduler keep their own setting)")
    p.add_argument("--batch", type=positive_int, metavar="N",
                   help="tiles per network forward (default 1 on CPU; as many as fit 16 Mpx on a GPU)")
    p.add_argument("--tile", type=positive_int, default=SLIDE_TILE, metavar="PX",
                   help=f"edge of the fixed tiles the network runs on (default {SLIDE_TILE}; a multiple of the "
                        "downsampling factor, larger than twice the network halo); any --block gives the same labels")
    p.add_argument("--channels", type=names, metavar="NAME[,NAME]",
                   help="slide channels fed to the model, by OME name or index (e.g. DAPI for a nuclei model)")
    p.add_argument("--resume", action="store_true", help="reuse the blocks finished by an interrupted run")
    p.add_argument("--large-objects", choices=("grow", "drop", "error"), default="grow",
                   help="an object reaching its block's context edge: segment it again on a grown window "
                        "(default; up to --max-object-um, larger ones left out and counted), the same but stop "
                        "with an error beyond that size, or drop it (fastest)")
    p.add_argument("--max-object-um", type=positive_float, default=200.0, metavar="UM",
                   help="largest object extent grown for (default 200 um)")
    p.add_argument("--overwrite", action="store_true", help="replace a label group an earlier segment wrote")
    p.add_argument("--fill-missing", action="store_true",
                   help="read image chunks missing on disk as the fill value (default: refuse such a slide)")
    _add_instance_arguments(p)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_segment)

    p = sub.add_parser("measure", help="per-object table, per-region metrics, accuracy and an HTML report",
                       description="Measure every object of a label image of the slide (streamed block by block), "
                       "aggregate per region, compare with ground truth, and write a report.")
    p.add_argument("slide", type=Path, help="SLIDE.ome.zarr")
    p.add_argument("--labels", default="cells", metavar="NAME_OR_FILE",
                   help="label group of the slide (default cells) or a TIFF/PNG/zarr label image of level-0 size")
    p.add_argument("--regions", default="grid:250um", metavar="grid:SIZEum|tissue|FILE.geojson",
                   help="square grid (default grid:250um), tissue components, or ROI polygons from a GeoJSON file")
    p.add_argument("--truth", metavar="NAME_OR_FILE", help="ground-truth labels (group or file) for accuracy")
    p.add_argument("--compare", metavar="NAME_OR_FILE",
                   help="another segmentation (group or file, e.g. before fine-tuning) outlined beside LABELS on the "
                        "report's full-resolution crop, with both object counts")
    p.add_argument("--truth-points", metavar="POINTS.csv",
                   help="annotated cells (CSV y,x[,class] in level-0 pixels): detection F and per-class F of the "
                        "objects' centroids, matched one-to-one within --match-um")
    p.add_argument("--match-um", type=positive_float, default=3.0, metavar="UM",
                   help="largest centroid-to-point distance of a match (default 3 um: 12 px at 40x, 6 px at 20x)")
    p.add_argument("--out", type=Path, metavar="DIR", help="output folder (default SLIDE-measure next to the slide)")
    p.add_argument("--no-report", action="store_true", help="tables and metrics only: no figures, no report.html")
    p.add_argument("--no-intensities", action="store_true",
                   help="shape columns only: no per-channel means or H&E densities (the image is not read)")
    p.add_argument("--threads", type=positive_int, default=2, metavar="N", help="tiles measured at once (default 2)")
    p.add_argument("--channels", type=names, metavar="NAME[,NAME]",
                   help="channels whose mean intensities the table holds (default: every channel of the slide)")
    p.add_argument("--margin", type=non_negative_int, default=64, metavar="PX",
                   help="join the parts of a disconnected object lying within PX of the same tile seam (default "
                   "64); connected objects of any size are always measured whole")
    p.add_argument("--fill-missing", action="store_true",
                   help="read image and label chunks missing on disk as their fill value (default: refuse a damaged "
                        "copy)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_measure)

    p = sub.add_parser("export", help="export results", description="Export results for other tools.")
    export = p.add_subparsers(dest="action", required=True, metavar="FORMAT", parser_class=Parser)
    p = export.add_parser("geojson", help="QuPath-importable GeoJSON of the cells",
                          description="One detection Feature per object (contour in level-0 pixel coordinates), "
                          "streamed; .gz compresses.")
    p.add_argument("slide", type=Path, help="SLIDE.ome.zarr")
    p.add_argument("--labels", default="cells", metavar="NAME_OR_FILE", help="label group or label image file")
    p.add_argument("--out", required=True, metavar="F", help="cells.geojson or cells.geojson.gz")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file (a regular file only)")
    p.add_argument("--fill-missing", action="store_true",
                   help="read label chunks missing on disk as background (default: refuse a damaged copy)")
    p.add_argument("--classification", default="Nucleus",
                   help="QuPath class of the detections (default Nucleus; a segmentation with cell classes gives each "
                        "detection its own)")
    p.add_argument("--object-type", choices=("detection", "cell"), default="detection",
                   help="QuPath object type: detection (default) or cell (the nucleus as the cell's nucleus)")
    p.add_argument("--measurements", type=Path, metavar="objects.parquet",
                   help="add the object table of `sparseseg measure` as QuPath measurements (area, perimeter, "
                        "circularity, H&E densities, channel means)")
    p.add_argument("--margin", type=non_negative_int, default=64, metavar="PX",
                   help="outline the parts of a disconnected object lying within PX of the same tile seam as one "
                   "feature (default 64); connected objects of any size are always exported whole")
    p.set_defaults(func=_cmd_export_geojson)

    p = sub.add_parser("suggest", help="propose the regions whose annotation should help the model most",
                       description="Score squares of --size um over the slides (tissue, not yet annotated) by the "
                       "model's doubt (mirror-image disagreement, flow error, distance near the threshold, class "
                       "doubt), keep the best of diverse tissue, and write them as QuPath annotations of class "
                       "'Annotate next' (DIR/<slide>.geojson) with thumbnails (DIR/index.html).")
    p.add_argument("slides", type=Path, nargs="+", metavar="SLIDE", help="SLIDE.ome.zarr, or a folder of them")
    p.add_argument("--model", metavar="MODEL.pt|NAME", default=None, help="a checkpoint or a bundled model's name "
                   "(default nuclei_he)")
    p.add_argument("--regions", type=positive_int, default=10, metavar="N", help="regions to propose (default 10)")
    p.add_argument("--size", type=positive_float, default=100.0, metavar="UM", help="square edge (default 100 um)")
    p.add_argument("--min-tissue", type=finite_float, default=0.5, metavar="F",
                   help="fraction of a square that must be tissue (default 0.5)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder to write (new, or --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an earlier suggest output folder")
    p.add_argument("--workers", type=positive_int, default=None, help="local Dask workers (default 2)")
    p.add_argument("--scheduler", default=None, metavar="ADDR", help="an existing Dask scheduler")
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda when available")
    p.add_argument("--from-segmentation", default=None, metavar="NAME",
                   help="score from the uncertainty `sparseseg segment --name NAME` saved beside its labels instead of "
                   "running the model (no network; the disagreement component only when segment ran with --tta; --model "
                   "does not apply)")
    p.set_defaults(func=_cmd_suggest)

    p = sub.add_parser("view", help="look at a slide and its labels in neuroglancer (served on 127.0.0.1)",
                       description="Serve the slide (read-only) and neuroglancer's web client on 127.0.0.1 and open "
                       "the viewer: the image at its physical scale (RGB in colour), each label group as a "
                       "segmentation layer. Works offline; stops with Ctrl-C.")
    p.add_argument("slide", type=Path, help="SLIDE.ome.zarr")
    p.add_argument("--labels", type=names, metavar="NAME[,NAME]", help="label groups to show (default: all)")
    p.add_argument("--port", type=port_number, default=0, help="port on 127.0.0.1 (default: a free one)")
    p.add_argument("--no-browser", action="store_true", help="print the URL only")
    p.add_argument("--fill-missing", action="store_true",
                   help="show label chunks missing on disk as background (refused by default)")
    p.set_defaults(func=_cmd_view)

    p = sub.add_parser("demo", help="run the pipeline on the bundled CC0 demo slide",
                       description="Run the main job on the bundled CC0 slide and print where the outputs are.")
    p.add_argument("--out", default="demo-output", help="output directory (default demo-output)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("DASK_LOGGING__DISTRIBUTED", "warning")  # before distributed configures logging
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a bad argument (already said in one line)
        return int(exc.code or 0)
    args.argv = argv  # recorded in checkpoints as the exact training command
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # tifffile logs every oddity it repairs, distributed every worker start, and
        logging.getLogger("tifffile").setLevel(logging.ERROR)  # libraries' warnings are not the user's business
        logging.getLogger("distributed").setLevel(logging.ERROR)
        logging.getLogger("pydicom").setLevel(logging.ERROR)
        warnings.simplefilter("ignore")
        # multiprocessing's resource tracker (its own process, started with these options) reports the
        # semaphores of a worker killed at shutdown after the error line has been printed
        if "ignore:resource_tracker:UserWarning" not in sys.warnoptions:
            sys.warnoptions.append("ignore:resource_tracker:UserWarning")
    command = "sparseseg " + " ".join(filter(None, [args.command, getattr(args, "action", None)]))
    try:
        return args.func(args)
    except InputError as exc:
        log.debug("details", exc_info=True)
        print(f"{command}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # the reader went away (`sparseseg info S | head`): nothing more to say to it
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        print(f"{command}: error: standard output was closed before everything was written", file=sys.stderr)
        return 2
    except OSError as exc:  # permissions, missing folders, a full disk: the OS names the file
        log.debug("details", exc_info=True)
        where = f"{exc.filename}: " if exc.filename else ""
        print(f"{command}: error: {where}{exc.strerror or _one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
