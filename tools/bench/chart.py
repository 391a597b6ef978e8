"""The chart docs/performance.md opens with: samples/s of every variant of each benchmark's latest table (its
latest run with a baseline beside our recipes; a lever's A/B of our recipes alone does not replace it), one panel
per model and task, one colour per trainer; `python -m tools.bench report` redraws it from docs/performance.json."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

TRAINER_COLOURS = {"transformers": "#7f7f7f", "llamafactory": "#1f77b4", "ms-swift": "#ff7f0e",
                   "unsloth": "#2ca02c"}
TRAINER_NAMES = {"transformers": "seed loop (transformers)", "llamafactory": "LLaMA-Factory", "ms-swift": "ms-swift",
                 "unsloth": "Unsloth"}
MODEL_NAMES = {"qwen2_vl_2b": "Qwen2-VL-2B", "qwen2_5_vl_7b": "Qwen2.5-VL-7B", "qwen3_vl_2b": "Qwen3-VL-2B",
               "qwen3_vl_4b": "Qwen3-VL-4B", "qwen3_vl_8b": "Qwen3-VL-8B"}
# Records written before benchmarks had a task are the perf recipes' runs.
BASELINE_KINDS = ("seed_loop", "trainer_default", "trainer_tuned", "unsloth")
PERF_TASK = {"qwen2_vl_2b": "caption"}


@dataclass(frozen=True)
class Bar:
    label: str
    trainer: str
    samples_per_s: float


@dataclass(frozen=True)
class Panel:
    title: str
    bars: tuple[Bar, ...]


def task_of(record: dict) -> str:
    return record.get("task") or PERF_TASK.get(record["model"], "grounding")


def chart_panels(records: list[dict]) -> list[Panel]:
    """One panel per (model, task), in the order they first appear: the measured records of the latest run that
    holds a baseline (else of the latest run), each a bar labelled with its variant name (overrides included). A
    variant with overrides beside its own name in the same run is a lever's A/B, which the text gives: no bar."""
    latest, tables = {}, {}
    for r in records:
        latest[r["model"], task_of(r)] = r.get("run")
        if r["variant"] in BASELINE_KINDS:
            tables[r["model"], task_of(r)] = r.get("run")
    latest.update(tables)
    panels = []
    for (model, task), run in latest.items():
        rows = [r for r in records if (r["model"], task_of(r)) == (model, task) and r.get("run") == run
                and r.get("samples_per_s")]
        names = {r.get("name") for r in rows}
        rows = [r for r in rows if ":" not in (r.get("name") or "") or r["name"].split(":")[0] not in names]
        device = rows[-1].get("device") or ""
        when = (run or "").split(" (")[0]
        panels.append(Panel(f"{MODEL_NAMES.get(model, model)} {task}: {when}, {device}".rstrip(", "),
                            tuple(Bar(r.get("name") or r["variant"], r["trainer"], r["samples_per_s"])
                                  for r in rows)))
    return panels


def _wrapped(label: str, width: int = 40) -> str:
    """A long variant name on two lines, its overrides on the second: the panels share one left margin."""
    return label.replace(":", ":\n", 1) if len(label) > width else label


def write_chart(records: list[dict], path: Path) -> list[Panel]:
    """Draw chart_panels(records) as horizontal bars into the PNG `path`; returns the panels drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    panels = chart_panels(records)
    heights = [0.8 + 0.32 * len(p.bars) for p in panels]
    fig, axes = plt.subplots(len(panels), 1, figsize=(9, sum(heights) + 0.6), squeeze=False,
                             gridspec_kw={"height_ratios": heights})
    for ax, panel in zip(axes[:, 0], panels):
        ys = range(len(panel.bars))
        ax.barh(list(ys), [b.samples_per_s for b in panel.bars],
                color=[TRAINER_COLOURS[b.trainer] for b in panel.bars])
        ax.set_yticks(list(ys), [_wrapped(b.label) for b in panel.bars], fontsize=7)
        ax.invert_yaxis()
        for y, bar in zip(ys, panel.bars):
            ax.text(bar.samples_per_s, y, f" {bar.samples_per_s:.1f}", va="center", fontsize=7)
        ax.set_title(panel.title, fontsize=8, loc="left")
        ax.tick_params(axis="x", labelsize=7)
        ax.margins(x=0.12)
    axes[-1, 0].set_xlabel("samples/s (higher is faster)", fontsize=8)
    trainers = [t for t in TRAINER_COLOURS if any(b.trainer == t for p in panels for b in p.bars)]
    fig.legend(handles=[Patch(color=TRAINER_COLOURS[t], label=TRAINER_NAMES[t]) for t in trainers],
               loc="upper right", fontsize=7, ncol=len(trainers))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / (sum(heights) + 0.6)))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return panels
