"""`eval compare` on two scored runs: tables, failure kinds, disagreements, pictures."""
import json
import re

import pytest
from PIL import Image

from eval.__main__ import main
from eval.compare import compare_runs
from eval.score import score_predictions


def _run(tmp_path, name, task, family, rows, **settings):
    predictions = tmp_path / f"{name}.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    score_predictions(task, family, predictions, tmp_path / name, java_metrics=False, **settings)
    return tmp_path / name


def test_grounding_report(tmp_path):
    image = tmp_path / "img.png"
    Image.new("RGB", (200, 100), "gray").save(image)
    reference = "<|object_ref_start|>box<|object_ref_end|><|box_start|>(100,100),(500,800)<|box_end|>"
    common = {"reference": reference, "image_size": [200, 100], "images": [str(image)]}
    base = _run(tmp_path, "base", "grounding", "qwen2_vl", [
        {"id": "a", "prediction": "I see a box", **common},
        {"id": "b", "prediction": "<|box_start|>(600,0),(1300,500)<|box_end|>", **common},
        {"id": "c", "prediction": "<|box_start|>(100,100),(500,800)<|box_end|>", **common}])
    tuned = _run(tmp_path, "tuned", "grounding", "qwen2_vl", [
        {"id": "a", "prediction": "<|box_start|>(100,100),(500,800)<|box_end|>", **common},
        {"id": "b", "prediction": "<|box_start|>(120,100),(500,790)<|box_end|>", **common},
        {"id": "c", "prediction": "<|box_start|>(100,100),(500,800)<|box_end|>", **common}])

    report = compare_runs(base, tuned, tmp_path / "report")
    text = report.read_text()
    assert "| acc@0.5 | 0.3333 | 1.0000 | 0.6667 ↑ |" in text
    assert "| parse_fail_rate (lower is better) | 0.3333 | 0.0000 | -0.3333 ↑ |" in text
    assert "| no box in the answer | 1 (33%) | 0 (0%) | I see a box | — |" in text
    assert "| box outside the image | 1 (33%) | 0 (0%) | &lt;\\|box_start\\|>(600,0),(1300,500)&lt;\\|box_end\\|> | — |" in text
    assert "2 of 3 shared samples judged differently." in text
    assert "&lt;\\|box_start\\|>(600,0),(1300,500)&lt;\\|box_end\\|>" in text  # escaped for markdown tables
    assert "scored_in: original-image pixels" in text
    for name in ("metrics.png", "boxes_0.png", "boxes_1.png", "boxes_2.png"):
        assert f"]({name})" in text
        with Image.open(tmp_path / "report" / name) as png:
            assert png.format == "PNG" and png.width >= 200


def test_caption_disagreements_sorted_by_cider_gap(tmp_path):
    refs = {"1": "a red circle", "2": "a blue square", "3": "a green triangle"}
    base = _run(tmp_path, "base", "caption", "qwen3_vl",
                [{"id": i, "prediction": "", "reference": r} for i, r in refs.items()])
    tuned = _run(tmp_path, "tuned", "caption", "qwen3_vl",
                 [{"id": "1", "prediction": "a red circle", "reference": refs["1"]},
                  {"id": "2", "prediction": "a blue", "reference": refs["2"]},
                  {"id": "3", "prediction": "", "reference": refs["3"]}])
    text = compare_runs(base, tuned, tmp_path / "report", names=("base", "tuned")).read_text()
    rows = [line for line in text.splitlines() if line.startswith(("| 1 ", "| 2 "))]
    assert [r.split(" | ")[0] for r in rows] == ["| 1", "| 2"]  # largest CIDEr gap first
    assert "| empty answer | 3 (100%) | 1 (33%) |  |  |" in text
    metric_rows = [line.split(" | ")[0] for line in text.splitlines() if line.startswith("| exact_match ")]
    assert metric_rows == ["| exact_match"]  # the caption judge is in the metrics table


def test_compare_refuses_different_tasks(tmp_path):
    a = _run(tmp_path, "a", "forgery", "qwen2_vl", [{"prediction": "real", "reference": "real"}])
    b = _run(tmp_path, "b", "caption", "qwen2_vl", [{"prediction": "x", "reference": "y"}])
    with pytest.raises(ValueError, match=rf"cannot compare a forgery run with a caption run \({a} and {b} score "
                                         r"different tasks\)"):
        compare_runs(a, b, tmp_path / "r")


def _forgery(tmp_path, name, ids):
    return _run(tmp_path, name, "forgery", "qwen2_vl",
                [{"id": i, "prediction": "fake", "reference": "fake" if n % 2 else "real"} for n, i in enumerate(ids)])


def test_runs_over_different_samples_are_warned_and_disjoint_ones_get_no_difference(tmp_path, capsys):
    a, disjoint = _forgery(tmp_path, "a", ["1", "2"]), _forgery(tmp_path, "b", ["3", "4"])
    text = compare_runs(a, disjoint, tmp_path / "r1").read_text()
    warning = "a and b share no sample (2 and 2 ids): their metrics are over different data, so no difference is given"
    assert capsys.readouterr().err == f"warning: {warning}\n"
    assert f"**Warning**: {warning}." in text
    assert "| metric | a | b |\n|---|---|---|\n| auroc | 0.5000 | 0.5000 |" in text and "Δ" not in text

    partial = _forgery(tmp_path, "c", ["2", "3"])
    text = compare_runs(a, partial, tmp_path / "r2").read_text()
    warning = "1 samples of a and 1 of c are in one run only (1 shared): the metrics are over different samples"
    assert capsys.readouterr().err == f"warning: {warning}\n"
    assert f"**Warning**: {warning}." in text and "| auroc | 0.5000 | 0.5000 | 0.0000 |" in text

    compare_runs(a, _forgery(tmp_path, "d", ["1", "2"]), tmp_path / "r3")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("file, content, message", [
    ("metrics.json", "[1]", r"a/metrics.json: expected eval metrics with a top-level dict, got list"),
    ("metrics.json", '{"n": 1, "failure_kinds": {}}', r"a/metrics.json: 'task' must be one of caption, grounding, "
                                                       r"microscopy, forgery, got None"),
    ("samples.jsonl", '{"id": "1", "correct": true}\n', r"a/samples.jsonl:1: missing field 'failure'"),
    ("samples.jsonl", '{"id": "1", "correct": true, "failure": null}\n{"id": "1", "correct": true, "failure": null}\n',
     r"a/samples.jsonl:2: duplicate id '1'"),
])
def test_run_dirs_not_written_by_eval_are_named(tmp_path, capsys, file, content, message):
    a = _forgery(tmp_path, "a", ["1"])
    (a / file).write_text(content)
    assert main(["compare", str(a), str(_forgery(tmp_path, "b", ["1"])), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"error: .*{message}.*\n", err), err
