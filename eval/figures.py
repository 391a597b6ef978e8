"""Forgery pictures: the head's predicted map over an image (beside its mask when there is one), and the ROC and
precision-recall curves of P(fake). `eval run --task forgery` and `eval predict` draw with these functions."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from PIL import Image

from qwenvl_recipes.io import atomic_open


def _save(fig, path: Path) -> None:
    with atomic_open(Path(path), "wb") as f:
        fig.savefig(f, format="png", dpi=100)
    plt.close(fig)


def heatmap_overlay(image_path: str | Path, heatmap: np.ndarray, path: Path, *, title: str,
                    mask_path: str | Path | None = None) -> None:
    """One PNG: the image, its mask (when given), and the predicted map (probabilities, stretched over the image
    frame as the head's maps are) laid over the image."""
    with Image.open(image_path) as source:
        image = source.convert("RGB")
    panels = [("image", np.asarray(image), None)]
    if mask_path is not None:
        with Image.open(mask_path) as mask:
            panels.append(("mask", np.asarray(mask.convert("L").resize(image.size, Image.NEAREST)), "gray"))
    stretched = Image.fromarray(np.asarray(heatmap, dtype=np.float32)).resize(image.size, Image.BILINEAR)
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.2 * (len(panels) + 1), 3.4), squeeze=False)
    for ax, (name, picture, cmap) in zip(axes[0], panels):
        ax.imshow(picture, cmap=cmap)
        ax.set_title(name, fontsize=9)
    ax = axes[0][-1]
    ax.imshow(np.asarray(image))
    shown = ax.imshow(np.asarray(stretched), cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
    ax.set_title("predicted map", fontsize=9)
    fig.colorbar(shown, ax=ax, fraction=0.046, pad=0.04)
    for ax in axes[0]:
        ax.set_axis_off()
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    _save(fig, path)


def roc_pr_curves(labels: list[int], scores: list[float], roc_path: Path, pr_path: Path, *,
                  auroc: float | None, ap: float | None) -> bool:
    """ROC and precision-recall curves of P(fake) as two PNGs; False (nothing drawn) when the labels hold one class,
    where neither curve is defined."""
    from sklearn.metrics import precision_recall_curve, roc_curve

    if len(set(labels)) < 2:
        return False
    fpr, tpr, _ = roc_curve(labels, scores)
    precision, recall, _ = precision_recall_curve(labels, scores)
    # as scikit-learn draws them: ROC through its points, precision-recall as steps; dashed, a random ranking
    for path, xs, ys, style, (xlabel, ylabel), title, chance in (
            (roc_path, fpr, tpr, "default", ("false positive rate", "true positive rate"), f"ROC, AUROC {auroc:.3f}",
             ([0, 1], [0, 1])),
            (pr_path, recall, precision, "steps-post", ("recall", "precision"), f"precision-recall, AP {ap:.3f}",
             ([0, 1], [sum(labels) / len(labels)] * 2))):
        fig, ax = plt.subplots(figsize=(4, 4))
        ax.plot(xs, ys, drawstyle=style)
        ax.plot(*chance, linestyle="--", color="grey", linewidth=0.8)
        ax.set(xlim=(0, 1), ylim=(0, 1.02), xlabel=xlabel, ylabel=ylabel, title=title)
        fig.tight_layout()
        _save(fig, path)
    return True


FIGURE_DIR = "figures"
HEATMAP_SAMPLES = 2  # of each class: the first fakes with a mask and the first real images


def forgery_run_figures(out: Path, metrics: dict, judged: list[dict], samples: list, scorer=None) -> list[str]:
    """<out>/figures/ (replaced whole): roc.png and pr.png of the judged P(fake), and for a checkpoint whose mode has
    a head (`scorer`: eval.infer.ForgeryHeadScorer) the image / mask / predicted map of a few images, heatmap_<n>.png.
    Returns the paths drawn, relative to `out`."""
    from eval.predict import score_rows
    from qwenvl_recipes.io import staged_dir

    drawn = []
    with staged_dir(Path(out) / FIGURE_DIR) as staging:
        if roc_pr_curves([s["label"] for s in judged], [s["score"] for s in judged], staging / "roc.png",
                         staging / "pr.png", auroc=metrics.get("auroc"), ap=metrics.get("ap")):
            drawn += [f"{FIGURE_DIR}/roc.png", f"{FIGURE_DIR}/pr.png"]
        if scorer is not None and scorer.modules.head is not None:
            fakes = [s for s in samples if s.extra.get("label") == 1 and s.extra.get("mask")]
            reals = [s for s in samples if s.extra.get("label") == 0]
            chosen = fakes[:HEATMAP_SAMPLES] + reals[:HEATMAP_SAMPLES]
            rows = [{"messages": s.prompt, "images": s.images, "label": s.extra["label"],
                     "mask": s.extra.get("mask")} for s in chosen]
            for number, (sample, record) in enumerate(zip(chosen, score_rows(scorer, rows)), 1):
                name = f"heatmap_{number}.png"
                truth = "fake" if sample.extra["label"] else "real"
                heatmap_overlay(sample.images[0], record["heatmap"], staging / name, mask_path=sample.extra.get("mask"),
                                title=f"{sample.id} ({truth}): P(fake) {record['score']:.3f}")
                drawn.append(f"{FIGURE_DIR}/{name}")
    return drawn


def forgery_report(metrics: dict, figures: list[str]) -> str:
    """report.md of a forgery run: the headline metrics and its pictures."""
    lines = [f"# forgery: {metrics['run']['model']}" + (f" + {metrics['run']['adapter']}"
                                                          if metrics["run"].get("adapter") else ""), "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {key} | {'n/a' if metrics.get(key) is None else f'{metrics[key]:.4f}'} |"
              for key in ("auroc", "ap", "f1", "accuracy", "parse_fail_rate")]
    lines += ["", f"{metrics['n']} images; score: {metrics['convention']['score_source']}", ""]
    if not any(f.endswith("roc.png") for f in figures):
        lines += ["No ROC / precision-recall curve: the labels hold one class.", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
