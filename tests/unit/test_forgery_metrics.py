"""Forgery metrics against values computed by hand (ties, inverted rankings, one class, per-image pixel means)."""
import numpy as np
import pytest

from custom_modules.forgery.metrics import image_metrics, pixel_metrics

LABELS = np.array([0, 1, 1, 0, 1, 0, 0, 1, 1, 0, 1, 0])
SCORES = np.array([0.1, 0.9, 0.4, 0.4, 0.65, 0.3, 0.8, 0.4, 0.55, 0.2, 0.9, 0.05])


def test_image_metrics_hand_computed():
    metrics = image_metrics(LABELS, SCORES, threshold=0.5)
    # 36 (fake, real) pairs: 0.9, 0.9 beat all 6 reals; 0.65, 0.55 beat 5 (not 0.8); each 0.4 beats 4 and
    # ties the real 0.4 (half) -> 12 + 10 + 9 = 31
    assert metrics["auroc"] == pytest.approx(31 / 36)
    # recall steps (precision there): 2/6 at 0.9 (2/2), 1/6 at 0.65 (3/4), 1/6 at 0.55 (4/5), 2/6 at the 0.4 tie
    # (6/8) -> 1/3 + 1/8 + 2/15 + 1/4
    assert metrics["ap"] == pytest.approx(101 / 120)
    # >= 0.5: fakes 0.9, 0.65, 0.55, 0.9 found (TP 4), the real 0.8 (FP 1), fakes 0.4, 0.4 missed (FN 2)
    assert metrics["f1"] == pytest.approx(8 / 11) and metrics["accuracy"] == pytest.approx(9 / 12)
    # at 0.4 every fake is found with the reals 0.8 and 0.4: TP 6, FP 2 -> 12 / 14, the best of all thresholds
    assert (metrics["best_f1"], metrics["best_f1_threshold"]) == (pytest.approx(6 / 7), 0.4)
    assert (metrics["n"], metrics["positives"], metrics["threshold"]) == (12, 6, 0.5)


def test_an_inverted_ranking_mirrors_auroc():
    assert image_metrics(LABELS, 1 - SCORES)["auroc"] == pytest.approx(5 / 36)


def test_one_class_leaves_ranking_metrics_undefined():
    only_fakes = image_metrics([1, 1, 1], [0.2, 0.7, 0.9])
    assert only_fakes["auroc"] is None and only_fakes["ap"] is None
    # decided 0, 1, 1: TP 2, FN 1
    assert (only_fakes["f1"], only_fakes["accuracy"]) == (pytest.approx(4 / 5), pytest.approx(2 / 3))
    assert (only_fakes["best_f1"], only_fakes["best_f1_threshold"]) == (1.0, 0.2)
    only_reals = image_metrics([0, 0], [0.2, 0.7])
    assert (only_reals["f1"], only_reals["accuracy"], only_reals["best_f1"]) == (0.0, 0.5, None)


def test_pixel_metrics_hand_computed_per_image_mean():
    masks = [np.array([[1, 1], [0, 0]]), np.array([[0, 0], [0, 1]])]
    probs = [np.array([[0.9, 0.4], [0.6, 0.1]]), np.array([[0.2, 0.3], [0.1, 0.7]])]
    metrics = pixel_metrics(probs, masks)
    # at 0.5: image 1 TP 1, FP 1, FN 1 (F1 1/2, IoU 1/3); image 2 exact (1, 1)
    assert metrics["pixel_images"] == 2
    assert (metrics["pixel_f1"], metrics["pixel_iou"]) == (pytest.approx(3 / 4), pytest.approx(2 / 3))
    # above 0.3 and up to 0.4: image 1 TP 2, FP 1 (F1 4/5, IoU 2/3), image 2 exact; 0.35 is the first such grid
    # point
    assert metrics["pixel_best_threshold"] == 0.35
    assert (metrics["pixel_best_f1"], metrics["pixel_best_iou"]) == (pytest.approx(9 / 10), pytest.approx(5 / 6))
    assert pixel_metrics([], [])["pixel_f1"] is None
