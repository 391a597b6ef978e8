"""Learning runs on tiny random models: synthetic task data -> converter CLI -> a task recipe through the
trainer's own command (tools.trainers.train_command: `llamafactory-cli train` / `qvr-llamafactory train` for a
recipe with our features, `swift sft`) with one written-down override set -> `eval run` on the held-out split
for the base model and the fine-tuned adapter, next to a trivial baseline scored by `eval score`.
`make demo` and the learning tests call the same `run_learning`, so the figures in the demo report are the
ones the tests assert.

    python -m tools.learning caption llamafactory --work .cache/learning      (one run, its result as JSON)

Why the overrides (docs/learning.md): a tiny model's output layer is tied to its small random embeddings,
so LoRA on the layers alone cannot lower the loss below ~10.7 (ln 151936 = 11.9); the output layer must
train (LLaMA-Factory `additional_target`, ms-swift `modules_to_save`), at a learning rate far above a
pretrained model's, for a few hundred steps.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Callable

import yaml

from custom_modules.forgery.checkpoint import BEST_DIR
from custom_modules.forgery.vit import lora_target_regex, lora_targets
from qwenvl_recipes.io import read_json, read_jsonl, write_jsonl_atomic
from tools.model_configs import model_family
from tools.synthetic_data import make_focus_pairs, make_forgery, make_shape_caption, make_shape_grounding
from tools.tiny_models import ensure_tiny_models
from tools.trainers import (CPU_OVERRIDES, OFFLINE_OVERRIDES, REPO_ROOT, TRAINERS, gpu_only_overrides, loss_history,
                            run_logged, train_command, trainer_env)

TINY_MODEL_CACHE = REPO_ROOT / ".cache" / "tiny-models"


@dataclass(frozen=True)
class LearningTask:
    """One learnable task: its data, the recipe each trainer runs, the overrides and the targets."""
    name: str
    eval_task: str                      # `eval run --task`
    model: str                          # tiny model name (tools.tiny_models: a family or a wider variant)
    make_source: Callable[[Path], Path]  # writes the synthetic source dataset, returns the converter --input
    converter: list[str]                # converter subcommand and options (--input/--out/--model/--name added)
    data_name: str                      # converter --name: file prefix and the recipe's dataset name
    recipes: dict[str, str]             # trainer -> recipe path relative to the repo
    overrides: dict[str, dict]          # trainer -> what a tiny random model needs beyond the recipe
    targets: dict[str, float]           # metric -> held-out minimum of the fine-tuned model
    baseline_margin: dict[str, float] = field(default_factory=dict)  # metric -> tuned >= margin x baseline
    max_new_tokens: int = 32
    env: dict[str, dict] = field(default_factory=dict)  # trainer -> environment variables the run needs
    # Checkpoint selection during training (forgery: the callback keeps the best val AUROC): per trainer, the
    # recipe key or environment variable that takes the val file, and the folder of the kept checkpoint; the
    # scores are then on the test split.
    select_key: dict[str, str] = field(default_factory=dict)
    select_env: dict[str, str] = field(default_factory=dict)
    selected_dir: str | None = None

    @property
    def family(self) -> str:
        """The model family: its box convention and the converter's --model."""
        return model_family(self.model)


def caption_source(out: Path) -> Path:
    return make_shape_caption(out, n=400, seed=0, n_val=64)


def microscopy_source(out: Path) -> Path:
    return make_focus_pairs(out, n=400, seed=0, n_val=64)


def forgery_source(out: Path) -> Path:
    return make_forgery(out, n=128, seed=0, with_test=True)


# A family's box convention decides which grid its shapes lie on: Qwen2.5-VL writes absolute pixels of the resized
# image (the shapes on one 56 px grid, coloured by absolute position), Qwen2-VL 0-1000 of the image (the shapes on
# a 4 x 4 grid of each image, coloured by relative position). Qwen2-VL's grid has 16 cells an image against
# Qwen2.5-VL's 8-12: at 500 steps it reached 0.41, at 1000 0.86. family -> (data style, recipe, steps)
GROUNDING = {"qwen2_5_vl": ("grid_pixels", "qwen2_5_vl_7b_lora", 500),
             "qwen2_vl": ("grid_relative", "qwen2_vl_2b_lora", 1000)}


