"""Accuracy of a label image against ground truth, accumulated block by block for whole slides.

One pass over both label images collects, per block, the pixel counts of every overlapping
(truth, prediction) pair, each object's area and coordinate sums (for centroids); only these
per-object numbers are kept, never a whole label array. Matching, AP/F1/PQ, the aggregated
Jaccard index (AJI) and mean Dice then work on the accumulated overlaps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from sparseseg.metrics.matching import THRESHOLDS, Overlaps, match, scores_from_counts


@dataclass
class AccumulatedOverlaps:
    overlaps: Overlaps
    truth_centroids: np.ndarray  # (n_truth, 2) px, in truth_ids order
    pred_centroids: np.ndarray


def _id_sums(labels: np.ndarray, y0: int, x0: int) -> pd.DataFrame:
    yy, xx = np.nonzero(labels)
    ids = labels[yy, xx]
    return pd.DataFrame({"id": ids, "n": 1, "sy": yy + y0, "sx": xx + x0}).groupby("id").sum()


def accumulate(truth, pred, block: int = 2048) -> AccumulatedOverlaps:
    """Overlaps and centroids of two same-shaped lazily sliceable label images."""
    if tuple(truth.shape) != tuple(pred.shape):
        raise ValueError(f"truth {tuple(truth.shape)} and labels {tuple(pred.shape)} differ in shape")
    h, w = truth.shape
    pairs, t_sums, p_sums = [], [], []
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            window = (slice(y0, min(h, y0 + block)), slice(x0, min(w, x0 + block)))
            t = np.asarray(truth[window]).astype(np.int64)
            p = np.asarray(pred[window]).astype(np.int64)
            both = (t > 0) & (p > 0)
            if both.any():
                pairs.append(pd.DataFrame({"t": t[both], "p": p[both], "n": 1}).groupby(["t", "p"]).sum())
            t_sums.append(_id_sums(t, y0, x0))
            p_sums.append(_id_sums(p, y0, x0))
    t_all = pd.concat(t_sums).groupby(level=0).sum()
    p_all = pd.concat(p_sums).groupby(level=0).sum()
    truth_ids = t_all.index.to_numpy(np.int64)
    pred_ids = p_all.index.to_numpy(np.int64)
    if pairs:
        inter = pd.concat(pairs).groupby(level=[0, 1]).sum()
        ti = np.searchsorted(truth_ids, inter.index.get_level_values(0).to_numpy())
        pi = np.searchsorted(pred_ids, inter.index.get_level_values(1).to_numpy())
        counts = inter["n"].to_numpy(np.float64)
    else:
        ti = pi = np.zeros(0, np.int64)
        counts = np.zeros(0)
    overlaps = Overlaps(truth_ids=truth_ids, pred_ids=pred_ids, truth_area=t_all["n"].to_numpy(np.int64),
                        pred_area=p_all["n"].to_numpy(np.int64), pairs_t=ti, pairs_p=pi, inter=counts)
    centroid = lambda s: np.column_stack([s["sy"] / s["n"], s["sx"] / s["n"]]) if len(s) else np.zeros((0, 2))  # noqa: E731
    return AccumulatedOverlaps(overlaps=overlaps, truth_centroids=centroid(t_all), pred_centroids=centroid(p_all))


def aji_and_dice(ov: Overlaps) -> tuple[float, float]:
    """Aggregated Jaccard index (Kumar et al. 2017) and mean best Dice over true objects."""
    n_t, n_p = ov.truth_ids.size, ov.pred_ids.size
    if n_t == 0:
        return (1.0 if n_p == 0 else 0.0), 0.0
    iou = ov.iou
    best = np.full(n_t, -1, np.int64)
    best_iou = np.zeros(n_t)
    best_inter = np.zeros(n_t)
    order = np.lexsort((-iou, ov.pairs_t))  # per truth object, highest IoU first
    first = np.r_[True, ov.pairs_t[order][1:] != ov.pairs_t[order][:-1]][:order.size]  # none when nothing overlaps
    chosen = order[first]
    best[ov.pairs_t[chosen]] = ov.pairs_p[chosen]
    best_iou[ov.pairs_t[chosen]] = iou[chosen]
    best_inter[ov.pairs_t[chosen]] = ov.inter[chosen]
    matched = best >= 0
    t_area = ov.truth_area.astype(np.float64)
    p_area = ov.pred_area.astype(np.float64)
    intersection = best_inter[matched].sum()
    union = (t_area[matched] + p_area[best[matched]] - best_inter[matched]).sum() + t_area[~matched].sum()
    used = np.zeros(n_p, bool)
    used[best[matched]] = True
    union += p_area[~used].sum()
    dice = np.zeros(n_t)
    dice[matched] = 2 * best_inter[matched] / (t_area[matched] + p_area[best[matched]])
    return float(intersection / union) if union else 0.0, float(dice.mean())


def accuracy_tables(acc: AccumulatedOverlaps, truth_regions: np.ndarray | None = None,
                    pred_regions: np.ndarray | None = None, region_names: dict[int, str] | None = None
                    ) -> tuple[pd.DataFrame, dict, pd.DataFrame | None]:
    """(per-threshold table, summary dict, per-region table at IoU 0.5 or None)."""
    ov = acc.overlaps
    rows, matches_05 = [], None
    for threshold in THRESHOLDS:
        ti, pi, iou = match(ov, threshold)
        rows.append(scores_from_counts(threshold, iou.size, ov.truth_ids.size, ov.pred_ids.size,
                                       float(iou.sum())).to_dict())
        if abs(threshold - 0.5) < 1e-9:
            matches_05 = (ti, pi, iou)
    table = pd.DataFrame(rows)
    aji, dice = aji_and_dice(ov)
    summary = {"f1@0.5": float(table["f1"].iloc[0]), "precision@0.5": float(table["precision"].iloc[0]),
               "recall@0.5": float(table["recall"].iloc[0]), "pq@0.5": float(table["panoptic_quality"].iloc[0]),
               "sq@0.5": float(table["mean_matched_iou"].iloc[0]), "mAP": float(table["accuracy"].mean()),
               "aji": aji, "mean_dice": dice, "n_true": int(ov.truth_ids.size), "n_pred": int(ov.pred_ids.size)}
    per_region = None
    if truth_regions is not None and pred_regions is not None and matches_05 is not None:
        ti, pi, iou = matches_05
        regions = sorted(set(region_names or {}) | set(truth_regions.tolist()) | set(pred_regions.tolist()))
        out = []
        for region in regions:
            n_true = int((truth_regions == region).sum())
            n_pred = int((pred_regions == region).sum())
            in_region = truth_regions[ti] == region  # a match belongs to its true object's region
            s = scores_from_counts(0.5, int(in_region.sum()), n_true, n_pred + int(
                (in_region & (pred_regions[pi] != region)).sum()) - int((~in_region & (pred_regions[pi] == region)).sum()),
                float(iou[in_region].sum()))
            out.append({"region": region, "name": (region_names or {}).get(region, str(region)), **s.to_dict()})
        per_region = pd.DataFrame(out)
    return table, summary, per_region
