"""Image-level and pixel-level forgery metrics.

Image: AUROC, AP, F1 and accuracy at a chosen threshold, best F1 over thresholds (and where), from P(fake).
Pixel: per-image F1 and IoU of the thresholded heatmap against the mask, averaged over the fakes that
have a mask (the usual localisation protocol); at 0.5 and at the single best threshold of a 0.05 grid.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score, precision_recall_curve, roc_auc_score

PIXEL_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


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
              "auroc": float(roc_auc_score(labels, scores)) if both else None,
              "ap": float(average_precision_score(labels, scores)) if both else None,
              "f1": 2 * tp / (2 * tp + fp + fn) if tp else 0.0,
              "accuracy": float((decided == labels).mean())}
    if labels.sum():
        precision, recall, thresholds = precision_recall_curve(labels, scores)
        f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                       where=(precision + recall) > 0)[:-1]
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
