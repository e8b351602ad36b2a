"""What the workers do: network fields on model-grid windows, blocks in an overlapped pipeline, large objects.

Blocks run in groups (one Dask task per group). Inside a group a reader thread reads and
normalises the next block while the network runs on the current one and a second thread derives
the instances of the previous one: the device never waits for zarr, and at most two blocks are
held ahead, so memory stays flat. Each finished block is recorded in the work folder (written
atomically): the record is also what ``--resume`` and a retried task skip.

Exactness: on a window whose read region adds the network halo and whose origin lies on the
pooling grid, the network output equals the whole image's; an object whose cluster does not
touch the window's inner edges is then exactly the whole image's object. A block keeps those it
owns; a cluster reaching its context edge is a *candidate*, segmented again on a window grown
around it (``resolve_candidate``) until it no longer touches the window edge.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
import zarr
from scipy import ndimage as ndi

from sparseseg.errors import InputError
from sparseseg.infer.predictor import Predictor, default_device
from sparseseg.infer.windows import NetworkFields, Prepared
from sparseseg.instances.dynamics import finalize_clusters, instance_clusters, trimmed_pixels
from sparseseg.segment.plan import BlockJob
from sparseseg.segment.rescale import resample_window, source_window
from sparseseg.tiling.blocks import Block, Window, near_inner_edges

@lru_cache(maxsize=4)
def cached_predictor(checkpoint: str, mtime_ns: int, device: str) -> Predictor:
    """The checkpoint's predictor, loaded once per worker process and device (never per block)."""
    return Predictor.from_checkpoint(checkpoint, device=device)


def worker_predictor(job: BlockJob) -> Predictor:
    """This worker's predictor: its own device (CUDA where it sees one) and thread setting, unless the job says."""
    if job.threads:
        torch.set_num_threads(job.threads)
    elif os.environ.get("OMP_NUM_THREADS", "").isdigit():  # a local worker started by sparseseg, or the nanny's 1
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return cached_predictor(job.checkpoint, job.checkpoint_mtime_ns, job.device or default_device())


