"""`eval run` + `eval compare` end to end on the tiny random models and converter output of the synthetic
data: a handful of samples, few new tokens. Random weights answer garbage, which the failure kinds name."""
import json
import shutil

import pytest
from PIL import Image

from converters.__main__ import main as convert
from eval.__main__ import main as eval_main
from eval.compare import compare_runs
from eval.data import find_split_file, load_samples
from eval.infer import TransformersGenerator, load_resized
from eval.run import run_eval
from qwenvl_recipes.io import InputError, sha256_file
from tools import synthetic_data

SOURCES = {"caption": ("coco-caption", synthetic_data.make_coco_caption),
           "grounding": ("refcoco", synthetic_data.make_refcoco),
           "microscopy": ("microscopy", synthetic_data.make_microscopy),
           "forgery": ("forgery", synthetic_data.make_forgery)}
# Enough synthetic images for 3 caption val images.
SOURCE_SIZES = {"caption": 12}
# The synthetic forgery val split holds fakes only (AUROC needs both classes): score its train split.
SPLITS = {"forgery": "train"}
FAST = {"limit": 3, "batch_size": 2, "max_new_tokens": 6, "java_metrics": False}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """converted(task, family) -> converter output dir (LLaMA-Factory + swift files) of synthetic data."""
    root, made = tmp_path_factory.mktemp("eval_data"), {}

    def get(task: str, family: str):
        if (task, family) not in made:
            command, make = SOURCES[task]
            source = make(root / f"src_{task}", **({"n": SOURCE_SIZES[task]} if task in SOURCE_SIZES else {}))
            out = root / f"{family}_{task}"
            extra = ["--direction", "both"] if task == "grounding" else []
            assert convert([command, "--input", str(source), "--out", str(out), "--model", family, *extra]) == 0
            made[task, family] = out
        return made[task, family]
    return get


