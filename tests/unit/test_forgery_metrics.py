"""Forgery metrics against scikit-learn on fixed arrays (ties, perfect and inverted rankings included)."""
import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, f1_score, jaccard_score, roc_auc_score

from custom_modules.forgery.metrics import image_metrics, pixel_metrics

LABELS = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0])
SCORES = np.array([0.1, 0.9, 0.4, 0.4, 0.65, 0.3, 0.8, 0.4, 0.55, 0.2, 0.9, 0.05])


@pytest.mark.parametrize("scores", [SCORES, 1 - SCORES, LABELS * 0.5 + 0.25, np.full(12, 0.5)])
def test_image_metrics_match_sklearn(scores):
    metrics = image_metrics(LABELS, scores, threshold=0.5)
    decided = (scores >= 0.5).astype(int)
    assert metrics["auroc"] == pytest.approx(roc_auc_score(LABELS, scores), abs=1e-12)
    assert metrics["ap"] == pytest.approx(average_precision_score(LABELS, scores), abs=1e-12)
    assert metrics["f1"] == pytest.approx(f1_score(LABELS, decided, zero_division=0.0), abs=1e-12)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(LABELS, decided), abs=1e-12)
    best = max(f1_score(LABELS, (scores >= t).astype(int)) for t in np.unique(scores))
    assert metrics["best_f1"] == pytest.approx(best, abs=1e-12)
    assert f1_score(LABELS, (scores >= metrics["best_f1_threshold"]).astype(int)) == pytest.approx(best)


def test_image_metrics_known_values_and_single_class():
    metrics = image_metrics(LABELS, SCORES, threshold=0.5)
    # 36 (fake, real) pairs: 0.9, 0.9 beat all 6 reals; 0.65, 0.55 beat 5 (not 0.8); each 0.4 beats 4 and
    # ties the real 0.4 (half) -> 12 + 10 + 9 = 31
    assert metrics["auroc"] == pytest.approx(31 / 36)
    assert (metrics["n"], metrics["positives"]) == (12, 6)
    only_fakes = image_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert only_fakes["auroc"] is None and only_fakes["ap"] is None and only_fakes["accuracy"] == pytest.approx(2 / 3)


def test_pixel_metrics_match_sklearn_per_image_mean():
    rng = np.random.default_rng(0)
    masks = [np.zeros((8, 8)), np.zeros((8, 8)), np.zeros((8, 8))]
    masks[0][2:5, 2:6] = 1
    masks[1][0:8, 0:3] = 1
    masks[2][6:8, 6:8] = 1
    probs = [np.clip(m * 0.7 + rng.random((8, 8)) * 0.45, 0, 1) for m in masks]
    metrics = pixel_metrics(probs, masks)
    f1s = [f1_score(m.ravel(), (p >= 0.5).ravel(), zero_division=0.0) for p, m in zip(probs, masks)]
    ious = [jaccard_score(m.ravel(), (p >= 0.5).ravel(), zero_division=0.0) for p, m in zip(probs, masks)]
    assert metrics["pixel_images"] == 3
    assert metrics["pixel_f1"] == pytest.approx(np.mean(f1s), abs=1e-12)
    assert metrics["pixel_iou"] == pytest.approx(np.mean(ious), abs=1e-12)
    t = metrics["pixel_best_threshold"]
    best = np.mean([f1_score(m.ravel(), (p >= t).ravel(), zero_division=0.0) for p, m in zip(probs, masks)])
    assert metrics["pixel_best_f1"] == pytest.approx(best, abs=1e-12)
    assert metrics["pixel_best_f1"] >= metrics["pixel_f1"]
    assert pixel_metrics([], [])["pixel_f1"] is None
