"""Metrics from a predictions file: one JSON object a line with `prediction` and `reference` text,
optional `id`, `image_size` [w, h] (grounding) and `score` = P(fake) (forgery).

`score_records` is shared by `eval run` and `eval score`; both write <out>/metrics.json (flat: the
task's metric keys plus `task`, `n`, `convention`, `failure_kinds`) and <out>/samples.jsonl (one
judgement a line: id, correct, failure kind, task fields) that `eval compare` reads."""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from converters.boxes import MODEL_FAMILIES, default_pixels
from converters.registry import TASK_NAMES
from qwenvl_recipes.io import InputError, os_error_cause, read_jsonl, write_json_atomic, write_jsonl_atomic
from eval.metrics.caption import caption_failure, caption_scores
from eval.metrics.forgery import forgery_metrics
from eval.metrics.grounding import grounding_failure, grounding_metrics, iou
from eval.metrics.microscopy import judge_move, microscopy_metrics, reference_move
from eval.parse import BoxConvention, parse_json_answer, parse_real_fake

# The headline numbers of each task, in report order.
HEADLINE = {
    "caption": ("exact_match", "colour_acc", "shape_acc", "background_acc", "bleu_1", "bleu_2", "bleu_3", "bleu_4",
                "cider", "rouge_l", "meteor", "spice"),
    "grounding": ("acc@0.5", "acc@0.75", "miou", "parse_fail_rate"),
    "microscopy": ("json_valid_rate", "direction_acc", "distance_mae", "exact_match"),
    "forgery": ("auroc", "ap", "f1", "accuracy", "parse_fail_rate"),
}


@dataclass(frozen=True)
class ScoreSettings:
    family: str
    min_pixels: int | None = None  # None: the family's recipe default (converters.boxes.default_pixels)
    max_pixels: int | None = None
    # How the converter rendered the reference boxes for this file, which is also how `eval run` feeds
    # the model its images (converters.geometry resize paths), and the checkpoint processor limits
    # that the llamafactory path applies (None: the official checkpoints').
    resize_path: str = "hf"
    processor_pixels: tuple[int, int] | None = None
    real_word: str = "real"
    fake_word: str = "fake"
    java_metrics: bool = True

    def __post_init__(self):
        if self.family not in MODEL_FAMILIES:
            raise ValueError(f"unknown model family {self.family!r}; expected one of {MODEL_FAMILIES}")

    def box_convention(self) -> BoxConvention:
        default_min, default_max = default_pixels(self.family)
        return BoxConvention(self.family, self.min_pixels or default_min, self.max_pixels or default_max,
                             self.resize_path, tuple(self.processor_pixels) if self.processor_pixels else None)


def _where(record: dict) -> str:
    return f"{record['where']} (id {record['id']!r})"


def _score_caption(records: list[dict], settings: ScoreSettings):
    predictions = {r["id"]: r["prediction"] for r in records}
    references = {r["id"]: r["reference"] if isinstance(r["reference"], list) else [r["reference"]]
                  for r in records}
    corpus, per_id = caption_scores(predictions, references, java_metrics=settings.java_metrics)
    samples = []
    for r in records:
        failure = caption_failure(r["prediction"], references[r["id"]])
        samples.append({"id": r["id"], "correct": None, "failure": failure, **per_id[r["id"]]})
    convention = ("pycocoevalcap BLEU/CIDEr-D/ROUGE-L on a pure-Python PTB-style tokenization "
                  "(lower-cased, punctuation removed); all references of an image pooled")
    return corpus, samples, convention


