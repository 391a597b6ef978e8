"""eval's choice of data file per trainer, forgery head checkpoints, and the checks on predictions files
(no model is loaded: every case is decided before)."""
import json

import pytest

from converters.__main__ import main as convert
from eval.__main__ import main
from eval.data import adapter_trainer, choose_data_file
from eval.run import run_eval
from tools.synthetic_data import make_forgery, make_refcoco


def _adapter(path):
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text("{}")
    return path


@pytest.fixture
def grounding(tmp_path):
    out = tmp_path / "data"
    assert convert(["refcoco", "--input", str(make_refcoco(tmp_path / "refer", n=6, seed=1)), "--out", str(out)]) == 0
    return out


def test_swift_adapter_gets_the_jsonl_and_llamafactory_the_json(grounding, tmp_path):
    swift = tmp_path / "output"
    checkpoint = _adapter(swift / "v0-20260101-000000" / "checkpoint-10")
    (swift / "v0-20260101-000000" / "args.json").write_text("{}")
    assert adapter_trainer(swift, checkpoint) == ("swift", swift / "v0-20260101-000000" / "args.json")
    assert choose_data_file(grounding, None, swift, checkpoint) == grounding / "refcoco_val.jsonl"

    llamafactory = _adapter(tmp_path / "saves" / "lora")
    (llamafactory / "trainer_log.jsonl").write_text("")
    assert choose_data_file(grounding, None, llamafactory, llamafactory) == grounding / "refcoco_val.json"
    assert choose_data_file(grounding, "train", None) == grounding / "refcoco_train.json"  # base model
    lf_checkpoint = _adapter(llamafactory / "checkpoint-5")  # its trainer_log.jsonl is one folder up
    assert adapter_trainer(lf_checkpoint, lf_checkpoint) == ("llamafactory", llamafactory / "trainer_log.jsonl")

    with pytest.raises(ValueError, match=r"trained with ms-swift \(args.json in .*\), but --data .*refcoco_val.json "
                                         r"is the file of the other trainer; pass --data .*refcoco_val.jsonl"):
        choose_data_file(grounding / "refcoco_val.json", None, swift, checkpoint)


def test_adapter_of_unknown_trainer_is_refused_naming_both_files(grounding, tmp_path):
    bare = _adapter(tmp_path / "lora")
    with pytest.raises(ValueError, match="cannot tell which trainer wrote --adapter") as info:
        choose_data_file(grounding, None, bare, bare)
    assert f"--data {grounding / 'refcoco_val.json'} (LLaMA-Factory)" in str(info.value)
    assert f"--data {grounding / 'refcoco_val.jsonl'} (ms-swift)" in str(info.value)
    # One file only: nothing to choose between.
    swift_only = tmp_path / "swift_only"
    assert convert(["refcoco", "--input", str(tmp_path / "refer"), "--out", str(swift_only), "--target", "swift"]) == 0
    assert choose_data_file(swift_only, None, bare, bare) == swift_only / "refcoco_val.jsonl"


def test_cli_refuses_before_loading_a_model(grounding, tmp_path, capsys):
    bare = _adapter(tmp_path / "lora")
    assert main(["run", "--task", "grounding", "--model", str(tmp_path / "no-model"), "--adapter", str(bare),
                 "--data", str(grounding), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot tell which trainer wrote --adapter") and "Traceback" not in err


def test_forgery_head_checkpoint_needs_the_transformers_backend(tmp_path):
    data = tmp_path / "data"
    assert convert(["forgery", "--input", str(make_forgery(tmp_path / "src", n=8)), "--out", str(data)]) == 0
    checkpoint = _adapter(tmp_path / "forgery_ckpt")
    (checkpoint / "forgery_head.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match="holds a forgery head .forgery_head.safetensors., which only the "
                                         "transformers backend runs"):
        run_eval("forgery", str(tmp_path / "no-model"), data, tmp_path / "run", adapter=str(checkpoint),
                 backend="vllm")


def _score(tmp_path, task, family, rows):
    predictions = tmp_path / "p.jsonl"
    predictions.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return main(["score", "--task", task, "--model-family", family, "--predictions", str(predictions),
                 "--out", str(tmp_path / "o"), "--no-java-metrics"])


BOX = '{"bbox_2d": [1, 2, 30, 40]}'


@pytest.mark.parametrize("task, family, bad, message", [
    ("grounding", "qwen2_5_vl", {"image_size": [0, 0]}, "'image_size' must be [width, height] of positive integers"),
    ("grounding", "qwen2_5_vl", {"image_size": [640]}, "'image_size' must be [width, height]"),
    ("grounding", "qwen3_vl", {"image_size": [True, 480]}, "'image_size' must be [width, height]"),
    ("forgery", "qwen2_vl", {"label": 2}, "'label' must be 0 (real) or 1 (fake), got 2"),
    ("forgery", "qwen2_vl", {"label": True}, "'label' must be 0 (real) or 1 (fake), got True"),
    ("forgery", "qwen2_vl", {"score": 1.5}, "'score' must be P(fake), a number in [0, 1], got 1.5"),
    ("forgery", "qwen2_vl", {"score": float("nan")}, "'score' must be P(fake), a number in [0, 1], got nan"),
])
def test_score_names_the_bad_line_and_field(tmp_path, capsys, task, family, bad, message):
    good = {"prediction": BOX, "reference": BOX, "image_size": [640, 480]} if task == "grounding" else \
        {"prediction": "fake", "reference": "fake", "label": 1, "score": 0.9}
    assert _score(tmp_path, task, family, [good, good | bad]) == 2
    err = capsys.readouterr().err
    assert f"p.jsonl, line 2: {message}" in err and "Traceback" not in err


def test_metrics_json_holds_null_not_nan(tmp_path):
    reference = json.dumps({"analysis": "", "direction": "+", "distance": 2})
    assert _score(tmp_path, "microscopy", "qwen2_vl", [
        {"prediction": '{"direction": "+", "distance": NaN}', "reference": reference}]) == 0
    text = (tmp_path / "o" / "metrics.json").read_text()
    metrics = json.loads(text, parse_constant=lambda name: pytest.fail(f"metrics.json holds {name}"))
    assert metrics["distance_mae"] is None
    for line in (tmp_path / "o" / "samples.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=lambda name: pytest.fail(f"samples.jsonl holds {name}"))
