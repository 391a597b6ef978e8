"""`eval compare`: a markdown report of two runs of the same task (metrics table, failure kinds, per-sample
disagreements) with PNG plots (metric bars; for grounding, images with true and predicted boxes)."""
from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
from PIL import Image, ImageDraw

from qwenvl_recipes.io import InputError, read_json, read_jsonl, write_text_atomic
from eval.score import HEADLINE

COLORS = {"reference": (0, 170, 0), "a": (220, 40, 40), "b": (40, 90, 230)}
# Metrics where lower is better; everything else in HEADLINE is higher-is-better.
LOWER_IS_BETTER = {"parse_fail_rate", "distance_mae"}


# The fields of a samples.jsonl line this report reads, per task (besides id, correct, failure).
SAMPLE_FIELDS = {"caption": ("cider",), "grounding": ("iou", "pred_box", "ref_box", "image_size"),
                 "microscopy": (), "forgery": ()}


def load_run(path: Path) -> dict:
    """A run dir of `eval run` / `eval score`: metrics.json and samples.jsonl, checked for what the report reads
    (errors name the file, line and field)."""
    path = Path(path)
    for name in ("metrics.json", "samples.jsonl"):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path}: no {name} (made by `eval run` or `eval score`)")
    metrics = read_json(path / "metrics.json", dict, "eval metrics")
    task = metrics.get("task")
    if task not in HEADLINE:
        raise InputError(f"{path / 'metrics.json'}: 'task' must be one of {', '.join(HEADLINE)}, got {task!r}")
    if not (isinstance(metrics.get("n"), int) and metrics["n"] > 0):
        raise InputError(f"{path / 'metrics.json'}: 'n' must be the number of samples scored, got {metrics.get('n')!r}")
    if not isinstance(metrics.get("failure_kinds"), dict):
        raise InputError(f"{path / 'metrics.json'}: 'failure_kinds' must be an object of counts, got "
                         f"{metrics.get('failure_kinds')!r}")
    samples = {}
    for number, sample in enumerate(read_jsonl(path / "samples.jsonl"), 1):
        for field in ("id", "correct", "failure", *SAMPLE_FIELDS[task]):
            if field not in sample:
                raise InputError(f"{path / 'samples.jsonl'}:{number}: missing field {field!r} (a {task} judgement "
                                 "has it)")
        if sample["id"] in samples:
            raise InputError(f"{path / 'samples.jsonl'}:{number}: duplicate id {sample['id']!r}")
        samples[sample["id"]] = sample
    return {"dir": path, "metrics": metrics, "samples": samples}


def sample_overlap_warning(a: dict, b: dict, names: tuple[str, str]) -> str | None:
    """Why the metrics of two runs are not over the same samples, or None when they are."""
    ids_a, ids_b = set(a["samples"]), set(b["samples"])
    if ids_a == ids_b:
        return None
    shared = len(ids_a & ids_b)
    if not shared:
        return (f"{names[0]} and {names[1]} share no sample ({len(ids_a)} and {len(ids_b)} ids): their metrics are "
                "over different data, so no difference is given")
    return (f"{len(ids_a - ids_b)} samples of {names[0]} and {len(ids_b - ids_a)} of {names[1]} are in one run only "
            f"({shared} shared): the metrics are over different samples")


def _cell(text, width: int = 70) -> str:
    """A markdown table cell: one line, pipes escaped, long text cut."""
    text = "" if text is None else str(text).replace("\n", "⏎")
    text = text if len(text) <= width else text[:width - 1] + "…"
    # No stray HTML tags or code spans inside the table.
    return text.replace("|", "\\|").replace("<", "&lt;").replace("`", "\\`")


def _fmt(value) -> str:
    if value is None:
        return "n/a"
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def _verdict(sample: dict, task: str) -> str:
    if task == "caption":
        return f"CIDEr {sample['cider']:.3f}" + (f"; {sample['failure']}" if sample["failure"] else "")
    extra = f" (IoU {sample['iou']:.2f})" if task == "grounding" and sample["pred_box"] is not None else ""
    return ("correct" if sample["correct"] else sample["failure"] or "wrong") + extra


def disagreements(a: dict, b: dict, task: str) -> list[str]:
    """Ids judged differently, most different first (captions: by |CIDEr A - CIDEr B|)."""
    common = [i for i in a if i in b]
    if task == "caption":
        differ = [i for i in common if abs(a[i]["cider"] - b[i]["cider"]) > 1e-9 or a[i]["failure"] != b[i]["failure"]]
        return sorted(differ, key=lambda i: -abs(a[i]["cider"] - b[i]["cider"]))
    return [i for i in common if a[i]["correct"] != b[i]["correct"] or a[i]["failure"] != b[i]["failure"]]


