"""`sparseseg segment`: plan -> run the blocks (each growing windows for what it could not compute exactly)
-> give found objects to their owners -> write the labels.

Guarantee: the labels equal those of segmenting the whole image at once (up to the order of ids)
for every object up to ``--max-object-um``: each block keeps the objects it owns that it computed
whole; an object reaching a block's context edge is segmented again on a window grown around it
(``stitch.resolve_candidate``). The label group appears only when complete; one writer at a time.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import zarr
from tqdm.auto import tqdm

from sparseseg.cluster import dask_client, workers_spec
from sparseseg.errors import InputError
from sparseseg.files.atomic import remove_leftovers
from sparseseg.infer.tiles import TileGrid
from sparseseg.io.labels import remove_label_pyramid, write_label_pyramid
from sparseseg.files.lock import writer_lock
from sparseseg.segment.engine import run_block_group
from sparseseg.segment.options import SegmentOptions
from sparseseg.segment.plan import BlockJob, SegmentPlan, plan_segment
from sparseseg.segment.records import BlockRecord, GlobalObjects
from sparseseg.segment.stitch import objects_to_add
from sparseseg.segment.write import (LabelComposer, object_class_probabilities, write_class_pyramid,
                                     write_large_objects, write_object_classes, write_uncertainty)

log = logging.getLogger(__name__)

#: Blocks per Dask task: enough for the read-ahead pipeline to pay, few enough for load balance and retries.
MAX_GROUP = 16


@dataclass(frozen=True)
class SegmentResult:
    labels: Path
    n_objects: int
    n_blocks: int
    skipped_blocks: int
    amplification: float        # network input pixels (tiles run by the blocks x tile area) per model-grid pixel
    large_objects: int = 0      # objects computed on grown windows (larger than the margin)
    too_large: int = 0          # objects beyond --max-object-um, not written
    dropped_objects: int = 0    # objects reaching their context edge under --large-objects drop
    large_pixels: int = 0       # model-grid pixels labelled again on grown windows (their extra work)
    large_tiles: int = 0        # network tiles the grown windows ran
    large_windows: int = 0      # grown windows computed
    trimmed_objects: int = 0    # written objects whose cluster lost smaller pieces (each object is one piece)
    trimmed_pixels: int = 0     # model-grid pixels of those pieces, now background
    timings: dict = field(default_factory=dict)


def block_groups(blocks: list, workers: int) -> list[list]:
    """Consecutive blocks in groups that shrink towards the end (guided self-scheduling): each takes about
    1 / (4 workers) of the blocks still left (1 .. MAX_GROUP), so early groups are long enough for the
    read-ahead pipeline and the tile cache, and the last ones are single blocks: no worker idles long
    while another finishes a long last group."""
    groups, start, share = [], 0, 4 * max(1, workers)
    while start < len(blocks):
        size = max(1, min(MAX_GROUP, math.ceil((len(blocks) - start) / share)))
        groups.append(blocks[start:start + size])
        start += size
    return groups


def _prepare_work(plan: SegmentPlan, resume: bool) -> None:
    """A work folder for this run: kept when resuming the same settings, else started afresh."""
    work, stamp = plan.work, plan.work / "fingerprint.json"
    if work.exists():
        same = stamp.exists() and json.loads(stamp.read_text()).get("id") == plan.fingerprint
        if not (resume and same):
            log.warning("removing the records of an earlier interrupted run in %s%s", work,
                        "" if resume else " (--resume continues one)")
            shutil.rmtree(work)
    (work / "blocks").mkdir(parents=True, exist_ok=True)
    (work / "large").mkdir(exist_ok=True)
    stamp.write_text(json.dumps({"id": plan.fingerprint}))


def _gather(client, futures: dict, bar, check=None) -> dict:
    """Results of ``futures`` (future -> key); the first failure cancels the rest and is raised, and so does the
    first InputError that ``check`` raises on a result."""
    from distributed import as_completed

    results = {}
    for future in as_completed(futures, loop=client.loop):
        key = futures[future]
        if future.status != "finished":
            error = future.exception()
            for other in futures:
                other.cancel()
            if isinstance(error, InputError):
                raise error
            raise InputError(None, f"{key} failed on a worker: {type(error).__name__}: {error}") from None
        results[key] = future.result()
        if check is not None:
            try:
                check(results[key])
            except InputError:
                for other in futures:
                    other.cancel()
                raise
        bar.update(getattr(results[key], "__len__", lambda: 1)())
    return results


def run_blocks(client, plan: SegmentPlan, workers: int, progress: bool) -> dict[str, BlockRecord]:
    """Pass 1: every block's record (computed, or read back when a resumed run had it)."""
    blocks = list(plan.grid.blocks())
    groups = block_groups(blocks, workers)
    with tqdm(total=len(blocks), desc="blocks", disable=not progress, dynamic_ncols=True) as bar:
        futures = {client.submit(run_block_group, plan.job, group, plan.skips, pure=False,
                                 key=f"blocks-{group[0].name}-{plan.fingerprint}"): i
                   for i, group in enumerate(groups)}
        results = _gather(client, futures, bar, _refuse_too_large(plan) if plan.job.large_objects == "error" else None)
    return {block.name: record for i, group in enumerate(groups) for block, record in zip(group, results[i])}


