"""A run killed after its first checkpoint and resumed ends with every trained tensor equal to an uninterrupted
run's: forgery T1 and T3 and vision-encoder stage 2 (merger, encoder LoRA, LM LoRA), through both trainers, by the
recipes' Run lines on the tiny models (test_recipe_run_lines' overrides, one process, no worker pools).

Each run takes two optimizer steps of one batch and saves after each, so checkpoint-1 falls mid-epoch. The killed
run is the folder a kill right after checkpoint-1 leaves, taken from the uninterrupted run itself: checkpoint-1
(written whole before step 2 starts), the run's arguments (ms-swift's args.json) and the log up to step 1. The
resumed run thus starts from exactly the state the uninterrupted one went on from, with no third run and no race
to kill a process between two steps. Resuming is the Run line again: LLaMA-Factory resumes from output_dir's last
checkpoint by itself (the recipes do not set overwrite_output_dir, which would start over and delete the log),
ms-swift is given --resume_from_checkpoint. CPU float32 in one process with the trainers' RNG and data order
restored is the same arithmetic, so tensors are compared with torch.equal.
"""
from __future__ import annotations

import json
import shutil
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.e2e.test_recipe_run_lines import CUSTOM, data_name, run_line, workspace  # noqa: F401 (a fixture)
from tests.recipes.recipe_cases import recipe_id
from tools.trainers import loss_history, run_logged, trainer_env

# case -> (recipe file name, substrings some trained tensor of the final checkpoint must have)
CASES = {
    "forgery_t1": ("qwen2_5_vl_7b_t1_vit_lora_head", ("visual.blocks.0.", "head.")),
    "forgery_t3": ("qwen2_5_vl_7b_t3_hybrid", ("visual.blocks.0.", "language_model.", "head.", "fusion.")),
    "vision_encoder_stage2": ("qwen3_vl_4b_raddino_stage2", ("visual.encoder.", "visual.merger.", "language_model.")),
}
# a batch of 4: the recipes' batch 16 would only make each step longer
STEPS = {"max_steps": 2, "save_steps": 1, "gradient_accumulation_steps": 1, "per_device_train_batch_size": 4}
NO_POOLS = {"llamafactory": {"preprocessing_num_workers": 1, "dataloader_num_workers": 0},  # the tiny data needs
            "swift": {"dataset_num_proc": 1, "dataloader_num_workers": 0}}  # no worker processes
ONE_PROCESS = ("NPROC_PER_NODE", "FORCE_TORCHRUN", "MASTER_PORT")  # the hybrid's Run-line test uses two
LM_AND_ENCODER = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,query,value"
LOG = {"llamafactory": "trainer_log.jsonl", "swift": "logging.jsonl"}
pytestmark = pytest.mark.trainer


def overrides(recipe) -> tuple[list[str], dict]:
    """(extra arguments, extra environment): two steps saved after each; stage 2 from a fresh merger (no stage 1
    run) with LoRA on the encoder too, so the encoder trains."""
    steps = {**STEPS, **NO_POOLS[recipe.trainer]}
    settings = {}
    if "vision_encoder" in recipe.custom:
        settings = {"merger_path": "null", "encoder_training": "lora"}
        steps["lora_target" if recipe.trainer == "llamafactory" else "target_modules"] = LM_AND_ENCODER
    if recipe.trainer == "llamafactory":
        return ([f"{key}={value}" for key, value in steps.items()]
                + [f"qwenvl_recipes.vision_encoder.{key}={value}" for key, value in settings.items()]), {}
    words = [part for key, value in steps.items() for part in (f"--{key}", *str(value).split(","))]
    return words, {f"QVR_VISION_ENCODER_{key.upper()}": value for key, value in settings.items()}


def log_step(trainer: str, record: dict) -> int | None:
    if trainer == "llamafactory":
        return record.get("current_steps")
    step = record.get("global_step/max_steps")
    return int(step.split("/")[0]) if step else None


def killed_after_first_checkpoint(trainer: str, run: Path, killed: Path) -> None:
    """What a kill right after checkpoint-1 leaves of `run` (before step 2 logs anything): checkpoint-1, the
    run's arguments, the log up to step 1."""
    killed.mkdir(parents=True)
    shutil.copytree(run / "checkpoint-1", killed / "checkpoint-1")
    if (run / "args.json").is_file():
        shutil.copy(run / "args.json", killed / "args.json")
    lines = [line for line in (run / LOG[trainer]).read_text(encoding="utf-8").splitlines()
             if (log_step(trainer, json.loads(line)) or 0) == 1 and "loss" in json.loads(line)]
    (killed / LOG[trainer]).write_text("".join(line + "\n" for line in lines), encoding="utf-8")


