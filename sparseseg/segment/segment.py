"""`sparseseg segment`: instance labels for a whole slide, block by block on Dask workers.

Pass 1 (one task per block): predict with the receptive-field halo, find instances on the label
context, keep the objects the block owns (``blocks.Block.owns``), store them (resume record).
Pass 2 (one task per output chunk): give every block's objects global ids (per-block counts +
prefix sum: compact uint32, no digit packing) and compose each output chunk from the blocks whose
context touches it; then the label pyramid. The label group appears only when complete.

Guarantee: with every object smaller than ``margin``, the labels equal those of segmenting the
whole image at once (up to the order of ids); an object reaching a context edge raises an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, replace
from functools import lru_cache
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from sparseseg.cluster import dask_client, workers_spec
from sparseseg.errors import InputError
from sparseseg.instances.flows import InstanceParams
from sparseseg.io.labels import coarse_label_level, write_label_pyramid
from sparseseg.io.omezarr import open_omezarr_slide
from sparseseg.segment.blocks import BlockPlan
from sparseseg.segment.blockwork import BlockJob, run_block
from sparseseg.segment.rescale import level0_to_model_indices, model_grid_shape
from sparseseg.train.checkpoint import load_checkpoint
from sparseseg.train.normalize import slide_normalization

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SegmentResult:
    labels: Path
    n_objects: int
    n_blocks: int
    skipped_blocks: int
    amplification: float
    dropped_objects: int = 0


def _tissue_skips(slide_path: Path, plan: BlockPlan) -> set[tuple[int, int]]:
    """Blocks whose label context holds no tissue (labels/tissue at its coarsest level <= 1024 px)."""
    root = zarr.open_group(slide_path, mode="r")
    if "labels/tissue" not in root:
        return set()
    mask = coarse_label_level(root["labels/tissue"], 1024)[0] > 0
    fy, fx = (plan.shape[0] / mask.shape[0], plan.shape[1] / mask.shape[1])
    skips = set()
    for block in plan.blocks():
        rows, cols = block.context
        part = mask[int(rows.start // fy): int(np.ceil(rows.stop / fy)), int(cols.start // fx): int(np.ceil(cols.stop / fx))]
        if not part.any():
            skips.add(block.index)
    return skips


@lru_cache(maxsize=16)
def _load_block(path: str) -> np.ndarray:
    with np.load(path) as data:
        return data["labels"]


def compose_window(window, plan: BlockPlan, work: Path, offsets: dict[str, int]) -> np.ndarray:
    """Global uint32 labels over a level-0 window from the stored owned objects of nearby blocks."""
    rows, cols = window
    out = np.zeros((rows.stop - rows.start, cols.stop - cols.start), np.uint32)
    for block in plan.blocks_touching(window):
        labels = _load_block(str(work / "blocks" / f"{block.name}.npz"))
        if not labels.size:
            continue
        r0, r1 = max(rows.start, block.context[0].start), min(rows.stop, block.context[0].stop)
        c0, c1 = max(cols.start, block.context[1].start), min(cols.stop, block.context[1].stop)
        part = labels[r0 - block.context[0].start: r1 - block.context[0].start,
                      c0 - block.context[1].start: c1 - block.context[1].start]
        inside = part > 0
        out[r0 - rows.start: r1 - rows.start, c0 - cols.start: c1 - cols.start][inside] = \
            part[inside] + np.uint32(offsets[block.name])
    return out


def _fingerprint(**values) -> str:
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def segment_slide(slide: str | Path, model: str | Path, *, name: str = "cells", block: int = 2048,
                  margin: int = 48, workers: int | None = None, scheduler: str | None = None,
                  device: str | None = None, threads: int | None = None, resume: bool = False, overwrite: bool = False,
                  params: InstanceParams = InstanceParams(n_steps=50), large_objects: str = "drop",
                  progress: bool = True) -> SegmentResult:
    """Segment every cell of ``slide`` into ``labels/<name>``; see the module docstring.

    ``threads``: torch threads per worker. Default: this machine's cores shared among our own local
    workers; with ``scheduler``, the workers' own setting (Dask's nanny sets OMP_NUM_THREADS=1).
    """
    import torch
    from distributed import as_completed

    slide, model = Path(slide), Path(model)
    info = open_omezarr_slide(slide)
    state = load_checkpoint(model)
    if state["config"]["in_channels"] != info.n_channels:
        raise InputError(model, f"model expects {state['config']['in_channels']} channels, "
                                f"{slide} has {info.n_channels}")
    model_um, slide_um = state.get("pixel_size_um"), info.pixel_size_um
    scale = 1.0
    if model_um and slide_um and abs(slide_um[0] / model_um - 1) > 0.02:
        scale = slide_um[0] / model_um  # segment on the model grid, write labels at level 0
    elif model_um and not slide_um:
        log.warning("%s records no pixel size: assuming the model's (%.3g um)", slide, model_um)
    final = slide / "labels" / name
    if final.exists() and not overwrite:
        raise InputError(final, "already exists (use --overwrite to replace it)")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if params.n_steps is None:
        raise ValueError("block-wise segmentation needs a fixed InstanceParams.n_steps")
    normalization = slide_normalization(info.levels)  # once per slide, never per block
    source_shape = tuple(info.shape[1:])
    shape = model_grid_shape(source_shape, scale) if scale != 1.0 else source_shape
    plan = BlockPlan(shape=shape, block=block, margin=margin, halo=int(state["halo"]), factor=int(state["downsampling"]))
    work = slide / "labels" / f".{name}.work"
    fingerprint = _fingerprint(model=str(model.resolve()), mtime=model.stat().st_mtime_ns, block=block, scale=scale,
                               margin=margin, params=asdict(params), normalization=asdict(normalization))
    stamp = work / "fingerprint.json"
    if work.exists() and not (resume and stamp.exists() and json.loads(stamp.read_text())["id"] == fingerprint):
        shutil.rmtree(work)  # stale or not resuming: start afresh
    (work / "blocks").mkdir(parents=True, exist_ok=True)
    stamp.write_text(json.dumps({"id": fingerprint}))
    skips = _tissue_skips(slide, plan)
    blocks = list(plan.blocks())
    job = BlockJob(slide=str(slide), checkpoint=str(model.resolve()), checkpoint_mtime_ns=model.stat().st_mtime_ns,
                   device=device, normalization=normalization, params=params, image_shape=tuple(shape),
                   work=str(work), scale=scale, source_shape=source_shape, large_objects=large_objects)
    if threads:
        job = replace(job, threads=threads)
    elif not scheduler:  # our own local workers share this machine's cores
        job = replace(job, threads=max(1, (os.cpu_count() or 1) // (workers or 1)))
    counts: dict[str, int] = {}
    dropped_total = 0
    with dask_client(workers_spec(workers, scheduler)) as client:
        futures = {client.submit(run_block, job, b, b.index in skips, pure=False, key=f"block-{b.name}-{fingerprint}"): b
                   for b in blocks}
        bar = tqdm(total=len(blocks), desc="blocks", disable=not progress, dynamic_ncols=True)
        for future in as_completed(futures, loop=client.loop):
            b = futures[future]
            if future.status != "finished":
                error = future.exception()
                for other in futures:
                    other.cancel()
                raise InputError(slide, f"block {b.name} failed: {type(error).__name__}: {error}") from None
            counts[b.name], dropped = future.result()
            dropped_total += dropped
            bar.update(1)
        bar.close()
    offsets, total = {}, 0
    for b in blocks:  # block order, so ids are the same whatever order blocks finished in
        offsets[b.name] = total
        total += counts[b.name]
    if total >= 2**32 - 1:
        raise InputError(slide, f"{total} objects do not fit uint32 labels")
    _load_block.cache_clear()

    def level0_window(window):
        if scale == 1.0:
            return compose_window(window, plan, work, offsets)
        rows = level0_to_model_indices(window[0].start, window[0].stop, scale, shape[0])
        cols = level0_to_model_indices(window[1].start, window[1].stop, scale, shape[1])
        grid = compose_window((slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)),
                              plan, work, offsets)
        return grid[np.ix_(rows - rows[0], cols - cols[0])]

    write_label_pyramid(slide, name, level0_window, np.uint32, overwrite,
                        f"flow-derived instances at {scale:.4g}x, stitched by block ownership",
                        properties=[{"label-value": 0, "class": "background"}])
    shutil.rmtree(work, ignore_errors=True)
    if dropped_total:
        log.warning("%d objects larger than --margin %d px were dropped (they could be cut at block edges)",
                    dropped_total, margin)
    group = zarr.open_group(final, mode="r+")
    group.attrs["sparseseg"] = {"objects": int(total), "dropped_too_large": int(dropped_total), "scale": scale,
                                "model": str(model), "block": block, "margin": margin, "halo": int(state["halo"])}
    return SegmentResult(labels=final, n_objects=total, n_blocks=len(blocks), skipped_blocks=len(skips),
                         amplification=plan.amplification(), dropped_objects=dropped_total)
