"""qvr-plan over every committed recipe, in its trainer's environment, on the published architectures (the meta
device: no weights): no target reaches nothing, and a LLaMA-Factory recipe and its ms-swift twin train the same
parameters. Plus ms-swift's side of the flagged target lists (LLaMA-Factory's: tests/unit/test_plan.py)."""
from __future__ import annotations

import subprocess

import pytest
import yaml

from tests.recipes.recipe_cases import RECIPES, recipe_id, run_plan_worker
from tools.trainers import REPO_ROOT, trainer_env, venv_bin

TRAINING = [r for r in RECIPES if not r.is_export]
TWINS = sorted({(r.task, r.path.stem) for r in TRAINING if r.trainer == "llamafactory"}
               & {(r.task, r.path.stem) for r in TRAINING if r.trainer == "swift"})
# what a plan made before the earlier stage ran may say: that stage's output is not there yet
LATER_STAGE = ("is not a file", "does not exist", "no merger.safetensors")


@pytest.fixture(scope="module")
def plans():
    found = {}
    for trainer in ("llamafactory", "swift"):
        found.update(run_plan_worker(trainer, [{"id": r.rel, "recipe": str(r.path), "overrides": []}
                                               for r in TRAINING if r.trainer == trainer]))
    return found


@pytest.mark.parametrize("recipe", TRAINING, ids=recipe_id)
def test_every_recipe_plans_without_an_error(recipe, plans):
    plan = plans[recipe.rel]
    assert plan.get("failure") is None and plan["errors"] == [], plan
    assert plan["trainable_parameters"] > 0 and "published architecture" in plan["model"]
    assert [w for w in plan["warnings"] if not any(words in w for words in LATER_STAGE)] == []


@pytest.mark.parametrize("task,stem", TWINS, ids=lambda v: v if isinstance(v, str) else None)
def test_twin_recipes_train_the_same_parameters(task, stem, plans):
    lf, swift = plans[f"recipes/{task}/llamafactory/{stem}.yaml"], plans[f"recipes/{task}/swift/{stem}.yaml"]
    assert lf["trainable"] == swift["trainable"]
    assert {part: row["trainable"] for part, row in lf["parts"].items()} == {
        part: row["trainable"] for part, row in swift["parts"].items()}


def plan_cli(recipe, *overrides, **env) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv_bin("swift") / "python"), "-m", "custom_modules.integrations.plan_cli",
                           str(recipe), *overrides], capture_output=True, text=True, cwd=REPO_ROOT,
                          env=trainer_env("swift", **env), timeout=300)


def test_swift_seed_vit_target_list_is_one_error_per_pattern(tmp_path, tiny_model_dir):
    """The same pasted list as target_modules (a recipe's target_regex cannot be unset from the command line, so
    the recipe is copied without it)."""
    source = REPO_ROOT / "recipes/microscopy/swift/qwen3_vl_2b_lora_vit.yaml"
    config = yaml.safe_load(source.read_text())
    del config["target_regex"]
    config["target_modules"] = ["q_proj", "visual.blocks.*.attn.qkv", "visual.merger.*",
                                "visual.deepstack_merger_list.*"]
    recipe = tmp_path / source.name
    recipe.write_text(yaml.safe_dump(config))
    result = plan_cli(recipe, "--model", str(tiny_model_dir("qwen3_vl")))
    errors = [line for line in result.stderr.splitlines() if line.startswith("qvr-plan:")]
    assert result.returncode == 2 and len(errors) == 3, result.stderr[-3000:]
    for line, pattern in zip(errors, config["target_modules"][1:]):
        assert f"{recipe}: target_modules '{pattern}' matches no module" in line and "no wildcards" in line
    assert "target_modules q_proj" in result.stdout


def test_swift_regex_alternative_that_reaches_nothing(tiny_model_dir):
    """A target_regex listing modules is checked alternative by alternative: block 40 of a 2-block ViT is named."""
    regex = r"^(.*\.)?(blocks\.0\.attn\.qkv|blocks\.40\.attn\.qkv)$"
    recipe = REPO_ROOT / "recipes/forgery/swift/qwen2_5_vl_7b_t1_vit_lora_head.yaml"
    result = plan_cli(recipe, "--model", str(tiny_model_dir("qwen2_5_vl")), "--target_regex", regex,
                      QVR_FORGERY_HEAD_BLOCKS="[0]")
    errors = [line for line in result.stderr.splitlines() if line.startswith("qvr-plan:")]
    assert result.returncode == 2 and len(errors) == 1, result.stderr[-3000:]
    assert r"target_regex 'blocks\.40\.attn\.qkv' matches no module" in errors[0]
