"""All five forgery modes and head pretraining, from their YAML recipes, through LLaMA-Factory and ms-swift
on the tiny Qwen2.5-VL: each run trains, writes adapters + head weights together, and its checkpoint loads
back for evaluation. Head pretraining runs first: T4/T5 load its head."""
import json
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor

from custom_modules.forgery.checkpoint import load_checkpoint
from custom_modules.forgery.data import read_rows
from custom_modules.forgery.evaluate import evaluate
from custom_modules.forgery.vit import lora_target_regex, lora_targets
from tools.synthetic_data import make_forgery

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes" / "forgery"
VARIANTS = ("head_pretrain", "t1_vit_lora_head", "t2_lm_supervised", "t3_hybrid", "t4_frozen_head",
            "t5_frozen_head_hybrid")
# the tiny ViT has 2 blocks: the 7B recipes' blocks 7/15/23/31 become 0/1 (and are validated against depth)
TINY_BLOCKS = (0, 1)
MODE_LORA = {"head_pretrain": (False, False), "t1_vit_lora_head": (True, False), "t2_lm_supervised": (False, True),
             "t3_hybrid": (True, True), "t4_frozen_head": (True, False), "t5_frozen_head_hybrid": (True, True)}


def run(command: list) -> str:
    result = subprocess.run([str(c) for c in command], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{command[:4]} failed:\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result.stdout + result.stderr


@pytest.fixture(scope="module")
def forgery_data(tmp_path_factory, lf_bin) -> tuple[Path, Path]:
    """(dataset dir from the converter CLI, a 4-row eval file holding both classes)."""
    root = tmp_path_factory.mktemp("forgery")
    source = make_forgery(root / "source", n=8, seed=3)
    data = root / "data"
    run([lf_bin / "python", "-m", "converters", "forgery", "--input", source, "--out", data, "--model", "qwen2_5_vl"])
    rows = (data / "forgery_train.jsonl").read_text().splitlines()
    eval_file = root / "eval.jsonl"
    eval_file.write_text("\n".join(rows[:4]) + "\n")
    assert {json.loads(r)["label"] for r in rows[:4]} == {0, 1}
    return data, eval_file


def block_overrides(variant: str, eval_file: Path, pretrained: Path | None) -> dict:
    values = {"eval_file": eval_file, "mask_size": 16, "head_dim": 32}
    if variant != "t2_lm_supervised":
        values["head_blocks"] = "[0, 1]"
    if variant == "head_pretrain":
        values["heatmap_start_step"] = 1  # the first step classification only, then + heatmap
    if pretrained is not None:
        values["head_checkpoint"] = pretrained
    return values


def assert_run_output(out: Path, checkpoint: Path, variant: str, base_model: Path, eval_file: Path,
                      python: Path) -> None:
    vit, lm = MODE_LORA[variant]
    assert (checkpoint / "forgery_head.safetensors").is_file() and (checkpoint / "forgery_settings.json").is_file()
    assert (checkpoint / "adapter_config.json").is_file() == (vit or lm)
    evals = [json.loads(line) for line in (out / "forgery_eval.jsonl").read_text().splitlines()]
    assert evals and evals[-1]["n"] == 4 and evals[-1]["auroc"] is not None
    assert (out / "best_by_AUROC" / "forgery_head.safetensors").is_file()
    # the saved checkpoint loads back for evaluation (base model + adapters + head): in process for every
    # mode, and through the evaluation CLI for the hybrid (adapters on ViT and LM, head, fusion)
    processor = AutoProcessor.from_pretrained(base_model)
    model, modules = load_checkpoint(AutoModelForImageTextToText.from_pretrained(base_model), checkpoint,
                                     processor.tokenizer)
    metrics, records = evaluate(model, modules, processor, read_rows(eval_file))
    assert metrics["n"] == 4 and len(records) == 4 and all(0.0 <= r["score"] <= 1.0 for r in records)
    assert modules.settings.mode == json.loads((checkpoint / "forgery_settings.json").read_text())["mode"]
    if variant == "t3_hybrid":
        report = out / "eval_report"
        run([python, "-m", "custom_modules.forgery.evaluate", "--model", base_model, "--checkpoint", checkpoint,
             "--data", eval_file, "--out", report, "--device", "cpu", "--dataset-limit", "3"])
        assert json.loads((report / "metrics.json").read_text())["n"] == 3
        assert len((report / "predictions.csv").read_text().splitlines()) == 4


def test_llamafactory_all_modes(tiny_model_dir, forgery_data, lf_bin, tmp_path):
    base_model, (data, eval_file) = tiny_model_dir("qwen2_5_vl"), forgery_data
    pretrained = None
    for variant in VARIANTS:
        out = tmp_path / variant
        vit, lm = MODE_LORA[variant]
        args = dict(model_name_or_path=base_model, dataset_dir=data, output_dir=out, bf16="false",
                    image_max_pixels=50176, image_min_pixels=3136, per_device_train_batch_size=2,
                    gradient_accumulation_steps=1, max_steps=2, save_steps=2, logging_steps=1,
                    preprocessing_num_workers=1, dataloader_num_workers=0)
        if vit or lm:
            args["lora_target"] = ",".join(lora_targets("qwen2_5_vl", TINY_BLOCKS if vit else (), lm))
        args.update({f"qwenvl_recipes.forgery.{k}": v
                     for k, v in block_overrides(variant, eval_file, pretrained).items()})
        # the hybrid runs under torchrun (2 CPU processes, DDP over gloo): the entry must work there too
        launcher = ["-m", "torch.distributed.run", "--nproc_per_node", "2"] if variant == "t3_hybrid" else []
        run([lf_bin / "python", *launcher, "-m", "custom_modules.integrations.llamafactory_entry",
             RECIPES / "llamafactory" / f"qwen2_5_vl_7b_{variant}.yaml"] + [f"{k}={v}" for k, v in args.items()])
        log = [json.loads(line) for line in (out / "trainer_log.jsonl").read_text().splitlines()]
        assert [entry["current_steps"] for entry in log if "loss" in entry] == [1, 2]
        assert all(torch.isfinite(torch.tensor([entry["loss"] for entry in log if "loss" in entry])))
        assert (out / "checkpoint-2" / "forgery_head.safetensors").is_file()
        assert_run_output(out, out, variant, base_model, eval_file, lf_bin / "python")
        if variant == "head_pretrain":
            pretrained = out


def test_swift_all_modes(tiny_model_dir, forgery_data, swift_bin, lf_bin, tmp_path):
    base_model, (data, eval_file) = tiny_model_dir("qwen2_5_vl"), forgery_data
    pretrained = None
    for variant in VARIANTS:
        out = tmp_path / variant
        vit, lm = MODE_LORA[variant]
        flags = dict(model=base_model, check_model="false", torch_dtype="float32",
                     dataset=data / "forgery_train.jsonl", output_dir=out, max_steps=2, save_steps=2,
                     logging_steps=1, per_device_train_batch_size=2, gradient_accumulation_steps=1,
                     dataset_num_proc=1, dataloader_num_workers=0, split_dataset_ratio=0)
        if vit or lm:
            flags["target_regex"] = lora_target_regex(lora_targets("qwen2_5_vl", TINY_BLOCKS if vit else (), lm))
        flags.update({f"qwenvl_recipes.forgery.{k}": v
                      for k, v in block_overrides(variant, eval_file, pretrained).items()})
        command = [swift_bin / "python", "-m", "custom_modules.integrations.swift_plugin", "sft",
                   RECIPES / "swift" / f"qwen2_5_vl_7b_{variant}.yaml"]
        for key, value in flags.items():
            command += [f"--{key}", value]
        run(command)
        log = [json.loads(line) for line in (out / "logging.jsonl").read_text().splitlines()]
        losses = [entry["loss"] for entry in log if "loss" in entry]
        assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
        assert_run_output(out, out / "checkpoint-2", variant, base_model, eval_file, lf_bin / "python")
        if variant == "head_pretrain":
            pretrained = out / "checkpoint-2"