def aligned_window(window: Window, shape: tuple[int, int], factor: int) -> Window:
    """``window`` widened to the pooling grid (starts and stops on multiples of ``factor``, or the image edge)."""
    out = []
    for sl, n in zip(window, shape):
        start = max(0, sl.start // factor * factor)
        stop = min(n, -(-sl.stop // factor) * factor)
        out.append(slice(start, stop))
    return tuple(out)  # type: ignore[return-value]


class SlideReader:
    """Normalised model-grid pixels (C, h, w) of any window of a slide (resampled from level 0 when the
    slide's pixel size differs from the model's)."""

    def __init__(self, job: BlockJob):
        self.job = job
        self.image = zarr.open_group(job.slide, mode="r")["0"]

    def __call__(self, window: Window) -> np.ndarray:
        job = self.job
        channels = slice(None) if job.channels is None else list(job.channels)
        try:
            if job.scale == 1.0:
                pixels = self.image.get_orthogonal_selection((channels, *window))
            else:  # resample from global coordinates: any window equals the same part of the whole grid
                src = source_window(window, job.scale, job.source_shape)
                pixels = resample_window(self.image.get_orthogonal_selection((channels, *src)),
                                         (src[0].start, src[1].start), window, job.scale, job.source_shape)
        except Exception as exc:  # a corrupt or missing chunk: say where
            raise InputError(f"{job.slide}/0", f"cannot read the pixels of model-grid rows {window[0].start}:"
                                                f"{window[0].stop}, columns {window[1].start}:{window[1].stop}: "
                                                f"{type(exc).__name__}: {exc}") from None
        return job.normalization.apply(pixels)


def slide_fields(job: BlockJob) -> NetworkFields:
    """The slide's fields through this worker's predictor."""
    return NetworkFields(worker_predictor(job), job.image_shape, SlideReader(job), job.batch)


class ArrayFields:
    """Fields given as a whole (3, H, W) array: the same engine without a network (tests, exact targets)."""

    device = "cpu"

    def __init__(self, fields: np.ndarray):
        self.fields = fields

    def load(self, context: Window) -> Prepared:
        return Prepared(context, self.fields[(slice(None), *context)], (slice(None), slice(None)))

    def compute(self, prepared: list[Prepared]) -> list[np.ndarray]:
        return [p.canvas for p in prepared]

    def batch_size(self, canvas: np.ndarray) -> int:
        return 1


# ---------------------------------------------------------------- one block: keep, report, or hand on


@dataclass
class ObjectPixelsGlobal:
    """Whole objects as global model-grid pixel lists: per object its anchor (top-left of its box), its
    cluster's box (y0, x0, y1, x1; what decides where it is exact), its pixels ``rows``/``cols``, and
    ``trimmed``: the pixels of its cluster cut away as smaller pieces."""

    anchors: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    cluster_boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.int64))
    starts: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    cols: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    trimmed: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))

    def __len__(self) -> int:
        return len(self.anchors)

    def pixels(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        return self.rows[self.starts[k]: self.starts[k + 1]], self.cols[self.starts[k]: self.starts[k + 1]]

    @classmethod
    def build(cls, items: list[tuple[tuple[int, int], np.ndarray, np.ndarray, np.ndarray, int]]) -> ObjectPixelsGlobal:
        """From (anchor, cluster box, rows, cols, trimmed pixels) per object."""
        if not items:
            return cls()
        sizes = [len(r) for _, _, r, _, _ in items]
        return cls(anchors=np.array([a for a, _, _, _, _ in items], np.int64).reshape(-1, 2),
                   cluster_boxes=np.array([b for _, b, _, _, _ in items], np.int64).reshape(-1, 4),
                   starts=np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64),
                   rows=np.concatenate([r for _, _, r, _, _ in items]).astype(np.int64),
                   cols=np.concatenate([c for _, _, _, c, _ in items]).astype(np.int64),
                   trimmed=np.array([t for *_, t in items], np.int64))

    def to_arrays(self, prefix: str) -> dict[str, np.ndarray]:
        return {f"{prefix}_{k}": getattr(self, k) for k in OBJECT_ARRAYS}

    @classmethod
    def from_arrays(cls, data, prefix: str) -> ObjectPixelsGlobal:
        return cls(**{k: np.asarray(data[f"{prefix}_{k}"]) for k in OBJECT_ARRAYS})


OBJECT_ARRAYS = ("anchors", "cluster_boxes", "starts", "rows", "cols", "trimmed")


@dataclass
class BlockRecord:
    """What a block found: its kept objects (``labels`` on its context, ids 1..count in anchor order),
    exact objects another block owns but cannot see whole (``elsewhere``), and ``candidates``: a seed
    pixel (global y, x) and box of each cluster reaching the context edge, to grow."""

    count: int
    labels: np.ndarray
    elsewhere: ObjectPixelsGlobal
    candidates: np.ndarray   # (k, 6): seed y, seed x, box y0, x0, y1, x1 (global model grid)
    dropped: int = 0         # candidates dropped (policy "drop")
    trimmed_objects: int = 0  # kept objects that lost smaller pieces of their cluster
    trimmed_pixels: int = 0   # the pixels they lost


def owner_sees_whole(plan, cluster_box: np.ndarray, owner: tuple[int, int]) -> bool:
    """Whether the owner block computes this cluster exactly: inside its context, off its inner edges."""
    context = plan.at(owner).context
    y0, x0, y1, x1 = (int(v) for v in cluster_box)
    if y0 < context[0].start or x0 < context[1].start or y1 > context[0].stop or x1 > context[1].stop:
        return False
    local = np.array([[y0 - context[0].start, x0 - context[1].start, y1 - context[0].start, x1 - context[1].start]])
    return not bool(near_inner_edges(local, context, plan.shape)[0][0])


def _boxes(labels: np.ndarray) -> dict[int, tuple[slice, slice]]:
    return {k + 1: box for k, box in enumerate(ndi.find_objects(labels)) if box is not None}


