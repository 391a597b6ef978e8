"""A forgery recipe with `use_liger_kernel: true`: the transformers Trainer binds Liger's forward to the model
after our modules are attached, and the model would train as a plain LM (the head and fusion without a gradient,
no answer score). In both trainers the forgery forward runs in front of it: every training step's loss is the
mode's (tests/e2e/forgery_liger_worker.py acts the binding out on CPU)."""
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.recipes.recipe_cases import make_dataset
from tools.trainers import CPU_OVERRIDES, trainer_env, venv_bin

REPO = Path(__file__).resolve().parents[2]
RECIPE = "recipes/forgery/{folder}/qwen2_5_vl_7b_t3_hybrid.yaml"
STEP = {"max_steps": 2, "per_device_train_batch_size": 2, "gradient_accumulation_steps": 1,
        "gradient_checkpointing": False, "use_liger_kernel": True, "logging_steps": 1, "save_steps": 100,
        "report_to": "none"}


def point_at_tiny(trainer: str, config: dict, tiny: Path, data: Path, out: Path) -> dict:
    if trainer == "llamafactory":
        config.update(STEP, model_name_or_path=str(tiny), dataset_dir=str(data), output_dir=str(out),
                      disable_gradient_checkpointing=True, **CPU_OVERRIDES["llamafactory"])
        block = config["qwenvl_recipes"]["forgery"]
        block.pop("eval_file")
        block["head_blocks"] = [0, 1]  # the tiny ViT has two blocks
    else:
        config.update(STEP, model=str(tiny), dataset=str(data / "forgery_train.jsonl"), output_dir=str(out),
                      check_model=False, **CPU_OVERRIDES["swift"])
        config["ENV"].pop("QVR_FORGERY_EVAL_FILE")
        config["ENV"]["QVR_FORGERY_HEAD_BLOCKS"] = [0, 1]
    return config


@pytest.mark.parametrize("trainer,folder", [("llamafactory", "llamafactory"), ("swift", "swift")])
def test_forgery_recipe_with_liger_trains_the_forgery_loss(trainer, folder, tiny_model_dir, tmp_path):
    data = make_dataset("forgery", "qwen2_5_vl", tmp_path / "data")
    config = yaml.safe_load((REPO / RECIPE.format(folder=folder)).read_text())
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump(point_at_tiny(trainer, config, tiny_model_dir("qwen2_5_vl"), data,
                                                   tmp_path / "out")))
    parts = tmp_path / "parts.json"
    run = subprocess.run([str(venv_bin(trainer) / "python"), str(REPO / "tests/e2e/forgery_liger_worker.py"), trainer,
                          str(recipe), str(parts)], cwd=REPO, env=trainer_env(trainer), capture_output=True,
                         text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-4000:]
    assert json.loads(parts.read_text()) == [["cls_loss", "heatmap_loss", "lm_loss"]] * 2
    assert "the forgery forward now runs in front of it" in run.stderr