def grounding_task(family: str) -> "LearningTask":
    style, recipe, steps = GROUNDING[family]
    return LearningTask(
        name=f"grounding_{family}", eval_task="grounding", model=family,
        make_source=partial(make_shape_grounding, n=400, seed=0, n_val=64, style=style),
        # Every image lies inside the tiny processors' pixel limits as well as the recipe's, so the limits that
        # LLaMA-Factory's processor adds (--processor-config) change no box.
        converter=["refcoco", "--splitby", "umd"], data_name="refcocog",
        recipes={t: f"recipes/grounding/{t}/{recipe}.yaml" for t in TRAINERS},
        overrides=output_layer_overrides(steps=steps, gradient_accumulation_steps=2),
        targets={"acc@0.5": 0.5}, baseline_margin={"acc@0.5": 1.5}, max_new_tokens=64)


# Forgery modes T1 and T3 on the tiny Qwen2.5-VL (2 ViT blocks): what the recipes' 7B block choices become, and
# the learning rate, epochs (10 x 16 steps of 4 images) and head size of the hand-written loop that reached test
# AUROC 0.97 (tools.forgery_proof), now through the trainers. Images at the tiny processor's own pixel limits,
# which `eval run` feeds them at (ms-swift takes those from the environment: FORGERY_ENV).
FORGERY_TINY_BLOCKS = (0, 1)
FORGERY_TINY_PIXELS = {"min": 3136, "max": 50176}
# no loader workers: the tiny images load in no time, and the recipes' 8 workers cost more to start than they
# save (LLaMA-Factory starts them again every epoch)
_FORGERY_COMMON = {"learning_rate": 1e-2, "max_steps": 160, "per_device_train_batch_size": 4,
                   "gradient_accumulation_steps": 1, "dataloader_num_workers": 0}
# The recipe's forgery settings: LLaMA-Factory takes them as dotted keys, ms-swift as QVR_FORGERY_* variables.
_HEAD = {"head_blocks": json.dumps(list(FORGERY_TINY_BLOCKS)), "head_dim": 32, "mask_size": 32}
_HYBRID = {**_HEAD, "fusion_tokens": 2}


def _lf_block(settings: dict) -> dict:
    return {f"qwenvl_recipes.forgery.{k}": v for k, v in settings.items()}


def _swift_block(settings: dict) -> dict:
    return {f"QVR_FORGERY_{k.upper()}": str(v) for k, v in settings.items()}


_LF_PIXELS = {"image_min_pixels": FORGERY_TINY_PIXELS["min"], "image_max_pixels": FORGERY_TINY_PIXELS["max"]}
_VIT_BLOCKS = lora_targets("qwen2_5_vl", FORGERY_TINY_BLOCKS, False)
_VIT_BLOCKS_AND_LM = lora_targets("qwen2_5_vl", FORGERY_TINY_BLOCKS, True)
FORGERY_OVERRIDES = {
    "forgery_t1": {
        "llamafactory": {**_FORGERY_COMMON, **_lf_block(_HEAD), "lora_target": ",".join(_VIT_BLOCKS), **_LF_PIXELS},
        "swift": {**_FORGERY_COMMON, "target_regex": lora_target_regex(_VIT_BLOCKS)},
    },
    "forgery_t3": {
        "llamafactory": {**_FORGERY_COMMON, **_lf_block(_HYBRID), "lora_target": ",".join(_VIT_BLOCKS_AND_LM),
                         **_LF_PIXELS},
        "swift": {**_FORGERY_COMMON, "target_regex": lora_target_regex(_VIT_BLOCKS_AND_LM)},
    },
}
_SWIFT_PIXELS = {"MIN_PIXELS": str(FORGERY_TINY_PIXELS["min"]), "MAX_PIXELS": str(FORGERY_TINY_PIXELS["max"])}
FORGERY_ENV = {"forgery_t1": {"swift": {**_SWIFT_PIXELS, **_swift_block(_HEAD)}},
               "forgery_t3": {"swift": {**_SWIFT_PIXELS, **_swift_block(_HYBRID)}}}
FORGERY_RECIPES = {"forgery_t1": "t1_vit_lora_head", "forgery_t3": "t3_hybrid"}


