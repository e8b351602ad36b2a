"""Instance accuracy against a *sparse* annotation: only annotated pixels count, unknown pixels never do.

The annotation is a partial map (0 unknown, 1 background, k >= 2 object k). Intersections and
unions are taken over the annotated pixels only, so a prediction is neither rewarded nor punished
where nobody looked. A predicted object counts (as a match or a false positive) when at least half
of its pixels are annotated; an annotated object counts when at least ``min_object_px`` of its
pixels are annotated. With a dense annotation this is the usual matching (``metrics.matching``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sparseseg.metrics.matching import Overlaps, match, overlaps


@dataclass(frozen=True)
class Counts:
    """Matched pairs and object counts at one IoU threshold, summed over images."""

    tp: int = 0
    n_true: int = 0
    n_pred: int = 0
    iou_sum: float = 0.0

    def __add__(self, other: Counts) -> Counts:
        return Counts(self.tp + other.tp, self.n_true + other.n_true, self.n_pred + other.n_pred,
                      self.iou_sum + other.iou_sum)

    @property
    def f1(self) -> float:
        return 2 * self.tp / (self.n_true + self.n_pred) if self.n_true + self.n_pred else 0.0

    @property
    def pq(self) -> float:
        """Panoptic quality: F1 x mean IoU of the matches."""
        return self.f1 * (self.iou_sum / self.tp) if self.tp else 0.0


def sparse_counts(pred: np.ndarray, partial: np.ndarray, threshold: float = 0.5, min_object_px: int = 10
                  ) -> Counts:
    """Matches of ``pred`` with the annotated objects at ``threshold`` (IoU over annotated pixels only).

    A prediction matching nothing is a false positive only when at least half of it is annotated.
    """
    if pred.shape != partial.shape:
        raise ValueError(f"prediction {pred.shape} and annotation {partial.shape} differ in shape")
    pred = np.asarray(pred)
    known = partial > 0
    ov = overlaps(np.where(partial >= 2, partial, 0)[known], pred[known])  # areas and intersections on known pixels
    keep_t = ov.truth_area >= min_object_px
    pair_ok = keep_t[ov.pairs_t]
    t_map = np.cumsum(keep_t) - 1
    ov = Overlaps(truth_ids=ov.truth_ids[keep_t], pred_ids=ov.pred_ids, truth_area=ov.truth_area[keep_t],
                  pred_area=ov.pred_area, pairs_t=t_map[ov.pairs_t[pair_ok]], pairs_p=ov.pairs_p[pair_ok],
                  inter=ov.inter[pair_ok])
    _, matched, iou = match(ov, threshold)
    ids, full_area = np.unique(pred[pred > 0], return_counts=True)
    mostly_known = ov.pred_area >= 0.5 * full_area[np.searchsorted(ids, ov.pred_ids)] if ov.pred_ids.size \
        else np.zeros(0, bool)
    unmatched = np.ones(ov.pred_ids.size, bool)
    unmatched[matched] = False
    return Counts(tp=int(iou.size), n_true=int(ov.truth_ids.size),
                  n_pred=int(iou.size) + int((mostly_known & unmatched).sum()), iou_sum=float(iou.sum()))
