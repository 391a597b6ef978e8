"""Microscopy focusing answers: JSON {"analysis": ..., "direction": "+|-", "distance": N}."""
from __future__ import annotations

from eval.parse import JsonAnswer

REQUIRED_KEYS = ("direction", "distance")


def _number(value) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            return None
    return None


def reference_move(answer: JsonAnswer, where: str) -> tuple[str, float]:
    """(direction, distance) of a dataset answer; a clear error when the dataset itself is malformed."""
    if answer.error:
        raise ValueError(f"{where}: reference answer is not a JSON object ({answer.error})")
    missing = [k for k in REQUIRED_KEYS if k not in answer.value]
    distance = _number(answer.value.get("distance"))
    if missing or distance is None:
        raise ValueError(f"{where}: reference answer needs 'direction' and numeric 'distance', got {answer.value}")
    return str(answer.value["direction"]).strip(), distance


def judge_move(answer: JsonAnswer, ref_direction: str, ref_distance: float) -> dict:
    """Per-sample fields: direction_ok, distance (or None), exact, failure kind."""
    if answer.error:
        return {"direction_ok": False, "distance": None, "exact": False,
                "failure": "invalid JSON" if answer.error == "invalid JSON" else answer.error}
    missing = [k for k in REQUIRED_KEYS if k not in answer.value]
    distance = _number(answer.value.get("distance"))
    direction_ok = str(answer.value.get("direction", "")).strip() == ref_direction
    exact = direction_ok and distance == ref_distance
    if missing:
        failure = "missing keys: " + ", ".join(missing)
    elif not direction_ok:
        failure = "wrong direction"
    elif distance is None:
        failure = "distance not a number"
    elif distance != ref_distance:
        failure = "distance off"
    else:
        failure = None
    return {"direction_ok": direction_ok, "distance": distance, "exact": exact, "failure": failure}


def microscopy_metrics(judged: list[dict], ref_distances: list[float], json_valid: list[bool]) -> dict:
    n = len(judged)
    if n == 0:
        raise ValueError("no microscopy predictions to score")
    errors = [abs(j["distance"] - r) for j, r in zip(judged, ref_distances) if j["distance"] is not None]
    return {
        "json_valid_rate": sum(json_valid) / n,
        "direction_acc": sum(j["direction_ok"] for j in judged) / n,
        # Over the answers that carry a numeric distance (distance_mae_n of them); null when none do.
        "distance_mae": sum(errors) / len(errors) if errors else None,
        "distance_mae_n": len(errors),
        "exact_match": sum(j["exact"] for j in judged) / n,
    }