def forgery_task(name: str) -> "LearningTask":
    return LearningTask(
        name=name, eval_task="forgery", model="qwen2_5_vl", make_source=forgery_source, converter=["forgery"],
        data_name="forgery",
        recipes={t: f"recipes/forgery/{t}/qwen2_5_vl_7b_{FORGERY_RECIPES[name]}.yaml" for t in TRAINERS},
        overrides=FORGERY_OVERRIDES[name], targets={"auroc": 0.9}, baseline_margin={"auroc": 1.5},
        env=FORGERY_ENV[name], select_key={"llamafactory": "qwenvl_recipes.forgery.eval_file"},
        select_env={"swift": "QVR_FORGERY_EVAL_FILE"}, selected_dir=BEST_DIR)


FOCUS_PROMPT = "比较两张图像的清晰度，给出调焦方向和步数，只输出 JSON。"


def output_layer_overrides(steps: int | dict, **extra) -> dict:
    """trainer -> the override set for a random tiny model: learning rate 5e-3 (unless `extra` sets one), `steps`
    optimizer steps (one number, or trainer -> number) and the output layer trained (LLaMA-Factory
    `additional_target`, ms-swift `modules_to_save`)."""
    trained = {"llamafactory": {"additional_target": "lm_head"}, "swift": {"modules_to_save": "lm_head"}}
    return {trainer: {"learning_rate": 5e-3, "max_steps": steps[trainer] if isinstance(steps, dict) else steps,
                      **extra, **layer} for trainer, layer in trained.items()}

TASKS = {
    "caption": LearningTask(
        name="caption", eval_task="caption", model="qwen2_vl", make_source=caption_source,
        converter=["coco-caption"], data_name="coco_caption",
        recipes={"llamafactory": "recipes/caption/llamafactory/qwen2_vl_2b_lora.yaml",
                 "swift": "recipes/caption/swift/qwen2_vl_2b_lora.yaml"},
        overrides=output_layer_overrides(steps=500),
        targets={"exact_match": 0.6, "colour_acc": 0.6, "shape_acc": 0.6, "background_acc": 0.6},
        baseline_margin={"exact_match": 1.5}, max_new_tokens=16),
    # The one comparison it needs (image 2's blur against image 1's) is learned slowly by the 2-layer width-64
    # model (2500 steps of 2 x 2); the wider variant at batch 8 and lr 1e-2 learns it in 1000 steps through
    # ms-swift (~9 min on two cores) and in 1500 through LLaMA-Factory (0.83 at 1000; ~24 min, docs/learning.md):
    # out of the default demo and of the tests.
    "microscopy": LearningTask(
        name="microscopy", eval_task="microscopy", model="qwen3_vl_wide", make_source=microscopy_source,
        # A short prompt: the default one is ~100 tokens that a 2-layer model has to look past to the images.
        converter=["microscopy", "--prompt", FOCUS_PROMPT], data_name="microscopy",
        recipes={"llamafactory": "recipes/microscopy/llamafactory/qwen3_vl_2b_lora.yaml",
                 "swift": "recipes/microscopy/swift/qwen3_vl_2b_lora.yaml"},
        overrides=output_layer_overrides(steps={"llamafactory": 1500, "swift": 1000}, learning_rate=1e-2,
                                         per_device_train_batch_size=8, gradient_accumulation_steps=1),
        targets={"json_valid_rate": 1.0, "direction_acc": 0.9},
        baseline_margin={"direction_acc": 1.5}, max_new_tokens=48),
    **{name: forgery_task(name) for name in FORGERY_RECIPES},
    **{task.name: task for task in map(grounding_task, GROUNDING)},
}


