"""What the recipe tests share: discovered recipes, the tiny-model swap, CPU overrides, data making."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tools import synthetic_data
from tools.offline import offline_env
from tools.recipes_table import REPO_ROOT, discover
from tools.trainers import trainer_env, venv_bin

RECIPES = discover()
HERE = Path(__file__).resolve().parent

# task -> (tools.synthetic_data kind, converters subcommand, extra converter args, dataset name the recipes use)
TASK_DATA = {
    "caption": ("coco_caption", "coco-caption", ["--resize", "56x56"], "coco_caption"),
    "grounding": ("refcoco", "refcoco", [], "refcocog"),
    "microscopy": ("microscopy", "microscopy", [], "microscopy"),
    "forgery": ("forgery", "forgery", [], "forgery"),
}


def recipe_id(recipe) -> str:
    return recipe.rel.removeprefix("recipes/")


def make_dataset(task: str, family: str, out: Path) -> Path:
    """Synthetic source data for `task`, converted for `family` the way the recipe's Data line says."""
    kind, command, extra, name = TASK_DATA[task]
    source_input = getattr(synthetic_data, f"make_{kind}")(out / "source", n=6, seed=0)
    data_dir = out / name
    subprocess.run([sys.executable, "-m", "converters", command, "--input", source_input, "--out", str(data_dir),
                    "--model", family, "--name", name, *extra],
                   capture_output=True, text=True, cwd=REPO_ROOT, env=offline_env(), check=True)
    return data_dir


def run_parse_worker(trainer: str, bin_dir: Path, items: list[dict]) -> dict:
    """Parse every item in ONE subprocess of the trainer's venv; returns {path: None | error}."""
    # A single-process "distributed" setup: LLaMA-Factory refuses DeepSpeed recipes otherwise.
    env = trainer_env(trainer, RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", LOCAL_WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT="29561" if trainer == "llamafactory" else "29562")
    result = subprocess.run([str(bin_dir / "python"), str(HERE / f"parse_{trainer}.py")], input=json.dumps(items),
                            capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=300)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"{trainer} parse worker failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def run_plan_worker(trainer: str, items: list[dict]) -> dict:
    """qvr-plan's JSON of every item ({"id", "recipe", "overrides", "env", "cwd"}) from ONE subprocess of the
    trainer's venv (plan_worker.py); {id: plan | {"failure": error}}."""
    result = subprocess.run([str(venv_bin(trainer) / "python"), str(HERE / "plan_worker.py")],
                            input=json.dumps(items), capture_output=True, text=True, cwd=REPO_ROOT,
                            env=trainer_env(trainer), timeout=600)
    if result.returncode != 0 or not result.stdout.strip():
        raise RuntimeError(f"{trainer} plan worker failed (exit {result.returncode}):\n{result.stderr[-4000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
