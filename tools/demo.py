"""The whole product on a laptop: tiny model + sample data -> convert -> train with LLaMA-Factory and with
ms-swift (the same recipe files users run) -> evaluate base vs fine-tuned -> a markdown report.

    python -m tools.demo --out reports/demo        (what `make demo` runs)

Everything is offline: the tiny Qwen2-VL checkpoint and the COCO-format sample data are built locally.
Only the model path, data path, output dir, step count and CPU precision are overridden on the recipes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from converters.files import write_text_atomic
from tools.synthetic_data import make_coco_caption
from tools.tiny_models import ensure_tiny_models
from tools.trainers import (CPU_OVERRIDES, OFFLINE_OVERRIDES, REPO_ROOT, loss_history, run_logged, train_command,
                            trainer_env)

FAMILY = "qwen2_vl"
RECIPES = {
    "llamafactory": REPO_ROOT / "recipes/caption/llamafactory/qwen2_vl_2b_lora.yaml",
    "swift": REPO_ROOT / "recipes/caption/swift/qwen2_vl_2b_lora.yaml",
}


def demo_overrides(trainer: str, model_dir: Path, data_dir: Path, output_dir: Path, steps: int) -> dict:
    """Recipe keys the demo changes: where things are, how long to train, CPU precision, offline. Nothing else."""
    common = {"output_dir": output_dir, "max_steps": steps, "logging_steps": 1, "save_steps": steps,
              **OFFLINE_OVERRIDES[trainer]}
    if trainer == "llamafactory":
        return {"model_name_or_path": model_dir, "dataset_dir": data_dir, **common, **CPU_OVERRIDES[trainer]}
    return {"model": model_dir, "dataset": data_dir / "coco_caption_train.jsonl", **common, **CPU_OVERRIDES[trainer]}


def adapter_dir(trainer: str, output_dir: Path) -> Path:
    """LLaMA-Factory saves the final adapter in output_dir; ms-swift in its last checkpoint-N."""
    if trainer == "llamafactory":
        return output_dir
    checkpoints = sorted(output_dir.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    if not checkpoints:
        raise FileNotFoundError(f"no checkpoint-* under {output_dir}")
    return checkpoints[-1]


def plot_losses(histories: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    for trainer, history in histories.items():
        ax.plot([s for s, _ in history], [loss for _, loss in history], marker="o", markersize=3, label=trainer)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("training loss")
    ax.set_title("Tiny Qwen2-VL, caption LoRA recipe")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run_eval_cli(model_dir: Path, data_dir: Path, out: Path, adapter: Path | None, limit: int, log: Path) -> dict:
    command = [sys.executable, "-m", "eval", "run", "--task", "caption", "--model", str(model_dir),
               "--data", str(data_dir), "--out", str(out), "--limit", str(limit), "--max-new-tokens", "16",
               "--batch-size", "4", "--no-java-metrics"]
    if adapter is not None:
        command += ["--adapter", str(adapter)]
    run_logged(command, log)
    return json.loads((out / "metrics.json").read_text(encoding="utf-8"))


def write_report(out: Path, timings: dict, histories: dict, metrics: dict, commands: dict) -> Path:
    rows = ["| model | BLEU-4 | CIDEr | ROUGE-L |", "|---|---|---|---|"]
    for name, m in metrics.items():
        rows.append(f"| {name} | {m['bleu_4']:.4f} | {m['cider']:.4f} | {m['rouge_l']:.4f} |")
    loss_rows = ["| trainer | first loss | last loss | steps | wall time |", "|---|---|---|---|---|"]
    for trainer, history in histories.items():
        loss_rows.append(f"| {trainer} | {history[0][1]:.4f} | {history[-1][1]:.4f} | {history[-1][0]} "
                         f"| {timings[trainer]:.0f} s |")
    command_lines = "\n".join(f"{trainer}:\n\n```\n{' '.join(cmd)}\n```\n" for trainer, cmd in commands.items())
    report = f"""# qwenvl-recipes demo

