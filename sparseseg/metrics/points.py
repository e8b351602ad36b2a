"""Point detection accuracy: detected cells (object centroids) against annotated points, one-to-one within a
radius, overall (detection F) and per class (the F of each class's detections against its points, as the
BRCA-M2C authors report it; HoVer-Net's F_d pairs the same way, at 12 px at 40x = 3 um)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.spatial import cKDTree


@dataclass(frozen=True)
class PointCounts:
    """True positives, false positives, false negatives (add them over images, then take ``f1``)."""

    tp: int = 0
    fp: int = 0
    fn: int = 0

    def __add__(self, other: PointCounts) -> PointCounts:
        return PointCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn)

    @property
    def f1(self) -> float:
        return 2 * self.tp / max(1, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> float:
        return self.tp / max(1, self.tp + self.fp)

    @property
    def recall(self) -> float:
        return self.tp / max(1, self.tp + self.fn)


def match_points(predicted: np.ndarray, truth: np.ndarray, radius: float) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one pairs (indices into ``predicted``, into ``truth``) within ``radius``, minimising the summed
    distance (Hungarian on the pairs in reach: the most pairs, then the closest)."""
    predicted, truth = np.asarray(predicted, float).reshape(-1, 2), np.asarray(truth, float).reshape(-1, 2)
    if not len(predicted) or not len(truth):
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    near = cKDTree(predicted).sparse_distance_matrix(cKDTree(truth), radius, output_type="coo_matrix")
    if not near.nnz:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    rows, cols = np.unique(near.row), np.unique(near.col)
    cost = np.full((len(rows), len(cols)), 1e6)  # out of reach: never chosen over a pair in reach
    cost[np.searchsorted(rows, near.row), np.searchsorted(cols, near.col)] = near.data
    r, c = linear_sum_assignment(cost)
    keep = cost[r, c] <= radius
    return rows[r[keep]], cols[c[keep]]


def detection_counts(predicted: np.ndarray, truth: np.ndarray, radius: float) -> PointCounts:
    return pair_counts(match_points(predicted, truth, radius), len(predicted), len(truth))


def pair_counts(pairs: tuple[np.ndarray, np.ndarray], n_predicted: int, n_truth: int) -> PointCounts:
    """Detection counts of one-to-one ``pairs`` (``match_points``) among so many predictions and truths."""
    return PointCounts(len(pairs[0]), n_predicted - len(pairs[0]), n_truth - len(pairs[0]))


def class_counts(predicted: np.ndarray, predicted_class: np.ndarray, truth: np.ndarray, truth_class: np.ndarray,
                 classes, radius: float) -> dict:
    """{class: PointCounts} of each class's detections matched against that class's points."""
    predicted_class, truth_class = np.asarray(predicted_class), np.asarray(truth_class)
    return {c: detection_counts(np.asarray(predicted)[predicted_class == c], np.asarray(truth)[truth_class == c],
                                radius) for c in classes}


@dataclass(frozen=True)
class TypedCounts:
    """HoVer-Net's per-class tallies: paired cells typed right or wrong, and unpaired cells of the class."""

    tp: int = 0      # paired, truth and prediction both this class
    fp: int = 0      # paired, predicted this class, truth another
    fn: int = 0      # paired, truth this class, predicted another
    fp_d: int = 0    # unpaired predictions of this class
    fn_d: int = 0    # unpaired truth cells of this class

    def __add__(self, other: TypedCounts) -> TypedCounts:
        return TypedCounts(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.fp_d + other.fp_d,
                           self.fn_d + other.fn_d)

    @property
    def f1(self) -> float:
        """F_c of Graham et al. 2019 (weights 2, 2, 1, 1): typing errors cost twice a detection error."""
        return 2 * self.tp / max(1, 2 * self.tp + 2 * self.fp + 2 * self.fn + self.fp_d + self.fn_d)


def typed_counts(pairs: tuple[np.ndarray, np.ndarray], predicted_class: np.ndarray, truth_class: np.ndarray,
                 classes) -> dict:
    """{class: TypedCounts}: with the cells paired one-to-one regardless of class (``match_points``, as for F_d),
    each class scored on the pairs and the unpaired cells that carry it (HoVer-Net's F_c)."""
    predicted_class, truth_class = np.asarray(predicted_class), np.asarray(truth_class)
    p, t = pairs
    lone_p = np.setdiff1d(np.arange(len(predicted_class)), p)
    lone_t = np.setdiff1d(np.arange(len(truth_class)), t)
    pc, tc = predicted_class[p], truth_class[t]
    return {c: TypedCounts(int(((pc == c) & (tc == c)).sum()), int(((pc == c) & (tc != c)).sum()),
                           int(((pc != c) & (tc == c)).sum()), int((predicted_class[lone_p] == c).sum()),
                           int((truth_class[lone_t] == c).sum())) for c in classes}