def plot_metrics(names: tuple[str, str], values: dict[str, tuple], path: Path) -> None:
    """Grouped bars; rates in [0, 1] and unbounded metrics (CIDEr, MAE) on separate axes."""
    groups = [[k for k, v in values.items() if all(x is None or 0 <= x <= 1 for x in v)],
              [k for k, v in values.items() if any(x is not None and not 0 <= x <= 1 for x in v)]]
    groups = [g for g in groups if g]
    fig, axes = plt.subplots(1, len(groups), figsize=(4 + 1.2 * sum(map(len, groups)), 3.6), squeeze=False,
                             gridspec_kw={"width_ratios": [len(g) for g in groups]})
    for ax, keys in zip(axes[0], groups):
        xs = range(len(keys))
        for offset, name, color, column in ((-0.2, names[0], COLORS["a"], 0), (0.2, names[1], COLORS["b"], 1)):
            heights = [values[k][column] or 0.0 for k in keys]
            bars = ax.bar([x + offset for x in xs], heights, width=0.4, label=name,
                          color=tuple(c / 255 for c in color))
            ax.bar_label(bars, labels=[_fmt(values[k][column]) for k in keys], fontsize=7, rotation=90,
                         padding=2)
        ax.set_xticks(list(xs), keys, rotation=30, ha="right", fontsize=8)
        if all(all(x is None or 0 <= x <= 1 for x in values[k]) for k in keys):
            ax.set_ylim(0, 1.25)
        else:
            ax.set_ylim(0, 1.3 * max([x for k in keys for x in values[k] if x is not None] + [1e-9]))
    axes[0][0].legend(fontsize=8, loc="upper left")
    fig.suptitle("metrics", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def draw_boxes(sample_a: dict, sample_b: dict, names: tuple[str, str], path: Path) -> bool:
    """The image with the true box (green) and each run's first box; False when the image is not there."""
    images = sample_a.get("images") or []
    if not images or not Path(images[0]).is_file() or sample_a["image_size"] is None:
        return False
    with Image.open(images[0]) as source:
        image = source.convert("RGB")
    # Scale small images up so the boxes stay visible in the report.
    scale = max(1.0, 320 / max(image.size))
    image = image.resize((round(image.width * scale), round(image.height * scale)))
    header = 42  # a white strip for the legend, readable whatever the image
    canvas = Image.new("RGB", (max(image.width, 200), image.height + header), "white")
    canvas.paste(image, (0, header))
    draw = ImageDraw.Draw(canvas)
    sx, sy = image.width / sample_a["image_size"][0], image.height / sample_a["image_size"][1]
    legend = [("true", sample_a["ref_box"], COLORS["reference"]),
              (names[0], sample_a["pred_box"], COLORS["a"]), (names[1], sample_b["pred_box"], COLORS["b"])]
    for row, (label, box, color) in enumerate(legend):
        if box is not None and box[2] > box[0] and box[3] > box[1]:
            draw.rectangle([box[0] * sx, header + box[1] * sy, box[2] * sx, header + box[3] * sy],
                           outline=color, width=3)
        draw.text((4, 2 + 13 * row), label if box is not None else f"{label}: no box", fill=color)
    canvas.save(path)
    return True


def compare_runs(run_a: str | Path, run_b: str | Path, out: str | Path, *, names: tuple[str, str] | None = None,
                 max_rows: int = 20, max_images: int = 4) -> Path:
    """Write <out>/report.md (+ PNGs) comparing two run dirs of `eval run` / `eval score`; returns its path."""
    a, b = load_run(Path(run_a)), load_run(Path(run_b))
    task = a["metrics"]["task"]
    if b["metrics"]["task"] != task:
        raise ValueError(f"cannot compare a {task} run with a {b['metrics']['task']} run ({a['dir']} and {b['dir']} "
                         "score different tasks)")
    names = names or (a["dir"].name, b["dir"].name)
    if names[0] == names[1]:
        names = (f"A:{names[0]}", f"B:{names[1]}")
    overlap = sample_overlap_warning(a, b, names)
    if overlap:
        print(f"warning: {overlap}", file=sys.stderr)
    disjoint = not set(a["samples"]) & set(b["samples"])
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)

    lines = [f"# {task}: {names[0]} vs {names[1]}", ""]
    lines += ["| run | directory | model | adapter | samples |", "|---|---|---|---|---|"]
    for name, run in zip(names, (a, b)):
        info = run["metrics"].get("run", {})
        lines.append(f"| {name} | `{run['dir']}` | {_cell(info.get('model', '—'))} | "
                     f"{_cell(info.get('adapter') or '—')} | {run['metrics']['n']} |")
    convention = a["metrics"].get("convention")
    if isinstance(convention, dict):
        lines += ["", "Convention:", ""] + [f"- {k}: {_cell(v, 10_000)}" for k, v in convention.items()]
    else:
        lines += ["", f"Convention: {_cell(convention, 10_000)}"]
    if b["metrics"].get("convention") != convention:
        lines += ["", (f"**Warning**: {names[1]} was scored under another convention: "
                       f"{_cell(b['metrics'].get('convention'), 10_000)}")]

    if overlap:
        lines += ["", f"**Warning**: {_cell(overlap, 10_000)}."]

    values = {k: (a["metrics"].get(k), b["metrics"].get(k)) for k in HEADLINE[task]
              if k in a["metrics"] or k in b["metrics"]}
    delta_header = "" if disjoint else f" Δ ({names[1]} − {names[0]}) |"
    lines += ["", "## Metrics", "", f"| metric | {names[0]} | {names[1]} |{delta_header}",
              "|---|---|---|" + ("" if disjoint else "---|")]
    for key, (va, vb) in values.items():
        row = f"| {key}{' (lower is better)' if key in LOWER_IS_BETTER else ''} | {_fmt(va)} | {_fmt(vb)} |"
        if not disjoint:
            delta = vb - va if va is not None and vb is not None else None
            better = "" if not delta else (" ↑" if (delta > 0) != (key in LOWER_IS_BETTER) else " ↓")
            row += f" {_fmt(delta)}{better} |"
        lines.append(row)
    plot_metrics(names, values, out / "metrics.png")
    lines += ["", "![metrics](metrics.png)"]

    kinds_a, kinds_b = a["metrics"]["failure_kinds"], b["metrics"]["failure_kinds"]
    kinds = sorted(set(kinds_a) | set(kinds_b), key=lambda k: -max(kinds_a.get(k, 0), kinds_b.get(k, 0)))
    lines += ["", "## Failure kinds", ""]
    if kinds:
        lines += [f"| failure | {names[0]} | {names[1]} | example answer ({names[0]}) | example answer ({names[1]}) |",
                  "|---|---|---|---|---|"]
        for kind in kinds:
            counts = [run["metrics"]["failure_kinds"].get(kind, 0) for run in (a, b)]
            cells = [f"{c} ({c / run['metrics']['n']:.0%})" for c, run in zip(counts, (a, b))]
            examples = [next((s.get("prediction") for s in run["samples"].values() if s["failure"] == kind), None)
                        for run in (a, b)]
            lines.append(f"| {_cell(kind)} | {cells[0]} | {cells[1]} | "
                         + " | ".join("—" if e is None else _cell(e, 50) for e in examples) + " |")
    else:
        lines.append("No failures in either run.")

    sa, sb = a["samples"], b["samples"]
    only = len(set(sa) ^ set(sb))
    differ = disagreements(sa, sb, task)
    lines += ["", "## Per-sample disagreements", "",
              f"{len(differ)} of {len(set(sa) & set(sb))} shared samples judged differently"
              + (f"; {only} samples are in one run only" if only else "")
              + (f" (first {max_rows} shown)" if len(differ) > max_rows else "") + "."]
    if differ:
        lines += ["", f"| id | reference | {names[0]} answer | {names[0]} | {names[1]} answer | {names[1]} |",
                  "|---|---|---|---|---|---|"]
        for i in differ[:max_rows]:
            ref = sa[i].get("reference")
            ref = ref[0] if isinstance(ref, list) else ref
            lines.append(f"| {_cell(i, 30)} | {_cell(ref, 50)} | {_cell(sa[i].get('prediction'))} | "
                         f"{_cell(_verdict(sa[i], task))} | {_cell(sb[i].get('prediction'))} | "
                         f"{_cell(_verdict(sb[i], task))} |")

    if task == "grounding":
        shown = [i for i in differ + [i for i in sa if i in sb and i not in differ]][:max_images]
        pictures = []
        for k, i in enumerate(shown):
            name = f"boxes_{k}.png"
            if draw_boxes(sa[i], sb[i], names, out / name):
                pictures.append(f"![{_cell(i, 30)}]({name})")
        lines += ["", "## Boxes", "", "green: true box, red: " + names[0] + ", blue: " + names[1] + ".", ""]
        lines += pictures or ["(images not found on this machine)"]

    report = out / "report.md"
    write_text_atomic(report, "\n".join(lines) + "\n")
    return report