def _core_pixel(clusters: np.ndarray, k: int, box: tuple[slice, slice], core: Window) -> tuple[int, int] | None:
    """The first pixel (raster order) of cluster ``k`` inside ``core`` (context coordinates), or None."""
    rows = slice(max(box[0].start, core[0].start), min(box[0].stop, core[0].stop))
    cols = slice(max(box[1].start, core[1].start), min(box[1].stop, core[1].stop))
    if rows.start >= rows.stop or cols.start >= cols.stop:
        return None
    hits = np.flatnonzero(clusters[rows, cols] == k)
    if not hits.size:
        return None
    y, x = divmod(int(hits[0]), cols.stop - cols.start)
    return y + rows.start, x + cols.start


def block_record(job: BlockJob, block: Block, output: np.ndarray, device: str = "cpu") -> BlockRecord:
    """Instances of one block's context, sorted into kept / elsewhere / candidates (see ``BlockRecord``)."""
    plan = job.plan
    clusters = instance_clusters(output[0], output[1:3], job.params, device)
    final = finalize_clusters(clusters, output[1:3], job.params)
    cy0, cx0 = block.context[0].start, block.context[1].start
    core = (slice(block.core[0].start - cy0, block.core[0].stop - cy0),
            slice(block.core[1].start - cx0, block.core[1].stop - cx0))
    cluster_boxes, final_boxes = _boxes(clusters), _boxes(final)
    lost = trimmed_pixels(clusters, final)
    kept, elsewhere, candidates, dropped = [], [], [], 0
    for k, box in cluster_boxes.items():
        local = np.array([[box[0].start, box[1].start, box[0].stop, box[1].stop]])
        global_box = local[0] + [cy0, cx0, cy0, cx0]
        fbox = final_boxes.get(k)
        anchor = None if fbox is None else (fbox[0].start + cy0, fbox[1].start + cx0)
        if near_inner_edges(local, block.context, plan.shape)[0][0]:  # may be cut: a candidate
            seed = _core_pixel(clusters, k, box, core)
            if seed is None:
                continue  # its pixels in cores are other blocks' to report
            if job.large_objects == "drop":
                dropped += anchor is not None and plan.owner(*anchor) == block.index
            else:
                candidates.append([seed[0] + cy0, seed[1] + cx0, *global_box])
            continue
        if anchor is None:
            continue  # rejected by the flow-error or size check, as in the whole image
        owner = plan.owner(*anchor)
        if owner == block.index:
            first = np.flatnonzero(final[fbox].ravel() == k)[0]
            kept.append((anchor, divmod(int(first), fbox[1].stop - fbox[1].start), k))
        elif not owner_sees_whole(plan, global_box, owner) and _core_pixel(clusters, k, box, core) is not None:
            rows, cols = np.nonzero(final[fbox] == k)
            elsewhere.append((anchor, global_box, rows + fbox[0].start + cy0, cols + fbox[1].start + cx0,
                              int(lost[k])))
    lut = np.zeros(int(clusters.max()) + 1, np.uint32)
    for new_id, (_, _, k) in enumerate(sorted(kept), start=1):  # ids in anchor order (then first pixel)
        lut[k] = new_id
    labels = lut[final] if kept else np.zeros((0, 0), np.uint32)
    kept_lost = lost[[k for *_, k in kept]]
    return BlockRecord(count=len(kept), labels=labels, elsewhere=ObjectPixelsGlobal.build(elsewhere),
                       candidates=np.array(candidates, np.int64).reshape(-1, 6), dropped=dropped,
                       trimmed_objects=int((kept_lost > 0).sum()), trimmed_pixels=int(kept_lost.sum()))


# ---------------------------------------------------------------- records on disk


def record_path(job: BlockJob, block: Block) -> Path:
    return Path(job.work) / "blocks" / f"{block.name}.npz"


