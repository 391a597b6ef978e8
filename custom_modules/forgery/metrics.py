"""Image-level and pixel-level forgery metrics: the detection head's evaluation and eval's forgery task use these.

Image: AUROC and AP rank P(fake) (None when the labels hold one class: they are undefined then); F1 of the fake
class and accuracy judge 0/1 decisions - P(fake) >= a threshold here, the answer words in eval - and the best F1
over every threshold (and where). Pixel: F1 and IoU of each fake's thresholded heatmap against its mask,
averaged over the fakes that have a mask (the usual localisation protocol); at 0.5 and at the single best
threshold of a 0.05 grid. All of it is scikit-learn's, installed in both environments.
"""
from __future__ import annotations

import numpy as np
from sklearn.metrics import (accuracy_score, average_precision_score, f1_score, jaccard_score,
                             precision_recall_curve, roc_auc_score)

PIXEL_THRESHOLDS = np.round(np.arange(0.05, 1.0, 0.05), 2)


def ranking_metrics(labels, scores) -> dict:
    """{"auroc", "ap"} of scores = P(fake) against labels 1 fake / 0 real."""
    both = len(set(np.asarray(labels).tolist())) == 2
    return {"auroc": float(roc_auc_score(labels, scores)) if both else None,
            "ap": float(average_precision_score(labels, scores)) if both else None}


def decision_metrics(labels, decided) -> dict:
    """{"f1", "accuracy"} of 0/1 decisions; F1 is the fake class's, 0 when no decision is a true fake."""
    return {"f1": float(f1_score(labels, decided, pos_label=1, zero_division=0.0)),
            "accuracy": float(accuracy_score(labels, decided))}


def best_f1(labels, scores) -> dict:
    """{"best_f1", "best_f1_threshold"}: the highest F1 of `score >= t` over every distinct score t (the highest
    such t on ties); None without a fake, where F1 is undefined at every threshold."""
    if not np.asarray(labels).sum():
        return {"best_f1": None, "best_f1_threshold": None}
    precision, recall, thresholds = precision_recall_curve(labels, scores)
    precision, recall = precision[:-1], recall[:-1]  # the final (1, 0) point has no threshold
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(precision),
                   where=(precision + recall) > 0)
    best = len(f1) - 1 - int(np.argmax(f1[::-1]))  # thresholds ascend: the last maximum is the highest t
    return {"best_f1": float(f1[best]), "best_f1_threshold": float(thresholds[best])}


def image_metrics(labels, scores, threshold: float = 0.5) -> dict:
    labels = np.asarray(labels, dtype=int)
    scores = np.asarray(scores, dtype=float)
    if len(labels) == 0:
        raise ValueError("no predictions to score")
    return {"n": int(len(labels)), "positives": int(labels.sum()), "threshold": threshold,
            **ranking_metrics(labels, scores), **decision_metrics(labels, (scores >= threshold).astype(int)),
            **best_f1(labels, scores)}


def pixel_metrics(prob_maps, masks) -> dict:
    """prob_maps, masks: one probability map and one {0,1} mask per fake image with a mask, all of one shape
    (the head's mask grid)."""
    if not len(prob_maps):
        return {"pixel_images": 0, "pixel_f1": None, "pixel_iou": None, "pixel_best_f1": None,
                "pixel_best_iou": None, "pixel_best_threshold": None}
    # one row per image: scikit-learn's per-sample ("samples") average is the mean over images
    truth = np.stack([(np.asarray(m) > 0.5).ravel() for m in masks]).astype(int)
    probs = np.stack([np.asarray(p, dtype=float).ravel() for p in prob_maps])

    def at(threshold: float) -> tuple[float, float]:
        decided = (probs >= threshold).astype(int)
        return (float(f1_score(truth, decided, average="samples", zero_division=0.0)),
                float(jaccard_score(truth, decided, average="samples", zero_division=0.0)))

    f1, iou = at(0.5)
    grid = [(t, *at(t)) for t in PIXEL_THRESHOLDS]
    best_t, best_f1_value, best_iou = max(grid, key=lambda g: g[1])
    return {"pixel_images": len(prob_maps), "pixel_f1": f1, "pixel_iou": iou, "pixel_best_f1": best_f1_value,
            "pixel_best_iou": best_iou, "pixel_best_threshold": float(best_t)}
