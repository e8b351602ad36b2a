"""Stitching by ownership: which objects a block keeps, hands on or reports, and the grown windows.

Every object belongs to the block whose core holds its anchor (the top-left corner of its box).
A block keeps only clusters it computed *exactly* (``window_clusters``: no trajectory stopped at an
open edge, tails out of reach of any trajectory from beyond it) that it owns. An exact cluster it
does not own is handed on by the block whose core holds the cluster's first pixel; a cluster it could
not compute exactly is reported with its seed pixels in the core, and the block segments
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
from sparseseg.instances.doubt import block_cell, doubt_sums
from sparseseg.instances.dynamics import (cluster_flow_errors, finalize_clusters, max_travel, trimmed_pixels,
                                         window_clusters)
from sparseseg.segment.plan import BlockJob
from sparseseg.segment.records import (BlockRecord, CandidateOutcome, GlobalObjects, block_record_path, class_sums,
                                       read_kept_keys, read_outcome, write_outcome)
from sparseseg.tiling.blocks import Block, Window, aligned_window, open_edges


def block_record(job: BlockJob, block: Block, output: np.ndarray, device: str = "cpu") -> BlockRecord:
    """Instances of one block's context, sorted into kept / handed on / candidates (see ``BlockRecord``)."""
    grid = job.grid
    found = window_clusters(output[0], output[1:3], job.params, device, block.open_edges(grid.shape))
    errors = cluster_flow_errors(found.clusters, output[1:3], job.params)
    final = finalize_clusters(found.clusters, output[1:3], job.params, errors)
    lost = trimmed_pixels(found.clusters, final)
    cy0, cx0 = block.context[0].start, block.context[1].start
    (ry0, ry1), (rx0, rx1) = ((block.core[0].start - cy0, block.core[0].stop - cy0),
                              (block.core[1].start - cx0, block.core[1].stop - cx0))
    objects = ndi.value_indices(final, ignore_value=0)
    kept, handed, candidates, dropped = [], [], [], 0
    for k, (rows, cols) in ndi.value_indices(found.clusters, ignore_value=0).items():
        obj = objects.get(k)
        if obj is None and found.exact[k]:  # exact and no object (too small, flow error): nothing to record
            continue
        in_core = (rows >= ry0) & (rows < ry1) & (cols >= rx0) & (cols < rx1)
        owned = obj is not None and grid.owner(int(obj[0].min()) + cy0, int(obj[1].min()) + cx0) == block.index
        if not found.exact[k]:  # may differ from the whole image's: grown windows decide
            if in_core.any():
                if job.large_objects == "drop":
                    dropped += owned
                else:
                    candidates.append((rows[in_core] + cy0, cols[in_core] + cx0, 0))
        elif owned:
            kept.append((int(obj[0].min()), int(obj[1].min()), int(obj[0][0]), int(obj[1][0]), k))
        elif obj is not None and in_core[0]:  # this block holds the cluster's first pixel: it hands it on
            handed.append((obj[0], obj[1], int(lost[k])))
    kept.sort()  # ids in anchor order, then first pixel
    lut = np.zeros(int(found.clusters.max()) + 1, np.uint32)
    lut[[k for *_, k in kept]] = np.arange(1, len(kept) + 1, dtype=np.uint32)
    probabilities = class_probabilities(job, output)
    kept_objects = GlobalObjects.build([(objects[k][0] + cy0, objects[k][1] + cx0, int(lost[k])) for *_, k in kept],
                                       [class_sums(probabilities, *objects[k]) for *_, k in kept])
    kept_lost = kept_objects.trimmed
    handed_objects = GlobalObjects.build([(rows + cy0, cols + cx0, t) for rows, cols, t in handed],
                                         [class_sums(probabilities, rows, cols) for rows, cols, _ in handed])
    return BlockRecord(count=len(kept), labels=lut[final] if kept else np.zeros((0, 0), np.uint32),
                       handed_on=handed_objects, candidates=GlobalObjects.build(candidates),
                       kept_keys=kept_objects.keys(grid.shape[1]), kept_classes=kept_objects.class_sums,
                       dropped=int(dropped),
                       trimmed_objects=int((kept_lost > 0).sum()), trimmed_pixels=int(kept_lost.sum()),
                       doubt=core_doubt(job, output, final, errors, objects, (slice(ry0, ry1), slice(rx0, rx1))))