def location_overrides(trainer: str, model_dir: Path, data_dir: Path, data_name: str, output_dir: Path,
                       steps: int) -> dict:
    """Where the model, data and outputs are, how many steps (logged ~25 times, saved at the end, the model alone),
    CPU precision and offline use: the keys every run on a local tiny model changes, whatever it trains.
    A learning run is scored, never resumed, so its checkpoint holds no optimizer state (with the output layer
    trained, Adam's two moments of it are ~80 MB of a tiny model's ~120 MB checkpoint), and a rerun into the same
    output_dir trains again (LLaMA-Factory would otherwise resume from the earlier run's last checkpoint)."""
    common = {"output_dir": output_dir, "max_steps": steps, "logging_steps": max(1, steps // 25), "save_steps": steps,
              "save_only_model": True, **OFFLINE_OVERRIDES[trainer], **CPU_OVERRIDES[trainer]}
    if trainer == "llamafactory":
        return {"model_name_or_path": model_dir, "dataset_dir": data_dir, "dataset": f"{data_name}_train",
                "overwrite_output_dir": True, **common}
    return {"model": model_dir, "dataset": data_dir / f"{data_name}_train.jsonl", **common}


def adapter_dir(trainer: str, output_dir: Path, selected_dir: str | None = None) -> Path:
    """LLaMA-Factory saves the final adapter in output_dir; ms-swift in its last checkpoint-N; a run that selects
    its checkpoint during training keeps it in output_dir/selected_dir."""
    if selected_dir is not None:
        return output_dir / selected_dir
    if trainer == "llamafactory":
        return output_dir
    from transformers.trainer_utils import get_last_checkpoint

    last = get_last_checkpoint(str(output_dir))
    if last is None:
        raise FileNotFoundError(f"no checkpoint-* under {output_dir}")
    return Path(last)


def eval_split_file(trainer: str, data_dir: Path, data_name: str, split: str = "val") -> Path:
    """The held-out file written for this trainer: LLaMA-Factory reads the sharegpt .json, ms-swift the .jsonl
    (for Qwen2.5-VL their boxes differ, following each trainer's resize)."""
    return data_dir / f"{data_name}_{split}.{'json' if trainer == 'llamafactory' else 'jsonl'}"


def prepare_data(task: LearningTask, work: Path, logs: Path) -> Path:
    """Synthetic source -> converter CLI -> `converters check`; returns the converter output dir."""
    source = task.make_source(work / "source")
    data_dir = work / "data"
    run_logged([sys.executable, "-m", "converters", *task.converter, "--input", str(source), "--out", str(data_dir),
                "--model", task.family, "--name", task.data_name], logs / "convert.log")
    run_logged([sys.executable, "-m", "converters", "check", str(data_dir)], logs / "check.log")
    return data_dir


def eval_command(task: LearningTask, model_dir: Path, data_file: Path, out: Path, adapter: Path | None) -> list[str]:
    command = [sys.executable, "-m", "eval", "run", "--task", task.eval_task, "--model", str(model_dir),
               "--data", str(data_file), "--out", str(out), "--max-new-tokens", str(task.max_new_tokens),
               "--batch-size", "8", "--no-java-metrics"]
    return command + (["--adapter", str(adapter)] if adapter is not None else [])


def read_metrics(run_dir: Path) -> dict:
    return read_json(run_dir / "metrics.json")


def train_answers(data_file: Path) -> list[str]:
    """The assistant answers of a converter split file (.json sharegpt or .jsonl swift rows)."""
    rows = read_jsonl(data_file) if data_file.suffix == ".jsonl" else read_json(data_file)
    return [row["messages"][-1]["content"] for row in rows]


def split_convention(task: LearningTask, data_file: Path):
    """The box convention `eval run` reads this converter file with (family, pixel limits, resize path)."""
    from eval.data import read_manifest_entry
    from eval.run import data_settings

    return data_settings(task.eval_task, data_file, read_manifest_entry(data_file)).box_convention()


def relative_boxes(task: LearningTask, data_file: Path) -> list[tuple[float, float, float, float]]:
    """Every reference box of a grounding split as fractions of its image's width and height."""
    from eval.data import load_samples

    convention = split_convention(task, data_file)
    boxes = []
    for sample in load_samples(data_file, task.eval_task):
        width, height = size = sample.image_size()
        box = convention.parse(sample.reference, size)[0]
        boxes.append((box.x1 / width, box.y1 / height, box.x2 / width, box.y2 / height))
    return boxes


def best_fixed_box(boxes: list[tuple[float, float, float, float]]) -> tuple[float, float, float, float]:
    """Of the given relative boxes, the one that, answered for every image, hits IoU >= 0.5 most often among
    them (relative units: the images differ in size; first wins ties)."""
    from converters.schema import Box
    from eval.metrics.grounding import iou

    as_boxes = [Box(*b) for b in boxes]
    return max(boxes, key=lambda c: sum(iou(Box(*c), b) >= 0.5 for b in as_boxes))


def baseline_answers(task: LearningTask, trainer: str, data_dir: Path, rows: list[dict]) -> tuple[list[str], str]:
    """(one answer per held-out row, what the baseline is): captions, microscopy and forgery, the most frequent
    training answer (a constant move: direction accuracy at that direction's share; a constant word: AUROC 0.5);
    grounding, the single box that is right most often on the training split, rendered per image."""
    train_file = eval_split_file(trainer, data_dir, task.data_name, "train")
    if task.eval_task in ("caption", "microscopy", "forgery"):
        answer = Counter(train_answers(train_file)).most_common(1)[0][0]
        return [answer] * len(rows), f"`{answer}` for every image"
    if task.eval_task == "grounding":
        from converters.boxes import render_grounding
        from converters.schema import Box

        x1, y1, x2, y2 = best_fixed_box(relative_boxes(task, train_file))
        convention = split_convention(task, eval_split_file(trainer, data_dir, task.data_name))
        pixels = dict(min_pixels=convention.min_pixels, max_pixels=convention.max_pixels,
                      resize_path=convention.resize_path, processor_pixels=convention.processor_pixels)
        answers = [render_grounding("the shape", Box(x1 * w, y1 * h, x2 * w, y2 * h), (w, h), task.family, **pixels)
                   for w, h in (row["image_size"] for row in rows)]
        return answers, (f"the best fixed box of the training split, [{x1:.2f}, {y1:.2f}, {x2:.2f}, {y2:.2f}] "
                         "of the image, for every image")
    raise ValueError(f"no baseline for task {task.eval_task!r}")


def score_baseline(task: LearningTask, trainer: str, data_dir: Path, base_run: Path, out: Path, log: Path) -> dict:
    """A baseline that never looks at the image, scored by `eval score` on the same held-out rows as the
    models (taken from the base run's predictions, so ids and references are the ones `eval run` used)."""
    rows = read_jsonl(base_run / "predictions.jsonl")
    answers, description = baseline_answers(task, trainer, data_dir, rows)
    predictions = out / "predictions.jsonl"
    out.mkdir(parents=True, exist_ok=True)
    # the base run's rows carry its P(fake) (forgery): the baseline is its answer alone
    write_jsonl_atomic(predictions, [{**{k: v for k, v in row.items() if k != "score"}, "prediction": answer}
                                     for row, answer in zip(rows, answers)])
    convention = split_convention(task, eval_split_file(trainer, data_dir, task.data_name))
    run_logged([sys.executable, "-m", "eval", "score", "--task", task.eval_task, "--model-family", task.family,
                "--predictions", str(predictions), "--out", str(out), "--no-java-metrics",
                "--min-pixels", str(convention.min_pixels), "--max-pixels", str(convention.max_pixels),
                "--resize-path", convention.resize_path], log)
    return {**read_metrics(out), "answer": description}


def headline(metrics: dict) -> dict:
    """The numeric metrics of a metrics.json (what summary.json keeps)."""
    return {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def missed_targets(task: LearningTask, result: dict) -> list[str]:
    """Every target the fine-tuned model misses on held-out data; empty when learning is shown."""
    tuned, baseline = result["tuned"], result["baseline"]
    missed = [f"{metric} {tuned.get(metric, 0.0):.3f} < {floor}" for metric, floor in task.targets.items()
              if tuned.get(metric, 0.0) < floor]
    missed += [f"{metric} {tuned.get(metric, 0.0):.3f} < {margin} x baseline {baseline.get(metric, 0.0):.3f}"
               for metric, margin in task.baseline_margin.items()
               if tuned.get(metric, 0.0) < margin * baseline.get(metric, 0.0)]
    missed += [f"{metric} tuned {tuned.get(metric, 0.0):.3f} <= base {result['base'].get(metric, 0.0):.3f}"
               for metric in task.targets if tuned.get(metric, 0.0) <= result["base"].get(metric, 0.0)]
    return missed


def sample_answers(base_run: Path, tuned_run: Path, first: int, misses: int) -> list[dict]:
    """Held-out answers side by side: the first `first` rows, then up to `misses` rows the fine-tuned model
    got wrong (its answer is not the reference text), so the report shows failures too."""
    base = {row["id"]: row["prediction"] for row in read_jsonl(base_run / "predictions.jsonl")}
    rows = [{"id": row["id"], "reference": row["reference"], "base": base.get(row["id"], ""),
             "tuned": row["prediction"]} for row in read_jsonl(tuned_run / "predictions.jsonl")]

    def wrong(row: dict) -> bool:
        references = row["reference"] if isinstance(row["reference"], list) else [row["reference"]]
        return row["tuned"].strip() not in [r.strip() for r in references]
    return rows[:first] + [row for row in rows[first:] if wrong(row)][:misses]


def run_learning(task: LearningTask | str, trainer: str, work: Path, *, timeout: float | None = None,
                 samples: int = 3) -> dict:
    """Train `task` (a TASKS name or a LearningTask) through `trainer`'s CLI on a tiny model and score base,
    tuned and baseline on the held-out split. Returns the result (metrics, command, loss history, wall times,
    sample answers); logs and eval runs stay under `work`."""
    task = TASKS[task] if isinstance(task, str) else task
    if trainer not in TRAINERS:
        raise ValueError(f"unknown trainer {trainer!r}; expected one of {TRAINERS}")
    work = Path(work).resolve()
    logs = work / "logs"
    model_dir = ensure_tiny_models(TINY_MODEL_CACHE, [task.model])[task.model]
    data_dir = work / "data"
    if not (data_dir / "manifest.json").exists():  # one conversion serves both trainers
        data_dir = prepare_data(task, work, logs)

    output_dir = work / "outputs" / trainer
    steps = task.overrides[trainer]["max_steps"]
    recipe = REPO_ROOT / task.recipes[trainer]
    overrides = {**location_overrides(trainer, model_dir, data_dir, task.data_name, output_dir, steps),
                 **gpu_only_overrides(yaml.safe_load(recipe.read_text(encoding="utf-8")) or {}),
                 **task.overrides[trainer]}
    env = dict(task.env.get(trainer, {}))
    val_file = eval_split_file("swift", data_dir, task.data_name, "val")
    if trainer in task.select_key:
        overrides[task.select_key[trainer]] = val_file
    if trainer in task.select_env:
        env[task.select_env[trainer]] = str(val_file)
    command = train_command(trainer, recipe, overrides)
    train_seconds = run_logged(command, logs / f"train_{trainer}.log", env=trainer_env(trainer, **env),
                               timeout=timeout)
    adapter = adapter_dir(trainer, output_dir, task.selected_dir)

    data_file = eval_split_file(trainer, data_dir, task.data_name, "test" if task.selected_dir else "val")
    started = time.monotonic()
    runs = {}
    for name, run_adapter in (("base", None), ("tuned", adapter)):
        runs[name] = work / "eval" / f"{trainer}_{name}"
        run_logged(eval_command(task, model_dir, data_file, runs[name], run_adapter),
                   logs / f"eval_{trainer}_{name}.log", timeout=timeout)
    baseline = score_baseline(task, trainer, data_dir, runs["base"], work / "eval" / f"{trainer}_baseline",
                              logs / f"baseline_{trainer}.log")
    eval_seconds = time.monotonic() - started
    result = {
        "task": task.name, "trainer": trainer, "model": task.model, "model_family": task.family,
        "recipe": task.recipes[trainer], "overrides": {k: str(v) for k, v in task.overrides[trainer].items()},
        "command": [str(part) for part in command],
        "base": headline(read_metrics(runs["base"])), "tuned": headline(read_metrics(runs["tuned"])),
        "baseline": headline(baseline), "baseline_answer": baseline["answer"],
        "targets": task.targets, "baseline_margin": task.baseline_margin,
        "loss_history": loss_history(trainer, output_dir), "max_steps": steps,
        "train_seconds": round(train_seconds, 1), "eval_seconds": round(eval_seconds, 1),
        "samples": sample_answers(runs["base"], runs["tuned"], first=samples, misses=2),
        "adapter": str(adapter), "eval_dirs": {name: str(path) for name, path in runs.items()},
    }
    result["missed_targets"] = missed_targets(task, result)
    return result


def _literal(text: str):
    """A command-line value as the number it spells, else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=sorted(TASKS))
    parser.add_argument("trainer", choices=TRAINERS)
    parser.add_argument("--work", default=".cache/learning", help="data, outputs, eval runs (a folder per task)")
    parser.add_argument("--model", help="another tiny model (tools.model_configs) for this run")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="change one override of this trainer (experiments: --set max_steps 600)")
    args = parser.parse_args(argv)
    task = TASKS[args.task]
    if args.model:
        task = replace(task, model=args.model)
    if args.set:
        changed = {**task.overrides[args.trainer], **{k: _literal(v) for k, v in args.set}}
        task = replace(task, overrides={**task.overrides, args.trainer: changed})
    result = run_learning(task, args.trainer, Path(args.work) / args.task)
    print(json.dumps({k: v for k, v in result.items() if k not in ("loss_history", "samples")}, indent=2))
    return 1 if result["missed_targets"] else 0


if __name__ == "__main__":
    sys.exit(main())
