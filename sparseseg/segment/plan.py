"""Plan a segmentation from metadata alone: model grid, blocks, tissue skips, resume fingerprint.

``plan_segment`` reads the slide's metadata, its tissue mask and one low pyramid level (for the
per-slide normalisation) and the checkpoint; no level-0 pixel. Everything the workers need goes
into a small picklable ``BlockJob``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import zarr

from sparseseg.errors import InputError
from sparseseg.infer.predictor import default_device, instance_params, resolve_precision
from sparseseg.infer.tiles import SLIDE_TILE
from sparseseg.instances.dynamics import InstanceParams
from sparseseg.io.labels import coarse_label_level
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.io.slide import select_channels
from sparseseg.model.checkpoint import load_checkpoint
from sparseseg.model.registry import resolve_model
from sparseseg.model.normalize import Normalization, slide_normalization
from sparseseg.model.grid import grid_scale, model_grid_shape
from sparseseg.segment.options import SegmentOptions
from sparseseg.segment.records import RECORD_FORMAT
from sparseseg.tiling.blocks import BlockGrid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for any block of one run (small and picklable: no pixel data)."""

    slide: str
    checkpoint: str
    checkpoint_mtime_ns: int
    grid: BlockGrid
    normalization: Normalization
    params: InstanceParams
    work: str
    channels: tuple[int, ...] | None = None       # slide channels fed to the network, in order (None: all)
    scale: float = 1.0                            # slide pixel size / model pixel size
    source_shape: tuple[int, int] | None = None   # level-0 shape when scale != 1 (grid.shape is the model grid)
    device: str | None = None                     # None: CUDA where the worker sees a GPU
    threads: int | None = None                    # None: the worker's own setting
    batch: int | None = None                      # tiles per forward (None: 1 on CPU, several on a GPU)
    tile: int = SLIDE_TILE                        # edge of the fixed tiles the network runs on
    large_objects: str = "grow"
    max_object_px: int = 2**31                    # model-grid extent beyond which a large object is not grown
    class_names: tuple[str, ...] = ()             # cell classes of the model's class head (empty: none)
    tta: bool = False                             # fields averaged over the 8 flips / rotations of each tile
    precision: str = "fp32"                       # network arithmetic, fp32 or bf16 (auto resolved when planned)

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.grid.shape


@dataclass(frozen=True)
class SegmentPlan:
    slide: Path
    final: Path          # labels/<name>
    work: Path           # resume records of this label group
    job: BlockJob
    skips: frozenset     # block indices without tissue
    fingerprint: str
    halo: int
    max_object_um: float   # the cap, as asked (``job.max_object_px`` on the model grid)

    @property
    def grid(self) -> BlockGrid:
        return self.job.grid