def _score_grounding(records: list[dict], settings: ScoreSettings):
    convention = settings.box_convention()
    sized = [r.get("image_size") is not None for r in records]
    if any(sized) and not all(sized):
        raise ValueError("grounding predictions: give image_size on every line or on none")
    if not all(sized) and settings.family == "qwen2_5_vl":
        raise ValueError("grounding predictions for qwen2_5_vl need image_size [w, h] on every line: its boxes "
                         "are pixels of the resized image, which depends on the original size")
    ious, parsed, samples = [], [], []
    for r in records:
        # Without sizes, 0..1000 boxes are scored in their own units: IoU is unchanged by the
        # per-axis scaling to pixels (up to rounding).
        size = tuple(r["image_size"]) if all(sized) else (1000, 1000)
        reference = convention.parse(r["reference"], size)
        if not reference:
            raise ValueError(f"{_where(r)}: no box in the reference answer {r['reference']!r}")
        predicted = convention.parse(r["prediction"], size)
        value = iou(predicted[0], reference[0]) if predicted else 0.0
        ious.append(value)
        parsed.append(bool(predicted))
        samples.append({"id": r["id"], "correct": value >= 0.5, "iou": value,
                        "failure": grounding_failure(r["prediction"], predicted, reference[0], size),
                        "pred_box": predicted[0].as_list() if predicted else None,
                        "ref_box": reference[0].as_list(), "image_size": list(size)})
    units = "original-image pixels" if all(sized) else "the model's 0..1000 units (no image_size given)"
    statement = {"family": settings.family, "boxes": convention.describe(), "scored_in": units,
                 "box_used": "first box of each answer (references and answers read the same way)"}
    return grounding_metrics(ious, parsed), samples, statement


def _score_microscopy(records: list[dict], settings: ScoreSettings):
    judged, ref_distances, valid, samples = [], [], [], []
    for r in records:
        ref_direction, ref_distance = reference_move(parse_json_answer(r["reference"]), _where(r))
        answer = parse_json_answer(r["prediction"])
        j = judge_move(answer, ref_direction, ref_distance)
        judged.append(j)
        ref_distances.append(ref_distance)
        valid.append(answer.error is None)
        samples.append({"id": r["id"], "correct": j["exact"], "failure": j["failure"],
                        "direction_ok": j["direction_ok"], "distance": j["distance"],
                        "ref_direction": ref_direction, "ref_distance": ref_distance})
    convention = ('JSON object {"direction": "+|-", "distance": N} (``` fences allowed); distance_mae over '
                  "answers with a numeric distance, the other rates over all answers")
    return microscopy_metrics(judged, ref_distances, valid), samples, convention


def _score_forgery(records: list[dict], settings: ScoreSettings):
    has_score = [r.get("score") is not None for r in records]
    if any(has_score) and not all(has_score):
        raise ValueError("forgery predictions: give score on every line or on none")
    labels, scores, answers, samples = [], [], [], []
    for r in records:
        ref = parse_real_fake(r["reference"], settings.real_word, settings.fake_word)
        if r.get("label") is not None:
            label = int(r["label"])
            if ref.label is not None and ref.label != label:
                raise ValueError(f"{_where(r)}: 'label' {label} ({('real', 'fake')[label]}) contradicts its reference "
                                 f"{r['reference']!r}; one of them is wrong")
        elif ref.label is None:
            raise ValueError(f"{_where(r)}: reference {r['reference']!r} is neither "
                             f"{settings.real_word!r} nor {settings.fake_word!r}")
        else:
            label = ref.label
        answer = parse_real_fake(r["prediction"], settings.real_word, settings.fake_word)
        if all(has_score):
            score = float(r["score"])
        else:
            score = 0.5 if answer.label is None else float(answer.label)
        labels.append(label)
        scores.append(score)
        answers.append(answer.label)
        failure = answer.error or (None if answer.label == label else
                                   ("said fake for a real image" if label == 0 else "said real for a fake image"))
        samples.append({"id": r["id"], "correct": answer.label == label, "failure": failure,
                        "label": label, "score": score, "answer": answer.label})
    convention = {"words": {"real": settings.real_word, "fake": settings.fake_word},
                  "score_source": ("probability of the fake word vs the real word at the first answer token"
                                   if all(has_score) else "answer text (1 fake, 0 real, 0.5 neither)"),
                  "f1_accuracy_from": "answer text; an answer with neither word counts as wrong"}
    return forgery_metrics(labels, scores, answers), samples, convention


