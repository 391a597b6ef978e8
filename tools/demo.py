"""The whole product on a laptop, and proof that it teaches: tiny random model + synthetic task data ->
converter -> the task recipe through LLaMA-Factory and through ms-swift (their own commands, with our
features for a recipe that has them: forgery) -> `eval run` on held-out data for the base and the
fine-tuned model, next to a baseline that never looks at the image -> reports/demo/README.md and summary.json.

    python -m tools.demo --out reports/demo        (what `make demo` runs)

Everything is offline: the tiny checkpoints and the data are built locally. Each run's overrides (where
things are, CPU precision, and the task's written-down override set for tiny models, tools.learning) are
printed in the report next to the command. Exits 1 when a fine-tuned model misses its targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from qwenvl_recipes.io import write_text_atomic
from tools.learning import TASKS, run_learning
from tools.trainers import REPO_ROOT, TRAINERS, run_logged

TRAINER_NAMES = {"llamafactory": "LLaMA-Factory", "swift": "ms-swift"}
# The tasks the demo runs by default: those whose targets the tiny models reach and that fit its 15 minutes on two
# cores (docs/learning.md). grounding_qwen2_5_vl (the learning tests run it), grounding_qwen2_vl and forgery_t3
# reach their targets too, each in a few more minutes, and microscopy (~9 min through ms-swift, ~24 through
# LLaMA-Factory): add them with --task.
DEMO_TASKS = ("caption", "forgery_t1")
# Metrics shown per eval task, in order (BLEU-4 stays for captions, but a constant caption scores well on it).
REPORT_METRICS = {"caption": ("exact_match", "colour_acc", "shape_acc", "background_acc", "bleu_4"),
                  "grounding": ("acc@0.5", "miou", "parse_fail_rate"),
                  "microscopy": ("json_valid_rate", "direction_acc", "distance_mae", "exact_match"),
                  "forgery": ("auroc", "ap", "f1", "accuracy")}


def plot_losses(results: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({r["task"] for r in results})
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks):
        for r in (r for r in results if r["task"] == task):
            history = r["loss_history"]
            ax.plot([s for s, _ in history], [loss for _, loss in history], label=TRAINER_NAMES[r["trainer"]])
        ax.set_yscale("log")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("training loss")
        ax.set_title(f"{task}: tiny {TASKS[task].model}")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _shown(path: Path) -> Path:
    """A path as the reader types it: relative to the repository when inside it."""
    return path.relative_to(REPO_ROOT) if path.is_relative_to(REPO_ROOT) else path


def _value(metrics: dict, key: str) -> str:
    return f"{metrics[key]:.3f}" if key in metrics else "—"


def metrics_table(task: str, results: list[dict]) -> list[str]:
    keys = REPORT_METRICS[TASKS[task].eval_task]
    lines = [f"| trainer | model | {' | '.join(keys)} |", "|---|---|" + "---|" * len(keys)]
    for r in results:
        for row in ("base", "tuned", "baseline"):
            label = {"base": "base (no training)", "tuned": "fine-tuned",
                     "baseline": f"baseline: {r['baseline_answer']}"}[row]
            lines.append(f"| {TRAINER_NAMES[r['trainer']]} | {label} | "
                         + " | ".join(_value(r[row], k) for k in keys) + " |")
    return lines


def loss_table(results: list[dict]) -> list[str]:
    lines = ["| task | trainer | loss at first log | lowest | last | steps | training wall time |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        losses = [loss for _, loss in r["loss_history"]]
        lines.append(f"| {r['task']} | {TRAINER_NAMES[r['trainer']]} | {losses[0]:.3f} | {min(losses):.3f} "
                     f"| {losses[-1]:.3f} | {r['max_steps']} | {r['train_seconds']:.0f} s |")
    return lines


def _cell(text: str) -> str:
    text = " ".join(text.split())  # one line; blank answers (a random model's spaces) say so
    return f"`{text}`".replace("|", "\\|") if text else "(blank)"


def samples_table(result: dict) -> list[str]:
    lines = ["| reference | base | fine-tuned |", "|---|---|---|"]
    for row in result["samples"]:
        reference = row["reference"][0] if isinstance(row["reference"], list) else row["reference"]
        lines.append(f"| {_cell(reference)} | {_cell(row['base'])} | {_cell(row['tuned'])} |")
    return lines


def verdict(result: dict) -> str:
    missed = result["missed_targets"]
    return "all targets met" if not missed else "**missed:** " + "; ".join(missed)


def write_report(out: Path, work: Path, results: list[dict], wall_seconds: float) -> Path:
    sections = []
    for task in dict.fromkeys(r["task"] for r in results):
        task_results = [r for r in results if r["task"] == task]
        spec = TASKS[task]
        targets = ", ".join(f"{k} ≥ {v}" for k, v in spec.targets.items())
        margins = ", ".join(f"{k} ≥ {v}× the baseline" for k, v in spec.baseline_margin.items())
        runs = []
        for r in task_results:
            overrides = " ".join(f"{k}={v}" for k, v in r["overrides"].items())
            runs.append(f"**{TRAINER_NAMES[r['trainer']]}** ({verdict(r)}). Recipe `{r['recipe']}`, tiny-model "
                        f"overrides `{overrides}`; the full command:\n\n```\n{' '.join(r['command'])}\n```\n\n"
                        "Held-out answers (the first ones, then misses of the fine-tuned model, if any):\n\n"
                        + "\n".join(samples_table(r)) + "\n")
        sections.append(f"## {task}\n\nTargets on the held-out split: {targets}"
                        + (f"; {margins}" if margins else "") + ".\n\n"
                        + "\n".join(metrics_table(task, task_results)) + "\n\n" + "\n".join(runs))

    report = f"""# qwenvl-recipes demo: tiny models learn through both trainers

