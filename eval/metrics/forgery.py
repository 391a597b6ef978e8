"""Forgery (image level): AUROC and AP from the probability of "fake", F1 and accuracy from the words, by the
same functions as the detection head's evaluation (custom_modules.forgery.metrics)."""
from __future__ import annotations

from custom_modules.forgery.metrics import decision_metrics, ranking_metrics


def forgery_metrics(labels: list[int], scores: list[float], answers: list[int | None]) -> dict:
    """labels: 1 fake / 0 real; scores: P(fake); answers: parsed label or None when the text said neither.

    An unparseable answer counts as wrong: it becomes the opposite of the true label for F1/accuracy.
    AUROC/AP are null when the references hold a single class (they are undefined then).
    """
    n = len(labels)
    if n == 0:
        raise ValueError("no forgery predictions to score")
    decided = [a if a is not None else 1 - y for a, y in zip(answers, labels)]
    return {**ranking_metrics(labels, scores), **decision_metrics(labels, decided),
            "parse_fail_rate": sum(a is None for a in answers) / n,
            "positives": sum(labels), "negatives": n - sum(labels)}
