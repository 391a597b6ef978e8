"""Grounding: IoU of the first predicted box against the reference box, in original-image pixels.

An answer without a parseable box counts as IoU 0 (it is in the denominator of every rate)."""
from __future__ import annotations

from converters.schema import Box

# Slack for rounding: a box this many pixels past the border is still "inside".
OUTSIDE_TOLERANCE_PX = 1.0


def iou(a: Box, b: Box) -> float:
    """Intersection over union of two xyxy boxes; 0 for degenerate (zero or negative area) boxes."""
    ix = max(0.0, min(a.x2, b.x2) - max(a.x1, b.x1))
    iy = max(0.0, min(a.y2, b.y2) - max(a.y1, b.y1))
    inter = ix * iy
    area_a = max(0.0, a.x2 - a.x1) * max(0.0, a.y2 - a.y1)
    area_b = max(0.0, b.x2 - b.x1) * max(0.0, b.y2 - b.y1)
    union = area_a + area_b - inter
    return inter / union if union > 0 else 0.0


# Markers of an attempted box in either family form (the answer tried the format but broke it).
BOX_MARKERS = ("bbox_2d", "<|box_start|>")


def grounding_failure(text: str, predicted: list[Box], reference: Box, image_size: tuple[int, int]) -> str | None:
    """Why the first predicted box misses (None when IoU >= 0.5)."""
    if not predicted:
        if not text.strip():
            return "empty answer"
        if any(marker in text for marker in BOX_MARKERS):
            return "malformed box (marker without 4 numbers)"
        return "no box in the answer"
    box = predicted[0]
    if box.x2 <= box.x1 or box.y2 <= box.y1:
        return "degenerate box (x2<=x1 or y2<=y1)"
    width, height = image_size
    t = OUTSIDE_TOLERANCE_PX
    if box.x1 < -t or box.y1 < -t or box.x2 > width + t or box.y2 > height + t:
        return "box outside the image"
    if iou(box, reference) < 0.5:
        return "IoU < 0.5"
    return None


def grounding_metrics(ious: list[float], parsed: list[bool]) -> dict[str, float]:
    n = len(ious)
    if n == 0:
        raise ValueError("no grounding predictions to score")
    return {
        "acc@0.5": sum(v >= 0.5 for v in ious) / n,
        "acc@0.75": sum(v >= 0.75 for v in ious) / n,
        "miou": sum(ious) / n,
        "parse_fail_rate": sum(not p for p in parsed) / n,
    }