def _refuse_too_large(plan: SegmentPlan):
    """``--large-objects error``: stop at the first object beyond the cap, not after every block."""
    def check(records: list[BlockRecord]) -> None:
        for record in records:
            for y0, x0, y1, x1 in record.too_large:
                raise InputError(plan.slide, f"an object at model-grid (y={y0}, x={x0}) spans {y1 - y0}x{x1 - x0} px, "
                                             f"beyond --max-object-um {plan.max_object_um:g}: raise it, or use --large-objects "
                                             "grow to leave such objects out")
    return check


def labels_composer(job: BlockJob, records: dict[str, BlockRecord], owned: dict
                    ) -> tuple[LabelComposer, int, int, np.ndarray]:
    """(composer of the final labels, number of objects, number of large objects, class sums per id).

    Ids: block by block in block order (so they do not depend on the order blocks finished in),
    each block's kept objects then the large objects it owns. Class sums: (ids + 1, K) int64, row 0 unused.
    """
    offsets, total, items, ids, sums = {}, 0, [], [], [np.zeros((1, len(job.class_names)), np.int64)]
    for block in job.grid.blocks():
        offsets[block.name] = total
        record = records[block.name]
        kept, mine = record.count, owned.get(block.index, [])
        sums.append(record.kept_classes.reshape(kept, len(job.class_names)))
        for j, (_, rows, cols, trimmed, object_sums) in enumerate(mine):
            items.append((rows, cols, trimmed))
            ids.append(total + kept + j + 1)
            sums.append(np.asarray(object_sums, np.int64).reshape(1, len(job.class_names)))
        total += kept + len(mine)
    if total >= 2**32 - 1:
        raise InputError(job.slide, f"{total} objects do not fit uint32 labels")
    large_path = None
    if items:
        large_path = Path(job.work) / "large.npz"
        write_large_objects(large_path, GlobalObjects.build(items), np.array(ids))
    return LabelComposer(job, offsets, str(large_path) if large_path else None), total, len(items), \
        np.concatenate(sums)


def segment_slide(slide: str | Path, model: str | Path | None = None, options: SegmentOptions = SegmentOptions()
                  ) -> SegmentResult:
    """Segment every cell of ``slide`` into ``labels/<options.name>`` with ``model`` (a checkpoint, or a bundled
    model's name; default the bundled ``nuclei_he``); see the module docstring."""
    slide = Path(slide)
    plan = plan_segment(slide, model, options)
    with writer_lock(slide, "segment"):
        remove_leftovers(plan.final)
        _prepare_work(plan, options.resume)
        try:
            result = _run(plan, options)
        except KeyboardInterrupt:
            log.warning("interrupted: finished blocks are kept in %s; --resume continues", plan.work)
            raise
        except BaseException:
            shutil.rmtree(plan.work, ignore_errors=True)
            raise
        shutil.rmtree(plan.work, ignore_errors=True)
    return result


