"""Stitching by ownership: which objects a block keeps, hands on or reports, and the large-object pass.

Every object belongs to the block whose core holds its anchor (the top-left corner of its box).
A block keeps only clusters it computed *exactly* (``window_clusters``: no trajectory stopped at an
open edge, tails out of reach of any trajectory from beyond it) that it owns. An exact cluster it
does not own is handed on by the block whose core holds the cluster's first pixel; a cluster it could
not compute exactly is reported with its seed pixels in the core, and the large-object pass segments
it again on windows grown around it until every seed lies in an exact cluster. Finally each object
found that way goes to its owner unless the owner's record shows it kept exactly that object (same
key): ownership is decided by what the owner did, never by what it would have done.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from sparseseg.infer.windows import FieldSource
from sparseseg.instances.dynamics import finalize_clusters, max_travel, trimmed_pixels, window_clusters
from sparseseg.segment.plan import BlockJob
from sparseseg.segment.records import (BlockRecord, CandidateOutcome, GlobalObjects, block_record_path,
                                       read_kept_keys, read_outcome, write_outcome)
from sparseseg.segment.worker import slide_fields
from sparseseg.tiling.blocks import Block, Window, aligned_window, open_edges


def block_record(job: BlockJob, block: Block, output: np.ndarray, device: str = "cpu") -> BlockRecord:
    """Instances of one block's context, sorted into kept / handed on / candidates (see ``BlockRecord``)."""
    grid = job.grid
    found = window_clusters(output[0], output[1:3], job.params, device, block.open_edges(grid.shape))
    final = finalize_clusters(found.clusters, output[1:3], job.params)
    lost = trimmed_pixels(found.clusters, final)
    cy0, cx0 = block.context[0].start, block.context[1].start
    (ry0, ry1), (rx0, rx1) = ((block.core[0].start - cy0, block.core[0].stop - cy0),
                              (block.core[1].start - cx0, block.core[1].stop - cx0))
    objects = ndi.value_indices(final, ignore_value=0)
    kept, handed, candidates, dropped = [], [], [], 0
    for k, (rows, cols) in ndi.value_indices(found.clusters, ignore_value=0).items():
        in_core = (rows >= ry0) & (rows < ry1) & (cols >= rx0) & (cols < rx1)
        obj = objects.get(k)
        owned = obj is not None and grid.owner(int(obj[0].min()) + cy0, int(obj[1].min()) + cx0) == block.index
        if not found.exact[k]:  # may differ from the whole image's: the large-object pass decides
            if in_core.any():
                if job.large_objects == "drop":
                    dropped += owned
                else:
                    candidates.append((rows[in_core] + cy0, cols[in_core] + cx0, 0))
        elif owned:
            kept.append((int(obj[0].min()), int(obj[1].min()), int(obj[0][0]), int(obj[1][0]), k))
        elif obj is not None and in_core[0]:  # this block holds the cluster's first pixel: it hands it on
            handed.append((obj[0] + cy0, obj[1] + cx0, int(lost[k])))
    kept.sort()  # ids in anchor order, then first pixel
    lut = np.zeros(int(found.clusters.max()) + 1, np.uint32)
    lut[[k for *_, k in kept]] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    kept_objects = GlobalObjects.build([(objects[k][0] + cy0, objects[k][1] + cx0, int(lost[k])) for *_, k in kept])
    kept_lost = kept_objects.trimmed
    return BlockRecord(count=len(kept), labels=lut[final] if kept else np.zeros((0, 0), np.uint32),
                       handed_on=GlobalObjects.build(handed), candidates=GlobalObjects.build(candidates),
                       kept_keys=kept_objects.keys(grid.shape[1]), dropped=int(dropped),
                       trimmed_objects=int((kept_lost > 0).sum()), trimmed_pixels=int(kept_lost.sum()))


def _box(rows: np.ndarray, cols: np.ndarray, pad: int = 0) -> Window:
    return (slice(int(rows.min()) - pad, int(rows.max()) + 1 + pad), slice(int(cols.min()) - pad, int(cols.max()) + 1 + pad))


def _union(a: Window, b: Window) -> Window:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