@pytest.fixture(scope="module")
def runs(workspace, tiny_model_dir):  # noqa: F811 (the imported fixture)
    """(trainer, case) -> (uninterrupted output dir, resumed output dir). The pairs run in two lanes, each pair's
    runs one after the other."""
    root, data, encoder, plugin = workspace

    def pair(trainer: str, case: str):
        recipe = next(r for r in CUSTOM if r.trainer == trainer and r.path.stem == CASES[case][0])
        data_dir = data(data_name(recipe), recipe.family)
        base = root / "resume" / trainer / case
        outputs = {}
        for name in ("uninterrupted", "resumed"):
            out = base / name
            if recipe.trainer == "llamafactory":
                cwd, output_dir = root / "llamafactory", out
            else:  # as the Run-line test lays out a swift run: data/<name>/ in the working directory
                cwd, output_dir = root / f"swift-{recipe.family}", None
                (cwd / "data").mkdir(parents=True, exist_ok=True)
                if not (cwd / "data" / data_dir.name).exists():
                    (cwd / "data" / data_dir.name).symlink_to(data_dir)
            cwd.mkdir(parents=True, exist_ok=True)
            words, env = run_line(recipe, tiny_model_dir(recipe.family), data_dir, encoder, output_dir, plugin)
            env = {key: value for key, value in env.items() if key not in ONE_PROCESS}
            extra, extra_env = overrides(recipe)
            words += extra
            if recipe.trainer == "swift":
                words += ["--output_dir", str(out)]
            if name == "resumed":
                killed_after_first_checkpoint(trainer, outputs["uninterrupted"], out)
                if recipe.trainer == "swift":
                    words += ["--resume_from_checkpoint", str(out / "checkpoint-1")]
            run_logged(words, base / f"{name}.log", env=trainer_env(trainer, **env, **extra_env), cwd=cwd,
                       timeout=900)
            outputs[name] = out
        return outputs["uninterrupted"], outputs["resumed"]

    pool = ThreadPoolExecutor(max_workers=2)
    futures = {(trainer, case): pool.submit(pair, trainer, case)
               for case in CASES for trainer in ("llamafactory", "swift")}
    yield lambda trainer, case: futures[trainer, case].result()
    pool.shutdown(cancel_futures=True)


def tensors(checkpoint: Path) -> dict[str, torch.Tensor]:
    """Every tensor of every safetensors file in the checkpoint, keyed by file and name."""
    return {f"{path.relative_to(checkpoint)}:{name}": value
            for path in sorted(checkpoint.rglob("*.safetensors")) for name, value in load_file(path).items()}


@pytest.mark.parametrize("trainer", ["llamafactory", "swift"])
@pytest.mark.parametrize("case", sorted(CASES))
def test_resumed_run_ends_equal_to_the_uninterrupted_one(trainer, case, runs):
    uninterrupted, resumed = runs(trainer, case)
    final, expected = tensors(resumed / "checkpoint-2"), tensors(uninterrupted / "checkpoint-2")
    assert final.keys() == expected.keys()
    for part in CASES[case][1]:
        assert any(part in key for key in final), f"no trained tensor of {part} in the checkpoint: {sorted(final)}"
    different = [key for key in final if not torch.equal(final[key], expected[key])]
    assert not different, f"{len(different)} of {len(final)} tensors differ after the resume, e.g. {different[:4]}"
    # the second step moved the weights (equal tensors are not the untrained ones)
    first = tensors(uninterrupted / "checkpoint-1")
    assert [key for key in first if not torch.equal(first[key], expected[key])]
    if trainer == "llamafactory":  # it found the checkpoint itself (with overwrite_output_dir it would start over)
        log = (resumed.parent / "resumed.log").read_text(encoding="utf-8")
        assert f"Resuming training from {resumed / 'checkpoint-1'}." in log
    # the log keeps step 1 and logs the same step 2
    assert loss_history(trainer, resumed) == loss_history(trainer, uninterrupted)
    assert [step for step, _ in loss_history(trainer, resumed)] == [1, 2]