def _run(plan: SegmentPlan, options: SegmentOptions) -> SegmentResult:
    timings, started = {}, time.perf_counter()

    def lap(name: str) -> None:
        timings[name] = round(time.perf_counter() - started - sum(timings.values()), 3)

    with dask_client(workers_spec(options.workers, options.scheduler)) as client:
        workers = max(1, len(client.scheduler_info()["workers"]))
        records = run_blocks(client, plan, workers, options.progress)
        lap("blocks")
        owned, too_large = objects_to_add(plan.job, records)
        lap("ownership")
        composer, total, n_large, sums = labels_composer(plan.job, records, owned)
        names = plan.job.class_names
        probabilities = object_class_probabilities(sums)

        def extra(group) -> None:  # written into the label group before it appears
            write_uncertainty(group, plan.job)
            if names:
                write_object_classes(group, names, probabilities)

        write_label_pyramid(plan.slide, options.name, composer, np.uint32, options.overwrite,
                            f"flow-derived instances at {plan.job.scale:.4g}x, stitched by block ownership",
                            properties=[{"label-value": 0, "class": "background"}], scheduler=client, extra=extra)
        if names:
            write_class_pyramid(plan.slide, options.name, composer, names, probabilities, client)
        elif (plan.slide / "labels" / f"{options.name}_classes").exists():  # the replaced run's: now stale
            remove_label_pyramid(plan.slide, f"{options.name}_classes")
        lap("write")
    dropped = sum(r.dropped for r in records.values())
    large_trimmed = [entry[3] for entries in owned.values() for entry in entries]
    trimmed_objects = sum(r.trimmed_objects for r in records.values()) + sum(t > 0 for t in large_trimmed)
    trimmed_pixels = sum(r.trimmed_pixels for r in records.values()) + sum(large_trimmed)
    large_windows, large_pixels, large_tiles = (int(v) for v in sum((r.large_work for r in records.values()),
                                                                    np.zeros(3, np.int64)))
    tile_area = math.prod(axis.tile for axis in TileGrid(plan.grid.shape, plan.job.tile, plan.halo,
                                                         plan.grid.factor).axes)
    amplification = sum(r.tiles for r in records.values()) * tile_area / math.prod(plan.grid.shape)
    if too_large or dropped:
        log.warning("%d objects were left out (%s)", too_large + dropped,
                    f"larger than --max-object-um {options.max_object_um}" if too_large
                    else f"reaching their block's context edge, --large-objects drop, --margin {plan.grid.margin}")
    group = zarr.open_group(plan.final, mode="r+")
    group.attrs["sparseseg"] = {"objects": int(total), "large_objects": n_large, "too_large": too_large,
                                "classes": list(plan.job.class_names),
                                "dropped_at_block_edges": int(dropped),
                                "trimmed_pieces": {"objects": int(trimmed_objects), "pixels": int(trimmed_pixels)},
                                "scale": plan.job.scale, "model": str(model_path(plan)),
                                "block": plan.grid.block, "margin": plan.grid.margin, "halo": plan.halo,
                                "precision": plan.job.precision, "tta": plan.job.tta,
                                "run_id": uuid.uuid4().hex,  # tables measured on these labels carry it
                                "params": {k: getattr(plan.job.params, k) for k in plan.job.params.__dataclass_fields__},
                                "timings_s": timings}
    return SegmentResult(labels=plan.final, n_objects=total, n_blocks=len(records), skipped_blocks=len(plan.skips),
                         amplification=amplification, large_objects=n_large,
                         too_large=too_large, dropped_objects=dropped, large_pixels=large_pixels,
                         large_tiles=large_tiles, large_windows=large_windows,
                         trimmed_objects=int(trimmed_objects), trimmed_pixels=int(trimmed_pixels), timings=timings)


def model_path(plan: SegmentPlan) -> str:
    return plan.job.checkpoint
