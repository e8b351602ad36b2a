"""What one Dask task does for one block: read, predict, find instances, keep the owned ones.

The model is loaded once per worker process (cached by checkpoint path and mtime), never per
block. Results go to ``<work>/blocks/<name>.npz`` (written atomically), which is also the record
that the block is done (resume).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import zarr

from sparseseg.infer.tiling import read_canvas
from sparseseg.instances.flows import InstanceParams, flows_to_labels
from sparseseg.segment.blocks import Block
from sparseseg.train.checkpoint import load_checkpoint, model_from_checkpoint
from sparseseg.train.normalize import Normalization


class ObjectTooLargeError(ValueError):
    """An owned object reaches the edge of its block's label context: it may be cut."""


@lru_cache(maxsize=4)
def cached_model(checkpoint: str, mtime_ns: int, device: str):
    """The network of a checkpoint, loaded once per process and device."""
    model = model_from_checkpoint(load_checkpoint(checkpoint)).to(device).eval()
    return model.to(memory_format=torch.channels_last)


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs for a block (small and picklable: no pixel data)."""

    slide: str
    checkpoint: str
    checkpoint_mtime_ns: int
    device: str
    normalization: Normalization
    params: InstanceParams
    image_shape: tuple[int, int]
    work: str
    threads: int = 0
    large_objects: str = "drop"                   # an owned object reaching the context edge: "drop" or "error"
    scale: float = 1.0                            # slide pixel size / model pixel size
    source_shape: tuple[int, int] | None = None   # level-0 shape when scale != 1 (image_shape is the model grid)


def predict_read_region(job: BlockJob, block: Block) -> np.ndarray:
    """Network output (3, h, w) on the block's label context, computed from its read region."""
    model = cached_model(job.checkpoint, job.checkpoint_mtime_ns, job.device)
    factor = model.downsampling
    image = zarr.open_group(job.slide, mode="r")["0"]
    rows, cols = block.read
    h, w = job.image_shape
    # at the image's bottom/right, read on to the zero-padded canvas, as whole-image inference does
    stop_y = -(-h // factor) * factor if rows.stop == h else rows.stop
    stop_x = -(-w // factor) * factor if cols.stop == w else cols.stop
    if job.scale == 1.0:
        normalised = job.normalization.apply(image[:, rows.start: min(stop_y, h), cols.start: min(stop_x, w)])
    else:  # resample the read region onto the model grid from global coordinates (block-exact)
        from sparseseg.segment.rescale import resample_window, source_window

        grid_window = (slice(rows.start, min(stop_y, h)), slice(cols.start, min(stop_x, w)))
        src = source_window(grid_window, job.scale, job.source_shape)
        pixels = image[(slice(None), *src)]
        normalised = job.normalization.apply(
            resample_window(pixels, (src[0].start, src[1].start), grid_window, job.scale, job.source_shape))
    canvas = read_canvas(normalised, slice(0, stop_y - rows.start), slice(0, stop_x - cols.start))
    with torch.no_grad():
        x = torch.from_numpy(canvas)[None].to(job.device).contiguous(memory_format=torch.channels_last)
        output = model(x)[0, :3].float()
    crop = block.context_in_read()
    return output[:, crop[0], crop[1]].cpu().numpy()


def owned_instances(output: np.ndarray, block: Block, job: BlockJob) -> tuple[np.ndarray, int]:
    """(uint32 labels on the label context holding only the owned objects (ids 1..n), number dropped).

    An owned object that reaches the context edge may be cut: it is dropped (counted) or, with
    ``job.large_objects == "error"``, raises ObjectTooLargeError.
    """
    labels = flows_to_labels(output[0], output[1:3], job.params, device=job.device)
    y0, x0 = block.context[0].start, block.context[1].start
    keep = np.zeros(int(labels.max()) + 1, np.uint32)
    anchors = []
    dropped = 0
    for k, box, touches in block.owned_objects(labels, job.image_shape):
        if touches and job.large_objects == "error":
            raise ObjectTooLargeError(
                f"an object at (y={box[0].start + y0}, x={box[1].start + x0}) spans "
                f"{box[0].stop - box[0].start}x{box[1].stop - box[1].start} px and reaches the edge of block "
                f"{block.name}'s context: increase --margin above the largest object size")
        if touches:
            dropped += 1
            continue
        anchors.append((box[0].start, box[1].start, k))
    for new_id, (_, _, k) in enumerate(sorted(anchors), start=1):  # ids in anchor order: deterministic
        keep[k] = new_id
    return keep[labels], dropped


def run_block(job: BlockJob, block: Block, skip: bool, predict=predict_read_region) -> tuple[int, int]:
    """Process one block (or record an empty one for a block without tissue).

    Returns (objects kept, objects dropped for reaching the context edge).

    ``predict(job, block)`` gives the (3, h, w) distance + flow on the block's label context.
    """
    if job.threads:
        torch.set_num_threads(job.threads)
    target = Path(job.work) / "blocks" / f"{block.name}.npz"
    if target.exists():  # done before (resume, or a retried task after a lost worker)
        with np.load(target) as done:
            return int(done["count"]), int(done["dropped"])
    labels, dropped = (np.zeros((0, 0), np.uint32), 0) if skip else owned_instances(predict(job, block), block, job)
    count = int(labels.max()) if labels.size else 0
    tmp = target.with_name(f".{block.name}.{os.getpid()}.partial.npz")
    np.savez_compressed(tmp, labels=labels, count=np.int64(count), dropped=np.int64(dropped))
    os.replace(tmp, target)
    return count, dropped
