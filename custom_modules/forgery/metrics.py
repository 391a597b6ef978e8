"""Image-level and pixel-level forgery metrics.

Image: AUROC, AP, F1 and accuracy at a chosen threshold, best F1 over thresholds (and where), from P(fake).
Plain numpy (the ms-swift environment has no scikit-learn); the tests check every number against sklearn.
Pixel: per-image F1 and IoU of the thresholded heatmap against the mask, averaged over the fakes that
have a mask (the usual localisation protocol); at 0.5 and at the single best threshold of a 0.05 grid.
"""
from __future__ import annotations

import numpy as np

PIXEL_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Mann-Whitney U / (n_pos * n_neg), ties counted half (= sklearn roc_auc_score)."""
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    sorted_scores = scores[order]
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_scores)) + 1]
    ends = np.r_[starts[1:], len(scores)]
    for start, end in zip(starts, ends):
        ranks[order[start:end]] = (start + end + 1) / 2  # average 1-based rank of the tie group
    positives = labels == 1
    n_pos, n_neg = positives.sum(), (~positives).sum()
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def precision_recall(labels: np.ndarray, scores: np.ndarray):
    """Precision, recall at each distinct score threshold, highest threshold first."""
    order = np.argsort(-scores, kind="mergesort")
    scores, labels = scores[order], labels[order]
    last = np.r_[np.flatnonzero(np.diff(scores)), len(scores) - 1]  # last index of each tie group
    tp = np.cumsum(labels)[last]
    fp = (last + 1) - tp
    return tp / (tp + fp), tp / labels.sum(), scores[last]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """sum_n (R_n - R_{n-1}) P_n (= sklearn average_precision_score)."""
    precision, recall, _ = precision_recall(labels, scores)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def image_metrics(labels, scores, threshold: float = 0.5) -> dict:
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if len(labels) == 0:
        raise ValueError("no predictions to score")
    both = len(set(labels.tolist())) == 2
    decided = (scores >= threshold).astype(int)
    tp = int(((decided == 1) & (labels == 1)).sum())
    fp = int(((decided == 1) & (labels == 0)).sum())
    fn = int(((decided == 0) & (labels == 1)).sum())
    result = {"n": int(len(labels)), "positives": int(labels.sum()), "threshold": threshold,
              "auroc": auroc(labels, scores) if both else None,
              "ap": average_precision(labels, scores) if both else None,
              "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
              "accuracy": float((decided == labels).mean())}
    if labels.sum():
        precision, recall, thresholds = precision_recall(labels, scores)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=(precision + recall) > 0)
        best = int(np.argmax(f1))
        result.update(best_f1=float(f1[best]), best_f1_threshold=float(thresholds[best]))
    else:
        result.update(best_f1=None, best_f1_threshold=None)
    return result


def _f1_iou(pred: np.ndarray, mask: np.ndarray) -> tuple[float, float]:
    tp = float((pred & mask).sum())
    fp = float((pred & ~mask).sum())
    fn = float((~pred & mask).sum())
    f1 = 2 * tp / (2 * tp + fp + fn) if tp else 0.0
    iou = tp / (tp + fp + fn) if tp else 0.0
    return f1, iou


def pixel_metrics(prob_maps, masks) -> dict:
    """prob_maps, masks: equal-shaped arrays per fake image with a mask (probabilities, {0,1})."""
    if not len(prob_maps):
        return {"pixel_images": 0, "pixel_f1": None, "pixel_iou": None, "pixel_best_f1": None,
                "pixel_best_iou": None, "pixel_best_threshold": None}
    masks = [np.asarray(m) > 0.5 for m in masks]
    probs = [np.asarray(p, dtype=float) for p in prob_maps]

    def at(threshold: float) -> tuple[float, float]:
        pairs = [_f1_iou(p >= threshold, m) for p, m in zip(probs, masks)]
        return float(np.mean([f for f, _ in pairs])), float(np.mean([i for _, i in pairs]))

    f1, iou = at(0.5)
    grid = [(t, *at(t)) for t in PIXEL_THRESHOLDS]
    best_t, best_f1, best_iou = max(grid, key=lambda g: g[1])
    return {"pixel_images": len(probs), "pixel_f1": f1, "pixel_iou": iou, "pixel_best_f1": best_f1,
            "pixel_best_iou": best_iou, "pixel_best_threshold": float(best_t)}
