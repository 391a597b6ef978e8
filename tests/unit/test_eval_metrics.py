"""Grounding, microscopy and forgery metrics against hand-computed values."""
import pytest

from converters.schema import Box
from eval.metrics.forgery import forgery_metrics
from eval.metrics.grounding import grounding_failure, grounding_metrics, iou
from eval.metrics.microscopy import judge_move, microscopy_metrics, reference_move
from eval.parse import parse_json_answer


@pytest.mark.parametrize("a, b, expected", [
    (Box(0, 0, 10, 10), Box(0, 0, 10, 10), 1.0),
    (Box(0, 0, 10, 10), Box(5, 5, 15, 15), 25 / 175),
    (Box(0, 0, 10, 10), Box(0, 0, 10, 5), 0.5),
    (Box(0, 0, 10, 10), Box(20, 20, 30, 30), 0.0),
    (Box(0, 0, 10, 10), Box(5, 5, 5, 8), 0.0),    # zero width
    (Box(0, 0, 10, 10), Box(8, 8, 2, 2), 0.0),    # inverted
])
def test_iou(a, b, expected):
    assert iou(a, b) == pytest.approx(expected)
    assert iou(b, a) == pytest.approx(expected)


def test_grounding_rates_count_unparsed_answers_as_iou_zero():
    metrics = grounding_metrics([1.0, 0.6, 0.0, 0.2], [True, True, False, True])
    assert metrics == pytest.approx({"acc@0.5": 0.5, "acc@0.75": 0.25, "miou": 1.8 / 4, "parse_fail_rate": 0.25})


@pytest.mark.parametrize("text, kind", [
    ("  \n", "empty answer"),
    ('```json\n[{"bbox_2d": [2, 10], "label": "dog"}]', "malformed box (marker without 4 numbers)"),
    ("<|box_start|>(1,2)<|box_end|>", "malformed box (marker without 4 numbers)"),
    ("a dog", "no box in the answer"),
])
def test_grounding_failure_without_a_box(text, kind):
    assert grounding_failure(text, [], Box(10, 10, 50, 50), (100, 80)) == kind


@pytest.mark.parametrize("predicted, kind", [
    ([Box(50, 50, 40, 60)], "degenerate box (x2<=x1 or y2<=y1)"),
    ([Box(10, 10, 120, 50)], "box outside the image"),
    ([Box(-5, 10, 40, 50)], "box outside the image"),
    ([Box(60, 40, 90, 70)], "IoU < 0.5"),
    ([Box(10.5, 10, 50.8, 50), Box(0, 0, 1, 1)], None),
    ([Box(10, 10, 100.5, 50)], "IoU < 0.5"),  # inside within the 1 px rounding slack, but wrong
])
def test_grounding_failure_kinds(predicted, kind):
    assert grounding_failure("answer", predicted, Box(10, 10, 50, 50), (100, 80)) == kind


def _judge(prediction: str, reference: str = '{"analysis": "x", "direction": "+", "distance": 3}'):
    direction, distance = reference_move(parse_json_answer(reference), "test")
    return judge_move(parse_json_answer(prediction), direction, distance)


@pytest.mark.parametrize("prediction, failure, direction_ok, distance, exact", [
    ('{"direction": "+", "distance": 3}', None, True, 3.0, True),
    ('```json\n{"analysis": "a", "direction": "+", "distance": "3"}\n```', None, True, 3.0, True),
    ('{"direction": "-", "distance": 3}', "wrong direction", False, 3.0, False),
    ('{"direction": "+", "distance": 5}', "distance off", True, 5.0, False),
    ('{"direction": "+", "distance": "far"}', "distance not a number", True, None, False),
    ('{"direction": "+"}', "missing keys: distance", True, None, False),
    ('{"analysis": "blurry"}', "missing keys: direction, distance", False, None, False),
    ('{"direction": "+", "distance": 3', "invalid JSON", False, None, False),
    ("", "empty answer", False, None, False),
])
def test_microscopy_judgement(prediction, failure, direction_ok, distance, exact):
    assert _judge(prediction) == {"failure": failure, "direction_ok": direction_ok, "distance": distance,
                                  "exact": exact}


def test_microscopy_reference_must_be_valid():
    with pytest.raises(ValueError, match="record 7: reference answer is not a JSON object"):
        reference_move(parse_json_answer("up 3"), "record 7")
    with pytest.raises(ValueError, match="needs 'direction' and numeric 'distance'"):
        reference_move(parse_json_answer('{"direction": "+"}'), "record 7")


def test_microscopy_metrics_hand_computed():
    judged = [_judge('{"direction": "+", "distance": 3}'),           # exact
              _judge('{"direction": "+", "distance": 5}'),           # |5-3| = 2
              _judge('{"direction": "-", "distance": 1}'),           # |1-3| = 2, wrong direction
              _judge("not json")]                                    # no distance
    metrics = microscopy_metrics(judged, [3, 3, 3, 3], [True, True, True, False])
    assert metrics == pytest.approx({"json_valid_rate": 0.75, "direction_acc": 0.5, "distance_mae": 4 / 3,
                                     "distance_mae_n": 3, "exact_match": 0.25})


def test_microscopy_mae_is_null_without_any_distance():
    metrics = microscopy_metrics([_judge("?")], [3], [False])
    assert metrics["distance_mae"] is None and metrics["distance_mae_n"] == 0


def test_forgery_metrics_hand_computed():
    # scikit-learn's own example scores: AUROC 0.75, AP 0.8333. Answers: the third (fake) said neither word,
    # which counts as wrong -> TP 1, FP 1, FN 1: F1 0.5; accuracy 2/4.
    metrics = forgery_metrics([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8], [0, 1, None, 1])
    assert metrics == pytest.approx({"auroc": 0.75, "ap": 5 / 6, "f1": 0.5, "accuracy": 0.5,
                                     "parse_fail_rate": 0.25, "positives": 2, "negatives": 2})


def test_forgery_auroc_undefined_with_one_class():
    metrics = forgery_metrics([1, 1], [0.2, 0.9], [1, None])
    assert metrics["auroc"] is None and metrics["ap"] is None
    assert metrics["accuracy"] == 0.5
