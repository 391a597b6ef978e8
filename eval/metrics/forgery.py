"""Forgery (image level): AUROC and AP from the probability of "fake", F1 and accuracy from the words."""
from __future__ import annotations

from sklearn.metrics import accuracy_score, average_precision_score, f1_score, roc_auc_score


def forgery_metrics(labels: list[int], scores: list[float], answers: list[int | None]) -> dict:
    """labels: 1 fake / 0 real; scores: P(fake); answers: parsed label or None when the text said neither.

    An unparseable answer counts as wrong: it becomes the opposite of the true label for F1/accuracy.
    AUROC/AP are null when the references hold a single class (they are undefined then).
    """
    n = len(labels)
    if n == 0:
        raise ValueError("no forgery predictions to score")
    decided = [a if a is not None else 1 - y for a, y in zip(answers, labels)]
    both_classes = len(set(labels)) == 2
    return {
        "auroc": float(roc_auc_score(labels, scores)) if both_classes else None,
        "ap": float(average_precision_score(labels, scores)) if both_classes else None,
        "f1": float(f1_score(labels, decided, pos_label=1, zero_division=0.0)),
        "accuracy": float(accuracy_score(labels, decided)),
        "parse_fail_rate": sum(a is None for a in answers) / n,
        "positives": sum(labels),
        "negatives": n - sum(labels),
    }
