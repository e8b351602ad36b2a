"""Instance matching and accuracy: precision, recall, F1, DSB AP, panoptic quality (science.md s.7).

Matching at an IoU threshold t is one-to-one: among pairs with IoU >= t, the assignment that
maximises the summed IoU (Hungarian; for t > 0.5 it is the unique set of such pairs).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix

THRESHOLDS = tuple(np.round(np.arange(0.5, 0.951, 0.05), 2))


@dataclass(frozen=True)
class Overlaps:
    """Pairwise intersections of two label images, as sparse triplets (truth id, pred id, pixels)."""

    truth_ids: np.ndarray
    pred_ids: np.ndarray
    truth_area: np.ndarray   # indexed by position in truth_ids
    pred_area: np.ndarray
    pairs_t: np.ndarray      # positions into truth_ids
    pairs_p: np.ndarray
    inter: np.ndarray

    @property
    def iou(self) -> np.ndarray:
        union = self.truth_area[self.pairs_t] + self.pred_area[self.pairs_p] - self.inter
        return self.inter / np.maximum(union, 1)


def overlaps(truth: np.ndarray, pred: np.ndarray) -> Overlaps:
    """Intersections of every overlapping (truth, prediction) pair; 0 is background in both."""
    if truth.shape != pred.shape:
        raise ValueError(f"truth {truth.shape} and prediction {pred.shape} differ in shape")
    t = truth.ravel().astype(np.int64)
    p = pred.ravel().astype(np.int64)
    truth_ids, t_inv = np.unique(t, return_inverse=True)
    pred_ids, p_inv = np.unique(p, return_inverse=True)
    truth_area = np.bincount(t_inv)
    pred_area = np.bincount(p_inv)
    both = (t > 0) & (p > 0)
    counts = coo_matrix((np.ones(both.sum(), np.int64), (t_inv[both], p_inv[both])),
                        shape=(truth_ids.size, pred_ids.size)).tocsr().tocoo()
    keep_t, keep_p = truth_ids > 0, pred_ids > 0
    # re-index so that background is dropped from the id lists
    t_map = np.cumsum(keep_t) - 1
    p_map = np.cumsum(keep_p) - 1
    return Overlaps(truth_ids=truth_ids[keep_t], pred_ids=pred_ids[keep_p], truth_area=truth_area[keep_t],
                    pred_area=pred_area[keep_p], pairs_t=t_map[counts.row], pairs_p=p_map[counts.col],
                    inter=counts.data.astype(np.float64))


@dataclass(frozen=True)
class MatchScores:
    threshold: float
    tp: int
    fp: int
    fn: int
    precision: float
    recall: float
    f1: float
    accuracy: float        # DSB "AP": TP / (TP + FP + FN)
    mean_matched_iou: float  # SQ
    panoptic_quality: float  # PQ = DQ x SQ, DQ = F1

    def to_dict(self) -> dict:
        return asdict(self)


def match(ov: Overlaps, threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth positions, pred positions, IoU) of the one-to-one matches at ``threshold``."""
    iou = ov.iou
    ok = iou >= threshold
    if not ok.any():
        empty = np.zeros(0, np.int64)
        return empty, empty, np.zeros(0)
    rows, cols, values = ov.pairs_t[ok], ov.pairs_p[ok], iou[ok]
    if threshold > 0.5:  # IoU > 0.5 pairs are already one-to-one
        return rows, cols, values
    ut, rt = np.unique(rows, return_inverse=True)
    up, rp = np.unique(cols, return_inverse=True)
    cost = np.zeros((ut.size, up.size))
    cost[rt, rp] = -values
    r, c = linear_sum_assignment(cost)
    valid = cost[r, c] < 0
    return ut[r[valid]], up[c[valid]], -cost[r[valid], c[valid]]


def scores_from_counts(threshold: float, tp: int, n_true: int, n_pred: int, iou_sum: float) -> MatchScores:
    fp, fn = n_pred - tp, n_true - tp
    precision = tp / n_pred if n_pred else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_true + n_pred) if (n_true + n_pred) else 0.0
    accuracy = tp / (tp + fp + fn) if (tp + fp + fn) else 0.0
    sq = iou_sum / tp if tp else 0.0
    return MatchScores(threshold=float(threshold), tp=int(tp), fp=int(fp), fn=int(fn), precision=precision,
                       recall=recall, f1=f1, accuracy=accuracy, mean_matched_iou=sq, panoptic_quality=f1 * sq)


def matching(truth: np.ndarray, pred: np.ndarray, thresholds=THRESHOLDS) -> list[MatchScores]:
    """Scores at each threshold for one pair of label images."""
    ov = overlaps(truth, pred)
    result = []
    for threshold in thresholds:
        _, _, iou = match(ov, threshold)
        result.append(scores_from_counts(threshold, iou.size, ov.truth_ids.size, ov.pred_ids.size, float(iou.sum())))
    return result


def summarize(per_threshold: list[MatchScores]) -> dict:
    """F1 and PQ at 0.5, and mAP (mean DSB AP over 0.50:0.05:0.95)."""
    at_05 = next(s for s in per_threshold if abs(s.threshold - 0.5) < 1e-9)
    return {"f1@0.5": at_05.f1, "pq@0.5": at_05.panoptic_quality,
            "mAP": float(np.mean([s.accuracy for s in per_threshold]))}
