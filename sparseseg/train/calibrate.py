"""Calibrate the instance parameters of a model on annotated images (as StarDist's ``optimize_thresholds``).

The network runs once per calibration window; then a coordinate search over the distance
threshold, the Euler steps, the lobe-merge ratio, the flow-error threshold and the minimum size
scores each setting against the annotation on *annotated pixels only* (``metrics.sparse``: unknown
pixels never count as background). The score is the mean of F1 at IoU 0.5 and 0.7 (detection and
shape). The best parameters are stored in the checkpoint, and ``segment`` uses them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from sparseseg.infer.predictor import Predictor
from sparseseg.instances.dynamics import (InstanceParams, finalize_clusters, flow_errors, merge_lobes,
                                          trajectory_clusters)
from sparseseg.metrics.sparse import Counts, sparse_counts
from sparseseg.files.lock import writer_lock
from sparseseg.model.checkpoint import check_checkpoint_out, load_checkpoint, update_checkpoint
from sparseseg.train.data import resample_window, scale_to_model

log = logging.getLogger(__name__)

THRESHOLDS = (0.5, 0.7)
DISTANCE_OFFSETS = (-1.0, -0.5, 0.0, 0.5, 1.0, 1.5)   # px, around the current threshold
STEP_FACTORS = (0.5, 1.0, 2.0, 3.2)  # objects of ~10 to ~80 px across
MERGE_RATIOS = (0.0, 0.3, 0.5, 0.7)  # 0: lobes never merged
FLOW_ERRORS = (0.2, 0.4, 0.6, 0.8, 1.2, math.inf)
MIN_SIZE_FACTORS = (0.0, 0.5, 1.0, 2.0, 4.0)


@dataclass(frozen=True)
class Sample:
    """One calibration window: the network output on it and its partial annotation."""

    fields: np.ndarray    # (3, H, W) distance + flow
    partial: np.ndarray   # (H, W) 0 unknown, 1 background, k >= 2 objects


@dataclass(frozen=True)
class Calibration:
    params: InstanceParams
    score: float              # mean F1 over THRESHOLDS with the calibrated parameters
    default_score: float      # ... with the parameters before calibration
    f1: float                 # F1 at IoU 0.5, calibrated
    default_f1: float
    objects: int              # annotated objects it was scored on
    windows: int
    settings: int             # parameter settings tried

    def to_dict(self) -> dict:
        return {**asdict(self), "params": asdict(self.params), "score_name": "mean F1 at IoU 0.5 and 0.7"}


def calibration_samples(predictor: Predictor, sources, window: int = 768, max_pixels: int = 4 * 2**20,
                        seed: int = 0) -> list[Sample]:
    """Windows of the annotated sources (whole small images; windows centred on annotated pixels of large
    ones), at most ``max_pixels`` in all, with the network output on each. Point-annotated sources are left
    out: their disks are not outlines an instance can be scored against."""
    rng = np.random.default_rng(seed)
    samples, total = [], 0
    sources = [s for s in sources if getattr(s, "points", None) is None]
    per_source = max(1, max_pixels // max(1, len(sources)))
    for source in sources:
        h, w = source.shape
        if h * w <= per_source:
            windows = [(slice(0, h), slice(0, w))]
        else:
            windows = []
            for _ in range(max(1, per_source // (window * window))):
                cy, cx = source.centres.draw(rng)
                y0, x0 = max(0, min(h - window, cy - window // 2)), max(0, min(w - window, cx - window // 2))
                windows.append((slice(y0, min(h, y0 + window)), slice(x0, min(w, x0 + window))))
        for rows, cols in windows:
            outlines = getattr(source, "read_outlines", None)  # a slide's clicked cells are no outlines
            partial = np.asarray(outlines((rows, cols)) if outlines else source.read_annotation((rows, cols)).partial)
            if not (partial >= 2).any():
                continue
            image = np.asarray(source.read_image((rows, cols)))
            image, partial = resample_window(image, partial, getattr(source, "scale", 1.0))
            samples.append(Sample(predictor.fields(image, source.normalization), partial))
            total += partial.size
            if total >= max_pixels:
                return samples
    return samples


def _score(labels: list[np.ndarray], samples: list[Sample]) -> tuple[float, float, int]:
    """(mean F1 over THRESHOLDS, F1 at 0.5, annotated objects) of predicted ``labels`` over the samples."""
    per_threshold = []
    for t in THRESHOLDS:
        total = Counts()
        for pred, sample in zip(labels, samples):
            total = total + sparse_counts(pred, sample.partial, t)
        per_threshold.append(total)
    return float(np.mean([c.f1 for c in per_threshold])), per_threshold[0].f1, per_threshold[0].n_true


def _clusters(sample: Sample, params: InstanceParams, device: str) -> np.ndarray:
    return trajectory_clusters(sample.fields[0], sample.fields[1:3], params, device)


def calibrate(samples: list[Sample], start: InstanceParams, device: str = "cpu") -> Calibration:
    """Coordinate search from ``start``: Euler steps and distance threshold (each needs new trajectories),
    then the merge ratio, then flow-error threshold x minimum size (cheap: the same clusters)."""
    if not samples:
        raise ValueError("no annotated object to calibrate on")
    tried = 0

    def evaluate(params: InstanceParams, raw: list[np.ndarray] | None = None) -> tuple[float, list, list]:
        nonlocal tried
        tried += 1
        raw = raw if raw is not None else [_clusters(s, params, device) for s in samples]
        merged = [merge_lobes(r, s.fields[0], params.merge_ratio).astype(np.uint32) for r, s in zip(raw, samples)]
        labels = [finalize_clusters(m, s.fields[1:3], params) for m, s in zip(merged, samples)]
        return _score(labels, samples)[0], raw, merged

    default_score, default_f1, objects = _score(
        [finalize_clusters(merge_lobes(_clusters(s, start, device), s.fields[0], start.merge_ratio).astype(np.uint32),
                           s.fields[1:3], start) for s in samples], samples)
    best, best_score = start, default_score
    for factor in STEP_FACTORS:  # the steps first: they matter most, and scale with the object size in pixels
        params = replace(best, n_steps=max(5, int(round(start.n_steps * factor))))
        score, _, _ = evaluate(params)
        if score > best_score:
            best, best_score = params, score
    for offset in DISTANCE_OFFSETS:
        params = replace(best, distance_threshold=start.distance_threshold + offset)
        score, _, _ = evaluate(params)
        if score > best_score:
            best, best_score = params, score
    raw = [_clusters(s, best, device) for s in samples]
    for ratio in MERGE_RATIOS:
        params = replace(best, merge_ratio=ratio)
        score, _, _ = evaluate(params, raw)
        if score > best_score:
            best, best_score = params, score
    merged = [merge_lobes(r, s.fields[0], best.merge_ratio).astype(np.uint32) for r, s in zip(raw, samples)]
    errors = [flow_errors(m, s.fields[1:3], torch.get_num_threads()) for m, s in zip(merged, samples)]
    base_size = max(start.min_size, 1)
    for threshold in FLOW_ERRORS:
        for size_factor in MIN_SIZE_FACTORS:
            params = replace(best, flow_error_threshold=threshold if math.isfinite(threshold) else 1e9,
                             min_size=int(round(base_size * size_factor)))
            tried += 1
            labels = [finalize_clusters(m, s.fields[1:3], params, e) for m, s, e in zip(merged, samples, errors)]
            score = _score(labels, samples)[0]
            if score > best_score:
                best, best_score = params, score
    final = [finalize_clusters(m, s.fields[1:3], best, e) for m, s, e in zip(merged, samples, errors)]
    score, f1, _ = _score(final, samples)
    return Calibration(params=best, score=score, default_score=default_score, f1=f1, default_f1=default_f1,
                       objects=objects, windows=len(samples), settings=tried)


def calibrate_checkpoint(checkpoint: Path, sources, out: Path | None = None, device: str | None = None,
                         overwrite: bool = False) -> Calibration | None:
    """Calibrate ``checkpoint`` on ``sources`` and store the parameters in ``out`` (default: the checkpoint
    itself, rewritten atomically; an existing ``out`` only with ``overwrite``, and only a checkpoint). The
    search starts from the defaults. None (and nothing written) when the sources hold no annotated object."""
    if out is not None:
        check_checkpoint_out(Path(out), overwrite)
    with writer_lock(out or checkpoint, "calibrate", inside=False):
        return calibrate_unlocked(checkpoint, sources, out, device)


def calibrate_unlocked(checkpoint: Path, sources, out: Path | None, device: str | None) -> Calibration | None:
    """``calibrate_checkpoint`` for a caller that holds the output's writer lock already."""
    state = load_checkpoint(checkpoint)
    start = InstanceParams()
    predictor = replace(Predictor.from_checkpoint(state, device=device), params=start)
    scale_to_model(sources, state.get("pixel_size_um"))  # windows on the model's grid, as it segments
    samples = calibration_samples(predictor, sources)
    if not samples:
        log.warning("no annotated object to calibrate the instance parameters on: %s keeps the defaults", checkpoint)
        return None
    result = calibrate(samples, start, predictor.device)
    update_checkpoint(checkpoint, out or checkpoint, instance_params=asdict(result.params),
                      calibration=result.to_dict())
    log.info("calibrated on %d objects: score %.3f -> %.3f", result.objects, result.default_score, result.score)
    return result