def core_doubt(job: BlockJob, output: np.ndarray, final: np.ndarray, errors: dict[int, float], objects: dict,
               core: Window) -> np.ndarray:
    """The doubt sums of the block's core per cell (``instances.doubt``), from the objects of its own context:
    saved beside the labels, so `suggest` can rank regions without running the network again."""
    (y0, y1), (x0, x1) = (core[0].start, core[0].stop), (core[1].start, core[1].stop)
    firsts = np.array([(rows[0], cols[0]) for rows, cols in objects.values()], np.int64).reshape(-1, 2)
    firsts = firsts[(firsts[:, 0] >= y0) & (firsts[:, 0] < y1) & (firsts[:, 1] >= x0) & (firsts[:, 1] < x1)]
    spread = output[3 + len(job.class_names)][core] if job.tta else None
    return doubt_sums(output[0][core], final[core], errors, class_probabilities(job, output)[(slice(None), *core)],
                      job.params.distance_threshold, block_cell(job.grid.block),
                      (firsts[:, 0] - y0, firsts[:, 1] - x0), spread)


def class_probabilities(job: BlockJob, output: np.ndarray) -> np.ndarray:
    """The class probability channels of a window's fields (K, h, w); K = 0 without a class head."""
    return output[3:3 + len(job.class_names)]



def _box(rows: np.ndarray, cols: np.ndarray, pad: int = 0) -> Window:
    return (slice(int(rows.min()) - pad, int(rows.max()) + 1 + pad), slice(int(cols.min()) - pad, int(cols.max()) + 1 + pad))


def _union(a: Window, b: Window) -> Window:
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b))  # type: ignore[return-value]


class SettledSeeds:
    """Seeds of one block's candidates already resolved to an exact cluster: a window computed for one candidate
    settles every other seed it holds in an exact cluster, so neighbouring candidates cost no window of their own."""

    def __init__(self, candidates: GlobalObjects, width: int):
        self.width = width
        self.seeds = np.unique(candidates.rows * width + candidates.cols)
        self.object_of: dict[int, int] = {}   # flat seed -> index in ``objects`` (-1: its cluster is no object)
        self.objects: list[tuple[np.ndarray, np.ndarray, int]] = []
        self.sums: list[np.ndarray] = []   # class sums of each of ``objects``

    def inside(self, window: Window) -> np.ndarray:
        """Flat indices of the unsettled seeds inside ``window``."""
        rows, cols = np.divmod(self.seeds, self.width)
        hit = ((rows >= window[0].start) & (rows < window[0].stop) & (cols >= window[1].start) & (cols < window[1].stop))
        return np.array([f for f in self.seeds[hit] if int(f) not in self.object_of], np.int64)