def _fingerprint(**values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def tissue_skips(slide_path: Path, grid: BlockGrid) -> frozenset:
    """Blocks whose label context holds no tissue (labels/tissue at its finest level <= 1024 px)."""
    root = zarr.open_group(slide_path, mode="r")
    if "labels/tissue" not in root:
        return frozenset()
    mask = coarse_label_level(root["labels/tissue"], 1024)[0] > 0
    fy, fx = grid.shape[0] / mask.shape[0], grid.shape[1] / mask.shape[1]
    # tissue per block context: a summed-area table answers each block in O(1)
    table = np.pad(mask.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    skips = set()
    for block in grid.blocks():
        rows, cols = block.context
        y0, y1 = int(rows.start // fy), max(int(rows.start // fy) + 1, math.ceil(rows.stop / fy))
        x0, x1 = int(cols.start // fx), max(int(cols.start // fx) + 1, math.ceil(cols.stop / fx))
        y1, x1 = min(y1, mask.shape[0]), min(x1, mask.shape[1])
        if table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0] == 0:
            skips.add(block.index)
    return frozenset(skips)


def plan_segment(slide: str | Path, model: str | Path | None, options: SegmentOptions) -> SegmentPlan:
    """Check the inputs and plan the run; raises InputError naming the file or option at fault."""
    slide, model = Path(slide), resolve_model(model)
    info = open_omezarr_slide(slide, fill_missing=options.fill_missing)
    state = load_checkpoint(model)
    channels = select_channels(options.channels, info.channel_names, slide)
    n_channels = len(channels) if channels is not None else info.n_channels
    expected = int(state["config"]["in_channels"])
    if expected != n_channels:
        trained = f" ({', '.join(state['channels'])})" if state.get("channels") else ""
        raise InputError(model, f"model expects {expected} channels{trained}, {slide} gives {n_channels} "
                                f"({', '.join(info.channel_names)}); choose them with --channels")
    if state.get("channels") and channels is not None:
        chosen = tuple(info.channel_names[i] for i in channels)
        if chosen != tuple(state["channels"]):
            log.warning("the model was trained on channels %s; segmenting %s", ", ".join(state["channels"]),
                        ", ".join(chosen))
    factor, halo = int(state["downsampling"]), int(state["halo"])
    if options.tile % factor or options.tile <= 2 * halo:
        raise InputError(None, f"--tile must be a multiple of the model's downsampling factor {factor} and larger "
                               f"than twice its halo ({2 * halo} px), got {options.tile}")
    if options.block % factor:
        raise InputError(None, f"--block must be a multiple of the model's downsampling factor {factor}, "
                               f"got {options.block}")
    margin = -(-options.margin // factor) * factor  # context only: rounded up to the pooling grid
    model_um, slide_um = options.working_pixel_size_um or state.get("pixel_size_um"), info.pixel_size_um
    if options.working_pixel_size_um and not slide_um:
        raise InputError(slide, "records no pixel size, so --working-pixel-size cannot place the model's grid on it; "
                                "re-ingest it with --pixel-size UM")
    scale = grid_scale(slide_um[0] if slide_um else None, model_um)  # the grid train and calibrate use too
    if model_um and not slide_um:
        log.warning("%s records no pixel size: assuming the model's (%.3g um)", slide, model_um)
    final = slide / "labels" / options.name
    if final.exists() and not options.overwrite:
        raise InputError(final, "already exists (use --overwrite to replace it)")
    if final.exists() and "model" not in dict(zarr.open_group(final, mode="r").attrs).get("sparseseg", {}):
        raise InputError(final, "was not written by `sparseseg segment`; --overwrite only replaces "
                                "segmentations (choose another --name)")
    classes_group = slide / "labels" / f"{options.name}_classes"
    if state.get("classes") and classes_group.exists() and not options.overwrite:
        raise InputError(classes_group, "already exists (use --overwrite to replace it)")
    source_shape = tuple(info.shape[1:])
    shape = model_grid_shape(source_shape, scale) if scale != 1.0 else source_shape
    grid = BlockGrid(shape=shape, block=options.block, margin=margin, halo=halo, factor=factor)
    levels = info.levels if channels is None else tuple(level[list(channels)] for level in info.levels)
    normalization = slide_normalization(levels, source=slide)  # once per slide, never per block
    params = instance_params(state.get("instance_params"), options.params)
    # decided once for the run (not per worker): every block must run the same arithmetic to stitch exactly
    precision = resolve_precision(options.precision, options.device or default_device())
    pixel_um = (model_um or (slide_um[0] if slide_um else 0.5))
    max_object_px = max(1, int(math.ceil(options.max_object_um / pixel_um)))
    fingerprint = _fingerprint(model=str(model.resolve()), mtime=model.stat().st_mtime_ns, block=options.block,
                               margin=margin, scale=scale, params=asdict(params), channels=channels,
                               normalization=asdict(normalization), large=options.large_objects,
                               max_object_px=max_object_px, tile=options.tile, records=RECORD_FORMAT, tta=options.tta,
                               precision=precision)
    job = BlockJob(slide=str(slide), checkpoint=str(model.resolve()), checkpoint_mtime_ns=model.stat().st_mtime_ns,
                   grid=grid, normalization=normalization, params=params, work=str(slide / "labels" / f".{options.name}.work"),
                   channels=channels, scale=scale, source_shape=source_shape, device=options.device,
                   threads=options.threads, batch=options.batch, tile=options.tile, large_objects=options.large_objects,
                   max_object_px=max_object_px, class_names=tuple(state.get("classes") or ()), tta=options.tta,
                   precision=precision)
    return SegmentPlan(slide=slide, final=final, work=Path(job.work), job=job, skips=tissue_skips(slide, grid),
                       fingerprint=fingerprint, halo=halo, max_object_um=options.max_object_um)