SCORERS = {"caption": _score_caption, "grounding": _score_grounding,
            "microscopy": _score_microscopy, "forgery": _score_forgery}


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_fields(row: dict, where: str) -> None:
    """The optional fields, each named in its error: image_size [w, h] of positive integers, label 0|1,
    score a probability in [0, 1]."""
    size = row.get("image_size")
    if size is not None and not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) and v > 0
                                                                                  for v in size)):
        raise ValueError(f"{where}: 'image_size' must be [width, height] of positive integers, got {size!r}")
    label = row.get("label")
    if label is not None and not (_is_int(label) and label in (0, 1)):
        raise ValueError(f"{where}: 'label' must be 0 (real) or 1 (fake), got {label!r}")
    score = row.get("score")
    if score is not None and not (isinstance(score, (int, float)) and not isinstance(score, bool)
                                  and math.isfinite(score) and 0.0 <= score <= 1.0):
        raise ValueError(f"{where}: 'score' must be P(fake), a number in [0, 1], got {score!r}")


def _is_text_list(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, str) for v in value)


def normalize_records(rows: list[dict], where: str) -> list[dict]:
    """Check the predictions-file fields and give every line an id (its line number by default) and its place
    in the file (`where`, what errors name)."""
    records, seen = [], {}
    for number, row in enumerate(rows, 1):
        line = f"{where}, line {number}"
        for field in ("prediction", "reference"):
            if field not in row:
                raise ValueError(f"{line}: missing field {field!r}")
        if not isinstance(row["prediction"], str):
            raise ValueError(f"{line}: 'prediction' must be a string")
        if not (isinstance(row["reference"], str) or _is_text_list(row["reference"])):
            raise ValueError(f"{line}: 'reference' must be the answer text (a list of texts for captions), got "
                             f"{row['reference']!r}")
        check_fields(row, line)
        record = dict(row)
        record["id"] = str(row.get("id", number))
        if record["id"] in seen:
            raise ValueError(f"{line}: duplicate id {record['id']!r} (line {seen[record['id']]})")
        seen[record["id"]] = number
        record["where"] = line
        records.append(record)
    return records


def score_records(task: str, records: list[dict], settings: ScoreSettings) -> tuple[dict, list[dict]]:
    """(metrics.json content, per-sample judgements)."""
    if task not in SCORERS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    if task != "caption":
        for record in records:
            if not isinstance(record["reference"], str):
                raise ValueError(f"{record['where']}: 'reference' must be one answer text for {task}, got a list")
    metrics, samples, convention = SCORERS[task](records, settings)
    for sample, record in zip(samples, records):  # what the report shows next to each judgement
        sample.update({k: record[k] for k in ("prediction", "reference", "images") if k in record})
    kinds = Counter(s["failure"] for s in samples if s["failure"])
    return ({**metrics, "task": task, "n": len(records), "model_family": settings.family,
             "convention": convention, "failure_kinds": dict(kinds.most_common())}, samples)


def write_scores(out: Path, metrics: dict, samples: list[dict]) -> None:
    try:
        write_jsonl_atomic(Path(out) / "samples.jsonl", samples)
        write_json_atomic(Path(out) / "metrics.json", metrics)
    except OSError as error:  # a full disk's error names no file
        raise InputError(f"{out}: cannot write samples.jsonl / metrics.json ({os_error_cause(error)})") from error


def score_predictions(task: str, family: str, predictions: Path, out: Path, **settings) -> dict:
    """`eval score`: metrics of any predictions file; writes <out>/metrics.json and samples.jsonl."""
    records = normalize_records(read_jsonl(predictions), str(predictions))
    if not records:
        raise InputError(f"{predictions}: no predictions in it")
    metrics, samples = score_records(task, records, ScoreSettings(family=family, **settings))
    write_scores(out, metrics, samples)
    return metrics