def resolve_candidate(job: BlockJob, seeds: tuple[np.ndarray, np.ndarray], fields: FieldSource,
                      settled: SettledSeeds | None = None, free: Window | None = None) -> CandidateOutcome:
    """The exact objects holding ``seeds`` (global model-grid rows, cols): windows grown around the clusters
    that hold them until each is exact there, or until it exceeds ``job.max_object_px`` (left out).

    ``free``: where fields cost nothing more (the block's tiles); the first window stays inside it, and only
    a cluster not exact there grows beyond. Any window gives the same exact objects, so this changes the
    cost, never the labels."""
    grid, width = job.grid, job.grid.shape[1]
    settled = settled or SettledSeeds(GlobalObjects.build([(*seeds, 0)]), width)
    reach = math.ceil(max_travel(job.params.n_steps)) + 3
    step = max(grid.margin, grid.factor)
    mine = np.unique(np.asarray(seeds[0], np.int64) * width + np.asarray(seeds[1], np.int64))
    pending = np.array([f for f in mine if int(f) not in settled.object_of], np.int64)
    too_large, windows, pixels, tiles = [], 0, 0, 0
    clipped = False
    if pending.size:
        window = aligned_window(_box(*np.divmod(pending, width), grid.margin + reach), grid.shape, grid.factor)
        full = window
        if free is not None:  # first inside the block's tiles; then, if needed, the full first window
            window = tuple(slice(max(a.start, b.start), min(a.stop, b.stop)) for a, b in zip(window, free))
            clipped = window != full
    while pending.size:
        prepared = fields.load(window)
        output = fields.compute([prepared])[0]
        windows, pixels, tiles = windows + 1, pixels + output.shape[1] * output.shape[2], tiles + prepared.tiles_run
        edges = open_edges(window, grid.shape)
        clusters = window_clusters(output[0], output[1:3], job.params, fields.device, edges)
        final = finalize_clusters(clusters.clusters, output[1:3], job.params)
        lost = trimmed_pixels(clusters.clusters, final)
        y0, x0 = window[0].start, window[1].start
        # open sides move out by half the window at least: a few windows reach any size
        grown = tuple(slice(sl.start - grow * lo, sl.stop + grow * hi) for sl, lo, hi, grow in
                      zip(window, edges[:2], edges[2:], (max(step, (sl.stop - sl.start) // 2) for sl in window)))
        if clipped:
            grown, clipped = full, False
        examined = np.union1d(pending, settled.inside(window))
        rows, cols = np.divmod(examined, width)
        ks = clusters.clusters[rows - y0, cols - x0]
        still = np.zeros(examined.size, bool)
        for k in np.unique(ks):
            here = ks == k
            if k == 0:  # not foreground in this window: cannot happen with the same fields; no object
                settled.object_of.update(dict.fromkeys(examined[here].tolist(), -1))
                continue
            r, c = np.nonzero(clusters.clusters == k)
            box = _box(r + y0, c + x0)
            if max(box[0].stop - box[0].start, box[1].stop - box[1].start) > job.max_object_px:
                if np.isin(examined[here], pending).any():
                    too_large.append([box[0].start, box[1].start, box[0].stop, box[1].stop])
                    settled.object_of.update(dict.fromkeys(examined[here & np.isin(examined, pending)].tolist(), -1))
                continue
            if clusters.exact[k]:
                fr, fc = np.nonzero(final == k)
                index = -1
                if fr.size:
                    index = len(settled.objects)
                    settled.objects.append((fr + y0, fc + x0, int(lost[k])))
                    settled.sums.append(class_sums(class_probabilities(job, output), fr, fc))
                settled.object_of.update(dict.fromkeys(examined[here].tolist(), index))
                continue
            if np.isin(examined[here], pending).any():
                still |= here
                grown = _union(grown, _box(r + y0, c + x0, grid.margin + reach))
        pending = examined[still & np.isin(examined, pending)]
        window = aligned_window(grown, grid.shape, grid.factor)
        if pending.size and max(sl.stop - sl.start for sl in window) > 2 * (job.max_object_px + reach + grid.margin + step):
            too_large.append([window[0].start, window[1].start, window[0].stop, window[1].stop])
            settled.object_of.update(dict.fromkeys(pending.tolist(), -1))
            break
    indices = sorted({settled.object_of.get(int(f), -1) for f in mine} - {-1})
    return CandidateOutcome(GlobalObjects.build([settled.objects[i] for i in indices], [settled.sums[i] for i in indices]),
                            np.array(too_large, np.int64).reshape(-1, 4), windows, pixels, tiles)


def resolve_candidates(job: BlockJob, candidates: GlobalObjects, fields: FieldSource, block: Block | None = None
                       ) -> list[CandidateOutcome]:
    """A block's candidates, each recorded as it is resolved, so a run killed meanwhile resumes from there; a
    window computed for one settles the seeds of the others it holds in exact clusters. With ``block``, first
    windows stay inside what its tiles give."""
    out = []
    settled = SettledSeeds(candidates, job.grid.shape[1])
    free = fields.free_extent(block.context) if block is not None else None
    for k in range(len(candidates)):
        rows, cols = candidates.pixels(k)
        target = Path(job.work) / "large" / f"{rows[0]}_{cols[0]}_{rows.size}.npz"
        outcome = read_outcome(target)
        if outcome is None:
            outcome = resolve_candidate(job, (rows, cols), fields, settled, free)
            write_outcome(target, outcome)
        out.append(outcome)
    return out


def objects_to_add(job: BlockJob, records: dict[str, BlockRecord]) -> tuple[dict[tuple[int, int], list], int]:
    """The whole objects each block owns but did not keep ({block index: [(key, rows, cols, trimmed pixels,
    class sums)]}),
    and the number of clusters beyond the cap (overlapping boxes count once). Objects found several times
    count once; an object goes to its owner unless the owner kept exactly that object (its record holds
    the same key)."""
    grid, width = job.grid, job.grid.shape[1]
    found: dict[tuple, tuple[GlobalObjects, int]] = {}
    for source in [r.handed_on for r in records.values()] + [r.grown for r in records.values()]:
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
                owned.setdefault(owner, []).append((key, *source.pixels(k), int(source.trimmed[k]),
                                                    source.class_sums[k]))
    return owned, overlapping_groups(np.concatenate([r.too_large for r in records.values()] +
                                                    [np.zeros((0, 4), np.int64)]))


def overlapping_groups(boxes: np.ndarray) -> int:
    """How many groups of overlapping boxes (y0, x0, y1, x1): one cluster seen from several windows counts once."""
    n = len(boxes)
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i in range(n):
        for j in range(i + 1, n):
            if (boxes[i, 0] < boxes[j, 2] and boxes[j, 0] < boxes[i, 2] and boxes[i, 1] < boxes[j, 3]
                    and boxes[j, 1] < boxes[i, 3]):
                parent[root(i)] = root(j)
    return len({root(i) for i in range(n)})