A tiny random Qwen2-VL (2 layers, hidden 64, real Qwen tokenizer ids) was fine-tuned on synthetic COCO-format
captions with the seed caption recipe, once through LLaMA-Factory and once through ms-swift, then evaluated on
the synthetic validation split. Random weights and a few steps: the numbers prove the pipeline runs end to end,
not that the model learned to caption. Point the same recipes at `Qwen/Qwen2-VL-2B-Instruct` for real results.

## Training

![training loss](loss.png)

{chr(10).join(loss_rows)}

{command_lines}
## Evaluation (caption, synthetic val split)

{chr(10).join(rows)}

Base vs fine-tuned, sample by sample:
[LLaMA-Factory](compare_llamafactory/report.md), [ms-swift](compare_swift/report.md).

Data conversion took {timings['convert']:.1f} s; evaluation {timings['eval']:.0f} s. Logs are in `logs/`.
"""
    path = out / "README.md"
    write_text_atomic(path, report)
    return path


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="reports/demo", help="report folder (default reports/demo)")
    parser.add_argument("--work", default=".cache/demo", help="data, checkpoints and adapters (default .cache/demo)")
    parser.add_argument("--steps", type=int, default=60, help="optimizer steps per trainer (default 60)")
    parser.add_argument("--eval-limit", type=int, default=8, help="validation samples to evaluate (default 8)")
    args = parser.parse_args(argv)
    out, work = Path(args.out).resolve(), Path(args.work).resolve()
    logs = out / "logs"
    out.mkdir(parents=True, exist_ok=True)
    timings = {}

    print("[1/5] tiny model and sample data", flush=True)
    model_dir = ensure_tiny_models(REPO_ROOT / ".cache/tiny-models", [FAMILY])[FAMILY]
    source = make_coco_caption(work / "source", n=48, seed=0)

    print("[2/5] convert to LLaMA-Factory and ms-swift formats", flush=True)
    data_dir = work / "data/coco_caption"
    started = time.monotonic()
    run_logged([sys.executable, "-m", "converters", "coco-caption", "--input", str(source), "--out", str(data_dir),
                "--model", FAMILY, "--prompt", "COCO Yes:"], logs / "convert.log")
    run_logged([sys.executable, "-m", "converters", "check", str(data_dir)], logs / "check.log")
    timings["convert"] = time.monotonic() - started

    histories, adapters, commands = {}, {}, {}
    for number, trainer in enumerate(RECIPES, start=3):
        print(f"[{number}/5] train with {trainer}: {RECIPES[trainer].relative_to(REPO_ROOT)}", flush=True)
        output_dir = work / "outputs" / trainer
        command = train_command(trainer, RECIPES[trainer],
                                demo_overrides(trainer, model_dir, data_dir, output_dir, args.steps))
        commands[trainer] = command
        timings[trainer] = run_logged(command, logs / f"train_{trainer}.log", env=trainer_env(trainer))
        histories[trainer] = loss_history(trainer, output_dir)
        adapters[trainer] = adapter_dir(trainer, output_dir)
    plot_losses(histories, out / "loss.png")

    print("[5/5] evaluate base vs fine-tuned and write the report", flush=True)
    started = time.monotonic()
    runs = {"base": None, **adapters}
    metrics = {name: run_eval_cli(model_dir, data_dir, work / "eval" / name, adapter, args.eval_limit,
                                  logs / f"eval_{name}.log")
               for name, adapter in runs.items()}
    for trainer in adapters:
        run_logged([sys.executable, "-m", "eval", "compare", str(work / "eval/base"), str(work / "eval" / trainer),
                    "--out", str(out / f"compare_{trainer}"), "--names", "base", f"{trainer} LoRA"],
                   logs / f"compare_{trainer}.log")
    timings["eval"] = time.monotonic() - started
    report = write_report(out, timings, histories, metrics, commands)
    print(f"\nDemo report: {report}")
    print(f"Adapters: {', '.join(str(p) for p in adapters.values())}")
    return report


if __name__ == "__main__":
    main()
