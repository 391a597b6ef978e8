"""Both stages of the report recipes train through both trainers on tiny models, 2 steps each, from the YAML."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import yaml

from custom_modules.vision_encoder.training import load_trained
from tools.offline import offline_env
from tools.synthetic_data import make_coco_caption
from tools.tiny_dinov2 import ensure_tiny_dinov2

REPO_ROOT = Path(__file__).resolve().parents[2]
RECIPES = REPO_ROOT / "recipes" / "report"
TWO_STEPS = dict(max_steps=2, per_device_train_batch_size=2, gradient_accumulation_steps=1, warmup_ratio=0,
                 logging_steps=1)


@pytest.fixture(scope="module")
def report_data(tmp_path_factory):
    """Caption-shaped report data from the converters (sharegpt + swift jsonl) and the tiny encoder."""
    root = tmp_path_factory.mktemp("report")
    captions = make_coco_caption(root / "source", n=4, seed=0) / "captions_train2014.json"
    subprocess.run([sys.executable, "-m", "converters", "coco-caption", "--input", str(captions),
                    "--out", str(root / "data"), "--model", "qwen3_vl", "--name", "report", "--split", "train"],
                   check=True, cwd=REPO_ROOT, env=offline_env(), capture_output=True)
    return root / "data", ensure_tiny_dinov2(REPO_ROOT / ".cache" / "tiny-dinov2")


def run(command, **kwargs):
    result = subprocess.run([str(part) for part in command], cwd=REPO_ROOT, capture_output=True, text=True,
                            env=offline_env(PYTHONPATH=str(REPO_ROOT)), timeout=600, **kwargs)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result


def logged_losses(output_dir: Path, log_name: str) -> list[float]:
    rows = [json.loads(line) for line in (output_dir / log_name).read_text().splitlines()]
    return [row["loss"] for row in rows if "loss" in row]


def tensors_with(state: dict, marker: str) -> dict:
    return {name.split(marker, 1)[1]: value for name, value in state.items() if marker in name}


def assert_stage1_output(output_dir: Path, base_model: Path, encoder_dir: Path, full_model: Path):
    merger = load_file(str(output_dir / "vision_encoder" / "merger.safetensors"))
    assert set(merger) == {"norm.weight", "norm.bias", "proj.0.weight", "proj.0.bias", "proj.2.weight", "proj.2.bias"}
    steps = sorted(output_dir.glob("checkpoint-*/vision_encoder/merger.safetensors"))
    assert len(steps) == 2  # the merger trains: step 2's differs from step 1's
    first, second = (load_file(str(path)) for path in steps)
    assert not torch.equal(first["proj.2.weight"], second["proj.2.weight"])
    # The trainer's full-model save: the encoder and the LM come out exactly as they went in.
    saved = load_file(str(full_model))
    base = load_file(str(base_model / "model.safetensors"))
    for name, value in base.items():
        if ".visual." not in name:
            assert torch.equal(saved[name], value), name
    encoder = load_file(str(encoder_dir / "model.safetensors"))
    assert set(tensors_with(saved, "visual.encoder.")) == set(encoder)
    assert all(torch.equal(value, encoder[name]) for name, value in tensors_with(saved, "visual.encoder.").items())
    saved_merger = load_file(str(full_model.parent / "vision_encoder" / "merger.safetensors"))
    assert all(torch.equal(value, saved_merger[name]) for name, value in tensors_with(saved, "visual.merger.").items())


def assert_stage2_output(output_dir: Path, stage1_dir: Path, base_model: Path, encoder_lora: bool = False):
    adapter = load_file(str(output_dir / "adapter_model.safetensors"))
    lora = [name for name in adapter if "lora_" in name]
    assert bool([name for name in lora if ".visual.encoder." in name]) == encoder_lora
    assert {".language_model." in name or ".visual.encoder." in name for name in lora} == {True}
    assert not [name for name in adapter if "lora_" not in name and "visual.merger." not in name]
    merger = load_file(str(output_dir / "vision_encoder" / "merger.safetensors"))
    stage1_merger = load_file(str(stage1_dir / "vision_encoder" / "merger.safetensors"))
    assert not torch.equal(merger["proj.2.weight"], stage1_merger["proj.2.weight"])
    model, processor = load_trained(base_model, output_dir)
    reloaded = tensors_with(dict(model.named_parameters()), "visual.merger.modules_to_save.default.")
    assert all(torch.equal(value.detach(), merger[name]) for name, value in reloaded.items())


def lf_overrides(base_model, data_dir, encoder_dir, output_dir, **extra):
    values = dict(TWO_STEPS, model_name_or_path=base_model, dataset_dir=data_dir, output_dir=output_dir, bf16=False,
                  preprocessing_num_workers=1, **extra)
    values["qwenvl_recipes.vision_encoder.encoder_path"] = encoder_dir
    return [f"{key}={value}" for key, value in values.items()]


def test_llamafactory_stage1_then_stage2(tiny_model_dir, report_data, lf_bin, tmp_path):
    base_model, (data_dir, encoder_dir) = tiny_model_dir("qwen3_vl"), report_data
    entry = [lf_bin / "python", "-m", "custom_modules.integrations.llamafactory_entry"]
    stage1 = tmp_path / "stage1"
    run(entry + [RECIPES / "llamafactory" / "qwen3_vl_4b_raddino_stage1.yaml"]
        + lf_overrides(base_model, data_dir, encoder_dir, stage1, save_strategy="steps", save_steps=1))
    assert len(logged_losses(stage1, "trainer_log.jsonl")) == 2
    assert_stage1_output(stage1, base_model, encoder_dir, stage1 / "model.safetensors")

    stage2 = tmp_path / "stage2"  # with the encoder LoRA flag (the swift test runs the frozen encoder)
    section = {"merger_path": stage1 / "vision_encoder", "encoder_training": "lora"}
    run(entry + [RECIPES / "llamafactory" / "qwen3_vl_8b_raddino_stage2.yaml"]  # 4B -> 8B: base model only
        + lf_overrides(base_model, data_dir, encoder_dir, stage2, save_steps=2,
                       lora_target="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,query,value",
                       **{f"qwenvl_recipes.vision_encoder.{key}": value for key, value in section.items()}))
    assert len(logged_losses(stage2, "trainer_log.jsonl")) == 2
    assert_stage2_output(stage2, stage1, base_model, encoder_lora=True)


def swift_recipe(name, tmp_path, encoder_dir, **section):
    """The swift recipe with the tiny encoder (the launcher's flags reach swift only, not our section)."""
    recipe = yaml.safe_load((RECIPES / "swift" / f"{name}.yaml").read_text())
    recipe["qwenvl_recipes"]["vision_encoder"].update(encoder_path=str(encoder_dir), **section)
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def swift_flags(base_model, data_dir, output_dir, **extra):
    values = dict(TWO_STEPS, model=base_model, dataset=data_dir / "report_train.jsonl", output_dir=output_dir,
                  torch_dtype="float32", check_model=False, dataloader_num_workers=0, dataset_num_proc=1, **extra)
    return [part for key, value in values.items() for part in (f"--{key}", value)]


def test_swift_stage1_then_stage2(tiny_model_dir, report_data, swift_bin, tmp_path):
    base_model, (data_dir, encoder_dir) = tiny_model_dir("qwen3_vl"), report_data
    launcher = [swift_bin / "python", "-m", "custom_modules.integrations.swift_plugin", "sft"]
    stage1 = tmp_path / "stage1"
    run(launcher + [swift_recipe("qwen3_vl_4b_raddino_stage1", tmp_path, encoder_dir)]
        + swift_flags(base_model, data_dir, stage1, save_strategy="steps", save_steps=1, save_only_model=True))
    assert len(logged_losses(stage1, "logging.jsonl")) == 2
    assert_stage1_output(stage1, base_model, encoder_dir, stage1 / "checkpoint-2" / "model.safetensors")

    stage2 = tmp_path / "stage2"
    run(launcher + [swift_recipe("qwen3_vl_8b_raddino_stage2", tmp_path, encoder_dir,
                                 merger_path=str(stage1 / "vision_encoder"))]
        + swift_flags(base_model, data_dir, stage2, save_steps=2))
    assert len(logged_losses(stage2, "logging.jsonl")) == 2
    assert_stage2_output(stage2 / "last-checkpoint", stage1, base_model)  # swift keeps adapters in checkpoints