def resolve_candidate(job: BlockJob, seeds: tuple[np.ndarray, np.ndarray], fields: FieldSource) -> CandidateOutcome:
    """The exact objects holding ``seeds`` (global model-grid rows, cols): windows grown around the clusters
    that hold them until each is exact there, or until it exceeds ``job.max_object_px`` (left out)."""
    grid = job.grid
    reach = math.ceil(max_travel(job.params.n_steps)) + 3
    step = max(grid.margin, grid.factor)
    rows, cols = (np.asarray(v, np.int64) for v in seeds)
    window = aligned_window(_box(rows, cols, grid.margin), grid.shape, grid.factor)
    found, too_large, windows, pixels, tiles = [], [], 0, 0, fields.tiles_computed
    while rows.size:
        output = fields.compute([fields.load(window)])[0]
        windows, pixels = windows + 1, pixels + output.shape[1] * output.shape[2]
        edges = open_edges(window, grid.shape)
        clusters = window_clusters(output[0], output[1:3], job.params, fields.device, edges)
        final = finalize_clusters(clusters.clusters, output[1:3], job.params)
        lost = trimmed_pixels(clusters.clusters, final)
        y0, x0 = window[0].start, window[1].start
        ks = clusters.clusters[rows - y0, cols - x0]
        pending = np.zeros(rows.size, bool)
        grown = tuple(slice(sl.start - step * lo, sl.stop + step * hi)
                      for sl, lo, hi in zip(window, edges[:2], edges[2:]))
        for k in np.unique(ks[ks > 0]):
            r, c = np.nonzero(clusters.clusters == k)
            box = _box(r + y0, c + x0)
            if max(box[0].stop - box[0].start, box[1].stop - box[1].start) > job.max_object_px:
                too_large.append([box[0].start, box[1].start, box[0].stop, box[1].stop])
                continue
            if clusters.exact[k]:
                fr, fc = np.nonzero(final == k)
                if fr.size:
                    found.append((fr + y0, fc + x0, int(lost[k])))
                continue
            pending |= ks == k
            grown = _union(grown, _box(r + y0, c + x0, grid.margin + reach))
        rows, cols = rows[pending], cols[pending]
        window = aligned_window(grown, grid.shape, grid.factor)
        if rows.size and max(sl.stop - sl.start for sl in window) > job.max_object_px + 2 * (reach + grid.margin + step):
            too_large.append([window[0].start, window[1].start, window[0].stop, window[1].stop])
            break
    return CandidateOutcome(GlobalObjects.build(found), np.array(too_large, np.int64).reshape(-1, 4), windows, pixels,
                            fields.tiles_computed - tiles)


def resolve_candidates(job: BlockJob, candidates: GlobalObjects, fields: FieldSource | None = None
                       ) -> list[CandidateOutcome]:
    """Several candidates in one task (one predictor load), each recorded so a resumed run skips it."""
    out = []
    for k in range(len(candidates)):
        rows, cols = candidates.pixels(k)
        target = Path(job.work) / "large" / f"{rows[0]}_{cols[0]}_{rows.size}.npz"
        outcome = read_outcome(target)
        if outcome is None:
            fields = fields or slide_fields(job)
            outcome = resolve_candidate(job, (rows, cols), fields)
            write_outcome(target, outcome)
        out.append(outcome)
    return out


def objects_to_add(job: BlockJob, records: dict[str, BlockRecord], outcomes: list[CandidateOutcome]
                   ) -> tuple[dict[tuple[int, int], list], int]:
    """The whole objects each block owns but did not keep ({block index: [(key, rows, cols, trimmed pixels)]}),
    and the number of distinct clusters beyond the cap. Objects found several times count once; an object
    goes to its owner unless the owner kept exactly that object (its record holds the same key)."""
    grid, width = job.grid, job.grid.shape[1]
    found: dict[tuple, tuple[GlobalObjects, int]] = {}
    for source in [r.handed_on for r in records.values()] + [o.objects for o in outcomes]:
        for k, key in enumerate(source.keys(width)):
            found.setdefault(tuple(int(v) for v in key), (source, k))
    by_owner: dict[tuple[int, int], list[tuple]] = {}
    for key in sorted(found):
        by_owner.setdefault(grid.owner(key[0], key[1]), []).append(key)
    owned: dict[tuple[int, int], list] = {}
    for owner, keys in by_owner.items():
        kept = {tuple(int(v) for v in key) for key in read_kept_keys(block_record_path(job.work, grid.at(owner).name))}
        for key in keys:
            if key not in kept:
                source, k = found[key]
                owned.setdefault(owner, []).append((key, *source.pixels(k), int(source.trimmed[k])))
    too_large = {tuple(int(v) for v in box) for o in outcomes for box in o.too_large}
    return owned, len(too_large)
