"""`eval predict`: a forgery checkpoint's verdict on images that have no labels, with the head's heatmaps.

    python -m eval predict --model BASE --checkpoint CKPT --images FOLDER|LIST.txt --out DIR

CKPT is a checkpoint of custom_modules.forgery (forgery_head.safetensors + forgery_settings.json, with its
adapters): a training output dir, a checkpoint-N or best_by_AUROC, from either trainer. Each image is scored as
`eval run --task forgery` scores it (eval.infer.ForgeryHeadScorer: the checkpoint's own mode, same prompt, same
image processing). DIR gets, whole or not at all:

    scores.jsonl   one line per image: image, p_fake (the mode's P(fake)), prediction (the checkpoint's answer
                   word: fake from its threshold on), lm_answer (modes with a language model: the answer word it
                   ranks first), head_prob, lm_prob, heatmap (the PNG below, or null in a mode without a head)
    heatmaps/      NNNNNN.png: the image and the head's predicted map over it (numbered in scores.jsonl order)

As a function: `ForgeryPredictor(model, checkpoint).score(images)` -> a list of ImageScore.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qwenvl_recipes.io import read_input_text, staged_dir, write_jsonl_atomic

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
SCORES_FILE = "scores.jsonl"
HEATMAP_DIR = "heatmaps"


def list_images(source: str | Path) -> list[Path]:
    """The images of a folder (its image files at any depth, in path order), or of a list file (one path a line,
    relative to the list's folder; blank lines and lines starting with # skipped)."""
    source = Path(source)
    if source.is_dir():
        images = sorted(p for p in source.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                        and not any(part.startswith(".") for part in p.relative_to(source).parts))
        if not images:
            raise ValueError(f"--images {source}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return images
    lines = read_input_text(source).splitlines()
    images = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path = Path(line) if Path(line).is_absolute() else source.parent / line
        if not path.is_file():
            raise ValueError(f"{source}, line {number}: {line} is not a file")
        images.append(path)
    if not images:
        raise ValueError(f"{source}: lists no image")
    return images


@dataclass
class ImageScore:
    image: str
    p_fake: float                 # the checkpoint mode's P(fake)
    prediction: str               # the checkpoint's answer word (fake from its threshold on)
    lm_answer: str | None         # modes with a language model: the answer word it gives the higher probability
    head_prob: float | None       # the detection head's P(fake) (modes with a head)
    lm_prob: float | None         # the language model's P(fake word) against the real word
    heatmap: np.ndarray | None    # mask_size x mask_size probabilities over the image frame (modes with a head)


def score_rows(scorer, rows: list[dict], batch_size: int = 4) -> list[dict]:
    """custom_modules.forgery.evaluate's records for converter-style rows, each with its heatmap, from an
    eval.infer.ForgeryHeadScorer (what `eval run` scores with)."""
    from custom_modules.forgery.evaluate import predict

    records, _, _ = predict(scorer.model, scorer.modules, scorer.processor, rows, batch_size=batch_size,
                            heatmaps=True)
    return records


class ForgeryPredictor:
    """A forgery checkpoint on a base model, scoring images: `ForgeryPredictor(model, checkpoint).score(paths)`."""

    def __init__(self, model: str, checkpoint: str | Path, *, prompt: str | None = None,
                 device: str | None = None):
        """prompt: the user turn, `<image>` where the image goes (default: the forgery converter's prompt with the
        checkpoint's words, which its language model was trained on)."""
        from converters.sources.forgery import ForgeryOptions
        from custom_modules.forgery.checkpoint import HEAD_FILE
        from eval.infer import ForgeryHeadScorer

        checkpoint = Path(checkpoint)
        if not (checkpoint / HEAD_FILE).is_file():
            raise ValueError(f"--checkpoint {checkpoint}: no {HEAD_FILE} (a custom_modules.forgery checkpoint: its "
                             "output dir, a checkpoint-N or best_by_AUROC)")
        self.scorer = ForgeryHeadScorer(model, checkpoint, device=device)
        words = ForgeryOptions(real_word=self.scorer.real_word, fake_word=self.scorer.fake_word)
        self.prompt = prompt or words.prompt

    @property
    def settings(self):
        return self.scorer.modules.settings

    def score(self, images: list[str | Path], batch_size: int = 4) -> list[ImageScore]:
        rows = [{"messages": [{"role": "user", "content": self.prompt}], "images": [str(image)], "label": 0,
                 "mask": None} for image in images]
        words = (self.scorer.real_word, self.scorer.fake_word)
        return [ImageScore(image=r["image"], p_fake=r["score"], prediction=self.scorer.decide(r["score"]),
                           lm_answer=None if r["lm_prob"] is None else words[r["lm_prob"] >= 0.5],
                           head_prob=r["head_prob"], lm_prob=r["lm_prob"], heatmap=r["heatmap"])
                for r in score_rows(self.scorer, rows, batch_size)]


def check_out(out: str | Path) -> Path:
    """`out`, when it is new, empty or an earlier `eval predict` output (which the new one replaces)."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir()) and not (out / SCORES_FILE).is_file()):
        raise ValueError(f"--out {out}: exists and is not an `eval predict` output; give a new folder")
    return out


def write_predictions(out: str | Path, scores: list[ImageScore], mode: str) -> Path:
    """<out>/scores.jsonl and <out>/heatmaps/, replacing an earlier `eval predict` output there; returns the
    scores file. A folder holding anything else is refused."""
    from eval.figures import heatmap_overlay

    out = check_out(out)
    with staged_dir(out) as staging:
        rows = []
        for number, score in enumerate(scores, 1):
            heatmap = None
            if score.heatmap is not None:
                heatmap = f"{HEATMAP_DIR}/{number:06d}.png"
                (staging / HEATMAP_DIR).mkdir(exist_ok=True)
                heatmap_overlay(score.image, score.heatmap, staging / heatmap,
                                title=f"{Path(score.image).name}: P(fake) {score.p_fake:.3f}, {score.prediction}")
            rows.append({"image": score.image, "p_fake": score.p_fake, "prediction": score.prediction,
                         "lm_answer": score.lm_answer, "head_prob": score.head_prob, "lm_prob": score.lm_prob,
                         "heatmap": heatmap, "mode": mode})
        write_jsonl_atomic(staging / SCORES_FILE, rows)
    return out / SCORES_FILE


def run_predict(model: str, checkpoint: str | Path, images: str | Path, out: str | Path, *,
                prompt: str | None = None, batch_size: int = 4, device: str | None = None) -> Path:
    """`eval predict`: score every image of `images` (a folder or a list file) and write `out`."""
    check_out(out)
    paths = list_images(images)
    predictor = ForgeryPredictor(model, checkpoint, prompt=prompt, device=device)
    return write_predictions(out, predictor.score(paths, batch_size), predictor.settings.mode)


def summary(scores_file: Path) -> dict:
    """What `eval predict` prints: counts per answer and where the files are."""
    rows = [json.loads(line) for line in scores_file.read_text(encoding="utf-8").splitlines()]
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["prediction"]] = counts.get(row["prediction"], 0) + 1
    return {"images": len(rows), "predictions": counts, "scores": str(scores_file),
            "heatmaps": sum(row["heatmap"] is not None for row in rows)}
