"""`python -m eval score`: metrics.json from predictions files, with known values for every task."""
import json

import pytest

from converters.boxes import render_grounding
from converters.schema import Box
from eval.__main__ import main


def _score(tmp_path, task, family, rows, *extra):
    predictions = tmp_path / "predictions.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    code = main(["score", "--task", task, "--model-family", family, "--predictions", str(predictions),
                 "--out", str(tmp_path / "out"), "--no-java-metrics", *extra])
    assert code == 0
    samples = [json.loads(line) for line in (tmp_path / "out" / "samples.jsonl").read_text().splitlines()]
    return json.loads((tmp_path / "out" / "metrics.json").read_text()), samples


def test_caption(tmp_path):
    metrics, samples = _score(tmp_path, "caption", "qwen2_vl", [
        {"id": "1", "prediction": "a c", "reference": "a b"},
        {"id": "2", "prediction": "c d", "reference": ["c d"]},
    ])
    assert metrics["cider"] == pytest.approx(3.125)  # hand-computed in test_eval_caption.py
    assert {"bleu_4", "rouge_l", "task", "n", "convention"} <= set(metrics)
    assert metrics["n"] == 2 and "meteor" not in metrics
    assert [s["cider"] for s in samples] == pytest.approx([1.25, 5.0])


def test_grounding_qwen2_5_vl_in_original_pixels(tmp_path):
    size = [640, 427]  # resized to 532x364 by max_pixels 200704 on the hf path
    reference = render_grounding("dog", Box(0, 0, 320, 213.5), tuple(size), "qwen2_5_vl", min_pixels=3136,
                                 max_pixels=200704)
    rows = [{"id": "exact", "prediction": '{"bbox_2d": [0, 0, 266, 182]}'},
            {"id": "half", "prediction": '```json\n[{"bbox_2d": [0, 0, 133, 182], "label": "dog"}]\n```'},
            {"id": "none", "prediction": "a dog"},
            {"id": "outside", "prediction": '{"bbox_2d": [500, 0, 700, 100]}'}]
    metrics, samples = _score(tmp_path, "grounding", "qwen2_5_vl",
                              [{**r, "reference": reference, "image_size": size} for r in rows],
                              "--min-pixels", "3136", "--max-pixels", "200704")
    assert {k: metrics[k] for k in ("acc@0.5", "acc@0.75", "miou", "parse_fail_rate")} == pytest.approx(
        {"acc@0.5": 0.5, "acc@0.75": 0.25, "miou": 1.5 / 4, "parse_fail_rate": 0.25})
    assert metrics["failure_kinds"] == {"no box in the answer": 1, "box outside the image": 1}
    assert metrics["convention"]["scored_in"] == "original-image pixels"
    assert "max_pixels 200704" in metrics["convention"]["boxes"]
    assert samples[1]["pred_box"] == pytest.approx([0, 0, 160, 213.5], abs=0.5)


def test_grounding_without_sizes_scores_relative_boxes_in_their_units(tmp_path):
    reference = "<|object_ref_start|>dog<|object_ref_end|><|box_start|>(0,0),(500,500)<|box_end|>"
    metrics, _ = _score(tmp_path, "grounding", "qwen2_vl", [
        {"prediction": "<|box_start|>(0,0),(250,500)<|box_end|>", "reference": reference},
        {"prediction": "(0,0),(500,500)", "reference": reference},
    ])
    assert metrics["miou"] == pytest.approx(0.75)
    assert metrics["convention"]["scored_in"] == "the model's 0..1000 units (no image_size given)"


def test_grounding_qwen2_5_vl_needs_sizes(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"prediction": "x", "reference": '{"bbox_2d": [1, 2, 3, 4]}'}) + "\n")
    assert main(["score", "--task", "grounding", "--model-family", "qwen2_5_vl", "--predictions",
                 str(predictions), "--out", str(tmp_path / "o")]) == 2
    assert "need image_size" in capsys.readouterr().err


def test_microscopy(tmp_path):
    ref = lambda d, n: json.dumps({"analysis": "blur", "direction": d, "distance": n})
    metrics, samples = _score(tmp_path, "microscopy", "qwen2_5_vl", [
        {"prediction": '```json\n{"direction": "+", "distance": 2}\n```', "reference": ref("+", 2)},
        {"prediction": '{"direction": "+", "distance": 4}', "reference": ref("-", 1)},
        {"prediction": "move up two steps", "reference": ref("+", 2)},
        {"prediction": '{"analysis": "sharp"}', "reference": ref("+", 2)},
    ])
    assert {k: metrics[k] for k in ("json_valid_rate", "direction_acc", "distance_mae", "exact_match")} == \
        pytest.approx({"json_valid_rate": 0.75, "direction_acc": 0.25, "distance_mae": 1.5, "exact_match": 0.25})
    assert metrics["failure_kinds"] == {"wrong direction": 1, "invalid JSON": 1,
                                        "missing keys: direction, distance": 1}
    assert [s["correct"] for s in samples] == [True, False, False, False]


def test_forgery_with_lm_scores(tmp_path):
    metrics, _ = _score(tmp_path, "forgery", "qwen3_vl", [
        {"prediction": "real", "reference": "real", "score": 0.1},
        {"prediction": "fake", "reference": "real", "score": 0.4},
        {"prediction": "hmm", "reference": "fake", "score": 0.35},
        {"prediction": "Fake.", "reference": "fake", "score": 0.8},
    ])
    assert {k: metrics[k] for k in ("auroc", "ap", "f1", "accuracy")} == pytest.approx(
        {"auroc": 0.75, "ap": 5 / 6, "f1": 0.5, "accuracy": 0.5})
    assert metrics["convention"]["score_source"].startswith("probability of the fake word")
    assert metrics["failure_kinds"] == {"said fake for a real image": 1, "no real/fake word": 1}


def test_forgery_scores_from_words_when_no_probability(tmp_path):
    metrics, _ = _score(tmp_path, "forgery", "qwen2_vl", [
        {"prediction": "authentic", "reference": "authentic"},
        {"prediction": "tampered", "reference": "tampered"},
        {"prediction": "??", "reference": "tampered"},
    ], "--real-word", "authentic", "--fake-word", "tampered")
    # scores 0, 1, 0.5 against labels 0, 1, 1: every fake outranks the real image.
    assert metrics["auroc"] == pytest.approx(1.0)
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["convention"]["score_source"].startswith("answer text")


def test_bad_lines_are_named(tmp_path, capsys):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text(json.dumps({"prediction": "x", "reference": "real"}) + "\n"
                           + json.dumps({"prediction": "x"}) + "\n")
    assert main(["score", "--task", "forgery", "--model-family", "qwen2_vl", "--predictions", str(predictions),
                 "--out", str(tmp_path / "o")]) == 2
    assert "line 2: missing field 'reference'" in capsys.readouterr().err