def write_record(job: BlockJob, block: Block, record: BlockRecord) -> None:
    """Atomically: the record is also the sign that the block is done."""
    target = record_path(job, block)
    tmp = target.with_name(f".{block.name}.{os.getpid()}.partial.npz")
    np.savez_compressed(tmp, count=np.int64(record.count), labels=record.labels, candidates=record.candidates,
                        dropped=np.int64(record.dropped), trimmed=np.array([record.trimmed_objects, record.trimmed_pixels]),
                        **record.elsewhere.to_arrays("elsewhere"))
    os.replace(tmp, target)


def read_record(job: BlockJob, block: Block, with_labels: bool = False) -> BlockRecord | None:
    target = record_path(job, block)
    if not target.exists():
        return None
    with np.load(target) as data:
        return BlockRecord(count=int(data["count"]), labels=data["labels"] if with_labels else np.zeros((0, 0), np.uint32),
                           elsewhere=ObjectPixelsGlobal.from_arrays(data, "elsewhere"),
                           candidates=data["candidates"], dropped=int(data["dropped"]),
                           trimmed_objects=int(data["trimmed"][0]), trimmed_pixels=int(data["trimmed"][1]))


def summary(record: BlockRecord) -> BlockRecord:
    """The record without its label array: what travels back to the driver."""
    return BlockRecord(record.count, np.zeros((0, 0), np.uint32), record.elsewhere, record.candidates, record.dropped,
                       record.trimmed_objects, record.trimmed_pixels)


# ---------------------------------------------------------------- a group of blocks, overlapped


def run_block_group(job: BlockJob, blocks: list[Block], skips: frozenset, fields=None) -> list[BlockRecord]:
    """Process ``blocks`` (one Dask task): read ahead, forward, derive instances behind; returns their summaries.

    ``fields``: where network outputs come from (default: the slide through this worker's predictor).
    """
    done: dict[str, BlockRecord] = {}
    todo = []
    for block in blocks:
        record = read_record(job, block)
        if record is not None:  # done before (resume, or a retried task after a lost worker)
            done[block.name] = record
        elif block.index in skips:
            empty = BlockRecord(0, np.zeros((0, 0), np.uint32), ObjectPixelsGlobal(), np.zeros((0, 6), np.int64))
            write_record(job, block, empty)
            done[block.name] = empty
        else:
            todo.append(block)
    if todo:
        fields = fields or slide_fields(job)
        for block, record in _pipeline(job, todo, fields):
            write_record(job, block, record)
            done[block.name] = summary(record)
    return [done[b.name] for b in blocks]


def _pipeline(job: BlockJob, blocks: list[Block], fields):
    """(block, record) for each block, in order: reading runs one block ahead of the network, and the
    instances of a batch are derived while the network runs on the next one."""
    with ThreadPoolExecutor(1, thread_name_prefix="sparseseg-read") as reader, \
            ThreadPoolExecutor(1, thread_name_prefix="sparseseg-instances") as post:
        reads = deque()
        queue = iter(blocks)

        def read_ahead(count: int) -> None:
            while len(reads) < count:
                block = next(queue, None)
                if block is None:
                    return
                reads.append((block, reader.submit(fields.load, block.context)))

        finishing = None
        read_ahead(1)
        while reads:
            block, future = reads.popleft()
            first = future.result()
            batch = [(block, first)]
            limit = fields.batch_size(first.canvas)
            read_ahead(limit)
            while len(batch) < limit and reads:  # equal-sized blocks share one forward
                following, prepared = reads[0][0], reads[0][1].result()
                if prepared.canvas.shape != first.canvas.shape:
                    break
                reads.popleft()
                batch.append((following, prepared))
                read_ahead(limit)
            outputs = fields.compute([p for _, p in batch])
            if finishing is not None:
                yield from finishing.result()
            finishing = post.submit(_finish, job, [b for b, _ in batch], outputs, fields.device)
        if finishing is not None:
            yield from finishing.result()


def _finish(job: BlockJob, blocks: list[Block], outputs: list[np.ndarray], device: str) -> list:
    return [(block, block_record(job, block, output, device)) for block, output in zip(blocks, outputs)]


# ---------------------------------------------------------------- the large-object pass