def save_lora(model_dir, out, seed: int = 0):
    """A LLaMA-Factory-style output dir `out` holding a peft LoRA with random (non-zero) B."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(model_dir)
    config = LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    torch.manual_seed(seed)
    get_peft_model(model, config).save_pretrained(out)
    (out / "trainer_log.jsonl").write_text("")  # LLaMA-Factory's mark: eval run then picks the .json file
    return out


@pytest.fixture(scope="module")
def adapter(tmp_path_factory, tiny_model_dir):
    """adapter(family) -> a LLaMA-Factory-style output dir holding a peft LoRA with random (non-zero) B."""
    made = {}

    def get(family: str):
        if family not in made:
            made[family] = save_lora(tiny_model_dir(family), tmp_path_factory.mktemp(f"lora_{family}"))
        return made[family]
    return get


@pytest.mark.parametrize("task, family", [("caption", "qwen2_vl"), ("grounding", "qwen2_5_vl"),
                                          ("microscopy", "qwen3_vl"), ("forgery", "qwen2_vl")])
def test_run_base_and_adapter_then_compare(task, family, converted, adapter, tiny_model_dir, tmp_path):
    model, data = tiny_model_dir(family), converted(task, family)
    split = SPLITS.get(task)
    base = run_eval(task, str(model), data, tmp_path / "base", split=split, **FAST)
    tuned = run_eval(task, str(model), data, tmp_path / "tuned", adapter=str(adapter(family)), split=split, **FAST)

    required = {"caption": {"bleu_4", "cider", "rouge_l"},
                "grounding": {"acc@0.5", "acc@0.75", "miou", "parse_fail_rate"},
                "microscopy": {"json_valid_rate", "direction_acc", "distance_mae", "exact_match"},
                "forgery": {"auroc", "ap", "f1", "accuracy"}}[task]
    for run_dir, metrics in ((tmp_path / "base", base), (tmp_path / "tuned", tuned)):
        on_disk = json.loads((run_dir / "metrics.json").read_text())
        assert required <= set(on_disk) and on_disk["n"] == 3 and on_disk == json.loads(json.dumps(metrics))
        lines = (run_dir / "predictions.jsonl").read_text().splitlines()
        assert len(lines) == 3
        # Every wrong answer is explained by a failure kind.
        samples = [json.loads(s) for s in (run_dir / "samples.jsonl").read_text().splitlines()]
        assert all(s["failure"] for s in samples if s["correct"] is False)
        assert sum(on_disk["failure_kinds"].values()) == sum(1 for s in samples if s["failure"])
    assert tuned["run"]["adapter"] == str(adapter(family))

    report = compare_runs(tmp_path / "base", tmp_path / "tuned", tmp_path / "report")
    text = report.read_text()
    assert text.startswith(f"# {task}: base vs tuned")
    assert "## Metrics" in text and "## Failure kinds" in text and "## Per-sample disagreements" in text
    pictures = ["metrics.png"] + (["boxes_0.png", "boxes_1.png", "boxes_2.png"] if task == "grounding" else [])
    for name in pictures:
        assert f"]({name})" in text
        with Image.open(tmp_path / "report" / name) as png:
            assert png.format == "PNG"


def test_grounding_convention_is_the_trainers(converted, tiny_model_dir, tmp_path):
    """qwen2_5_vl boxes are pixels of the resized image: the LLaMA-Factory file (.json) and the swift file
    (.jsonl) were rendered with different resizes, and each is read back (and fed) with its own."""
    model, data = tiny_model_dir("qwen2_5_vl"), converted("grounding", "qwen2_5_vl")
    for suffix, path in ((".json", "llamafactory"), (".jsonl", "swift")):
        metrics = run_eval("grounding", str(model), data / f"refcoco_val{suffix}", tmp_path / path, **FAST)
        assert f"by the {path} path" in metrics["convention"]["boxes"]
        assert metrics["convention"]["scored_in"] == "original-image pixels"
        assert metrics["left_out"].endswith("rows whose answer holds no box (REG: box -> phrase)")
        # The reference boxes come back where the synthetic source put them: inside the image.
        for sample in map(json.loads, (tmp_path / path / "samples.jsonl").read_text().splitlines()):
            width, height = sample["image_size"]
            x1, y1, x2, y2 = sample["ref_box"]
            assert 0 <= x1 < x2 <= width + 1 and 0 <= y1 < y2 <= height + 1


def test_batched_answers_and_forgery_score_match_one_by_one(converted, tiny_model_dir, tmp_path):
    """Left padding changes nothing, and the score is P(fake word) vs P(real word) at the first answer token."""
    model, data = tiny_model_dir("qwen2_5_vl"), converted("forgery", "qwen2_5_vl")
    settings = {"split": "train", "limit": 4, "max_new_tokens": 5, "java_metrics": False}
    run_eval("forgery", str(model), data, tmp_path / "b4", batch_size=4, **settings)
    run_eval("forgery", str(model), data, tmp_path / "b1", batch_size=1, **settings)
    batched, single = ([json.loads(line) for line in (tmp_path / b / "predictions.jsonl").read_text().splitlines()]
                       for b in ("b4", "b1"))
    assert len({tuple(r["image_size"]) for r in batched}) > 1  # images of different sizes: real padding
    assert [r["prediction"] for r in batched] == [r["prediction"] for r in single]
    assert [r["score"] for r in batched] == pytest.approx([r["score"] for r in single], abs=1e-4)

    import torch

    from converters.boxes import default_pixels
    from eval.parse import BoxConvention
    generator = TransformersGenerator(str(model), None, convention=BoxConvention(
        "qwen2_5_vl", *default_pixels("qwen2_5_vl"), "llamafactory"))
    sample = load_samples(find_split_file(data, "train"), "forgery")[0]
    inputs = generator.processor(text=[generator.prompt_text(sample)],
                                 images=[load_resized(sample.images[0], generator.convention)], return_tensors="pt")
    with torch.inference_mode():
        logits = generator.model(**inputs).logits[0, -1]
    fake_id, real_id = generator.first_token_id("fake"), generator.first_token_id("real")
    expected = torch.softmax(logits[[fake_id, real_id]], dim=-1)[0].item()
    assert batched[0]["score"] == pytest.approx(expected, abs=1e-4)


def test_interrupted_run_resumes(converted, tiny_model_dir, tmp_path, monkeypatch):
    model, data = tiny_model_dir("qwen2_vl"), converted("microscopy", "qwen2_vl")
    out = tmp_path / "run"
    run_eval("microscopy", str(model), data, out, limit=2, batch_size=1, max_new_tokens=4, java_metrics=False)
    predictions = out / "predictions.jsonl"
    first, second = predictions.read_text().splitlines()
    predictions.write_text(first + "\n" + second[: len(second) // 2])  # killed while writing line 2

    generated = []
    original = TransformersGenerator.generate
    monkeypatch.setattr(TransformersGenerator, "generate",
                        lambda self, batch, *a: generated.extend(s.id for s in batch) or original(self, batch, *a))
    metrics = run_eval("microscopy", str(model), data, out, limit=3, batch_size=1, max_new_tokens=4,
                       java_metrics=False)
    lines = predictions.read_text().splitlines()
    assert generated == [json.loads(second)["id"], json.loads(lines[2])["id"]]
    assert lines[:2] == [first, second] and metrics["n"] == 3

    with pytest.raises(ValueError, match="holds predictions of another run: max_new_tokens 4 -> 9; pass --overwrite"):
        run_eval("microscopy", str(model), data, out, limit=3, max_new_tokens=9, java_metrics=False)
    # a line that `eval run` did not write is named before any model loads
    predictions.write_text(predictions.read_text() + '{"prediction": "x"}\n')
    monkeypatch.setattr(TransformersGenerator, "__init__", lambda *a, **k: pytest.fail("a model was loaded"))
    with pytest.raises(InputError, match=r"predictions.jsonl:4: not a line `eval run` writes"):
        run_eval("microscopy", str(model), data, out, limit=3, batch_size=1, max_new_tokens=4, java_metrics=False)


def test_retrained_adapter_or_changed_data_is_named_then_overwritten(converted, tiny_model_dir, tmp_path, monkeypatch):
    """run.json holds the sha256 of the adapter weights and the data file: a rerun into the same --out after
    either changed is refused naming it (the old predictions are not reused); --overwrite evaluates again."""
    model, data = tiny_model_dir("qwen2_vl"), tmp_path / "data"
    shutil.copytree(converted("microscopy", "qwen2_vl"), data)
    lora, out = save_lora(model, tmp_path / "lora", seed=0), tmp_path / "run"
    settings = {"adapter": str(lora), "limit": 2, "batch_size": 2, "max_new_tokens": 4, "java_metrics": False}
    run_eval("microscopy", str(model), data, out, **settings)
    assert run_eval("microscopy", str(model), data, out, **settings)["n"] == 2  # unchanged: resumes, nothing to do

    old_weights = sha256_file(lora / "adapter_model.safetensors")
    save_lora(model, lora, seed=1)  # trained again into the same folder
    new_weights = sha256_file(lora / "adapter_model.safetensors")
    with pytest.raises(InputError, match=rf"run holds predictions of another run: checkpoint/adapter_model.safetensors "
                                         rf"changed \(sha256 {old_weights[:12]} -> {new_weights[:12]}\); pass "
                                         rf"--overwrite to discard them"):
        run_eval("microscopy", str(model), data, out, **settings)
    generated = []
    original = TransformersGenerator.generate
    monkeypatch.setattr(TransformersGenerator, "generate",
                        lambda self, batch, *a: generated.extend(s.id for s in batch) or original(self, batch, *a))
    metrics = run_eval("microscopy", str(model), data, out, overwrite=True, **settings)
    assert len(generated) == 2 and len((out / "predictions.jsonl").read_text().splitlines()) == 2
    assert metrics["run"]["sha256"]["checkpoint/adapter_model.safetensors"] == new_weights
    assert json.loads((out / "run.json").read_text()) == metrics["run"]

    rows = json.loads((data / "microscopy_val.json").read_text())
    rows[0]["messages"][-1]["content"] += " "  # an edited reference
    (data / "microscopy_val.json").write_text(json.dumps(rows))
    with pytest.raises(InputError, match=r"another run: data_file changed \(sha256 "):
        run_eval("microscopy", str(model), data, out, **settings)


def test_cli_run_and_compare(converted, tiny_model_dir, tmp_path, capsys):
    model, data = tiny_model_dir("qwen3_vl"), converted("grounding", "qwen3_vl")
    for name in ("a", "b"):
        assert eval_main(["run", "--task", "grounding", "--model", str(model), "--data", str(data), "--out",
                          str(tmp_path / name), "--limit", "2", "--max-new-tokens", "4"]) == 0
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["parse_fail_rate"] == 1.0
    assert eval_main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(tmp_path / "r")]) == 0
    assert "0 of 2 shared samples judged differently." in (tmp_path / "r" / "report.md").read_text()
    assert eval_main(["run", "--task", "caption", "--model", str(model), "--data", str(data), "--out",
                      str(tmp_path / "c")]) == 2
    assert "holds 'grounding' data (converter 'refcoco'), not 'caption' data" in capsys.readouterr().err