Each task's synthetic data went through the converter CLI, then the task's recipe was trained through each
trainer's own CLI (`llamafactory-cli train`, `swift sft`) on a tiny random Qwen-VL checkpoint, then
`python -m eval run` scored the base model and the fine-tuned adapter on the held-out split. The baseline
gives the most frequent training answer for every image (`python -m eval score`): a model that ignores the
image can reach it, so only a model above it has learned to look. The forgery recipes (the forgery head is a
custom module) run through `qvr-llamafactory train` and `swift sft` with their plugin; their callback keeps the checkpoint with the
best val AUROC, which is then scored on a test split that neither training nor that choice saw.

**What this shows:** our converters, recipes, adapter loading, parsers and metrics are on the path of a
model that gets better at its task, in both trainers, from the same files users run.
**What it cannot show:** how well a real checkpoint does. These models are random and tiny (2 layers of
width 64, a 2-block ViT) and the data is synthetic and simple; the overrides (learning rate, steps, a
trained output layer) are for random tiny models only. Point the recipes at the real checkpoints for real
results. How the tasks and overrides were chosen: docs/learning.md.

## Training loss

![training loss](loss.png)

{chr(10).join(loss_table(results))}

{chr(10).join(sections)}
Every figure is in `summary.json`. Base vs fine-tuned sample by sample (`eval compare`):
{", ".join(f"[{r['task']} {TRAINER_NAMES[r['trainer']]}](compare_{r['task']}_{r['trainer']}/report.md)"
           for r in results)}. Training and eval logs, data and adapters: `{_shown(work)}/<task>/`.
The demo took {wall_seconds / 60:.1f} min.
"""
    path = out / "README.md"
    write_text_atomic(path, report)
    return path


def summary(results: list[dict], wall_seconds: float) -> dict:
    keys = ("base", "tuned", "baseline", "baseline_answer", "command", "recipe", "model", "overrides", "targets",
            "baseline_margin", "missed_targets", "train_seconds", "eval_seconds", "loss_history")
    tasks: dict = {}
    for r in results:
        tasks.setdefault(r["task"], {})[r["trainer"]] = {k: r[k] for k in keys}
    return {"wall_seconds": round(wall_seconds, 1), "tasks": tasks}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    parser.add_argument("--work", default=".cache/demo", help="data, checkpoints and eval runs (default .cache/demo)")
    parser.add_argument("--task", action="append", choices=sorted(TASKS),
                        help=f"repeatable; default: {', '.join(DEMO_TASKS)}")
    parser.add_argument("--trainer", action="append", choices=TRAINERS, help="repeatable; default: both")
    args = parser.parse_args(argv)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    results = []
    for task in args.task or DEMO_TASKS:
        for trainer in args.trainer or TRAINERS:
            print(f"[{task} / {trainer}] convert, train {TASKS[task].recipes[trainer]}, evaluate", flush=True)
            result = run_learning(task, trainer, work / task)
            print(f"    {verdict(result)}; tuned " + json.dumps({k: round(result['tuned'][k], 3)
                  for k in REPORT_METRICS[TASKS[task].eval_task] if k in result["tuned"]}), flush=True)
            run_logged([sys.executable, "-m", "eval", "compare", result["eval_dirs"]["base"],
                        result["eval_dirs"]["tuned"], "--out", str(out / f"compare_{task}_{trainer}"),
                        "--names", "base", f"{TRAINER_NAMES[trainer]} fine-tuned"],
                       out / "logs" / f"compare_{task}_{trainer}.log")
            results.append(result)
    wall = time.monotonic() - started
    plot_losses(results, out / "loss.png")
    write_text_atomic(out / "summary.json", json.dumps(summary(results, wall), indent=1) + "\n")
    report = write_report(out, work, results, wall)
    print(f"\nDemo report: {report}")
    missed = [f"{r['task']} / {r['trainer']}: {'; '.join(r['missed_targets'])}" for r in results
              if r["missed_targets"]]
    for line in missed:
        print(f"MISSED {line}", file=sys.stderr)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