@dataclass
class Resolution:
    """A candidate's outcome: the whole object (or none: rejected like in the whole image), or too large."""

    objects: ObjectPixelsGlobal
    too_large: bool = False
    box: tuple[int, int, int, int] | None = None   # the cluster's box when too large
    windows: int = 0                                # windows computed
    pixels: int = 0                                 # model-grid pixels labelled over all windows


def resolve_candidate(job: BlockJob, candidate: np.ndarray, fields=None) -> Resolution:
    """Segment the cluster holding the seed on windows grown around it until it no longer touches the
    window's inner edges (exact there), or until it exceeds ``job.max_object_px``."""
    fields = fields or slide_fields(job)
    plan = job.plan
    seed_y, seed_x = int(candidate[0]), int(candidate[1])
    box = [int(v) for v in candidate[2:6]]
    window: Window = (slice(box[0], box[2]), slice(box[1], box[3]))
    windows = pixels = 0
    while True:
        grown = (slice(min(window[0].start, box[0] - plan.margin), max(window[0].stop, box[2] + plan.margin)),
                 slice(min(window[1].start, box[1] - plan.margin), max(window[1].stop, box[3] + plan.margin)))
        window = aligned_window(grown, plan.shape, plan.factor)
        output = fields.compute([fields.load(window)])[0]
        windows += 1
        pixels += output.shape[1] * output.shape[2]
        clusters = instance_clusters(output[0], output[1:3], job.params, fields.device)
        y0, x0 = window[0].start, window[1].start
        k = int(clusters[seed_y - y0, seed_x - x0])
        if k == 0:  # the seed is foreground wherever the window is: cannot happen unless the fields differ
            return Resolution(ObjectPixelsGlobal(), windows=windows, pixels=pixels)
        rows, cols = np.nonzero(clusters == k)
        local = np.array([[rows.min(), cols.min(), rows.max() + 1, cols.max() + 1]])
        box = [int(local[0, 0] + y0), int(local[0, 1] + x0), int(local[0, 2] + y0), int(local[0, 3] + x0)]
        if max(box[2] - box[0], box[3] - box[1]) > job.max_object_px:
            return Resolution(ObjectPixelsGlobal(), too_large=True, box=tuple(box), windows=windows, pixels=pixels)
        if not near_inner_edges(local, window, plan.shape)[0][0]:
            break
    final = finalize_clusters(clusters, output[1:3], job.params)
    rows, cols = np.nonzero(final == k)
    if not rows.size:
        return Resolution(ObjectPixelsGlobal(), windows=windows, pixels=pixels)
    anchor = (int(rows.min()) + y0, int(cols.min()) + x0)
    trimmed = int(trimmed_pixels(clusters, final)[k])
    return Resolution(ObjectPixelsGlobal.build([(anchor, np.array(box), rows + y0, cols + x0, trimmed)]),
                      windows=windows, pixels=pixels)


def resolve_candidates(job: BlockJob, candidates: np.ndarray, fields=None) -> list[Resolution]:
    """Several candidates in one task (one predictor load), each recorded so a resumed run skips it."""
    out = []
    folder = Path(job.work) / "large"
    for candidate in candidates:
        target = folder / ("_".join(str(int(v)) for v in candidate[:2]) + ".npz")
        if target.exists():
            with np.load(target) as data:
                out.append(Resolution(ObjectPixelsGlobal.from_arrays(data, "object"), bool(data["too_large"]),
                                      tuple(int(v) for v in data["box"]) if data["too_large"] else None,
                                      int(data["windows"]), int(data["pixels"])))
            continue
        fields = fields or slide_fields(job)
        resolution = resolve_candidate(job, candidate, fields)
        tmp = target.with_name(f".{target.stem}.{os.getpid()}.partial.npz")
        np.savez_compressed(tmp, too_large=resolution.too_large, box=np.array(resolution.box or (0, 0, 0, 0)),
                            windows=resolution.windows, pixels=resolution.pixels,
                            **resolution.objects.to_arrays("object"))
        os.replace(tmp, target)
        out.append(resolution)
    return out
