"""`eval run`: generate answers for a converter output split, write predictions as they come (resumable),
then score them (metrics.json, samples.jsonl)."""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm

from converters.boxes import MODEL_FAMILIES, default_pixels
from eval.data import find_split_file, load_samples, read_manifest_options
from eval.io import read_json, write_json_atomic, write_text_atomic
from eval.score import TASKS, ScoreSettings, normalize_records, score_records, write_scores

BACKEND_NAMES = ("transformers", "vllm")


def read_done(predictions: Path) -> list[dict]:
    """Predictions already written; a last line cut short by an interruption is dropped from the file."""
    if not predictions.exists():
        return []
    done, text = [], predictions.read_text(encoding="utf-8")
    lines = text.splitlines(keepends=True)
    for number, line in enumerate(lines, 1):
        try:
            done.append(json.loads(line))
        except json.JSONDecodeError:
            if number != len(lines):
                raise ValueError(f"{predictions}:{number}: corrupt line in the middle of the file") from None
            write_text_atomic(predictions, "".join(lines[:-1]))
    return done


def _check_same_run(out: Path, run_info: dict) -> None:
    path = out / "run.json"
    if path.exists():
        before = read_json(path)
        changed = {k: (before.get(k), v) for k, v in run_info.items() if before.get(k) != v}
        if changed:
            raise ValueError(f"{out} holds predictions of another run (changed: {changed}); "
                             "use another --out or remove that directory")
    write_json_atomic(path, run_info)


def _family_settings(options: dict, data_file: Path) -> tuple[str, int, int]:
    family = options.get("model")
    if family not in MODEL_FAMILIES:
        raise ValueError(f"{data_file.parent / 'manifest.json'}: options.model must be one of {MODEL_FAMILIES}, "
                         f"got {family!r}")
    default_min, default_max = default_pixels(family)
    return family, int(options.get("min_pixels") or default_min), int(options.get("max_pixels") or default_max)


def run_eval(task: str, model: str, data: str | Path, out: str | Path, *, adapter: str | None = None,
             split: str | None = None, limit: int | None = None, batch_size: int = 4, max_new_tokens: int = 128,
             backend: str = "transformers", device: str | None = None, dtype: str | None = None,
             java_metrics: bool = True) -> dict:
    """Generate, write <out>/predictions.jsonl (resuming), score; returns the metrics.json content."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {TASKS}")
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}; expected one of {BACKEND_NAMES}")
    out = Path(out)
    data_file = find_split_file(Path(data), split)
    options = read_manifest_options(data_file)
    family, min_pixels, max_pixels = _family_settings(options, data_file)
    words = (options.get("real_word", "real"), options.get("fake_word", "fake"))
    samples = load_samples(data_file, task, limit)

    if backend == "vllm":
        from eval.infer import VllmGenerator
        generator = VllmGenerator(model, adapter, min_pixels=min_pixels, max_pixels=max_pixels,
                                  max_images=max((len(s.images) for s in samples), default=1))
    else:
        from eval.infer import TransformersGenerator
        generator = TransformersGenerator(model, adapter, min_pixels=min_pixels, max_pixels=max_pixels,
                                          device=device, dtype=dtype)
    if generator.family != family and task == "grounding":
        raise ValueError(f"{data_file} was rendered for {family} boxes but --model is a {generator.family} model")

    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, {"task": task, "model": str(model), "adapter": str(generator.adapter or ""),
                          "data_file": str(data_file.resolve()), "model_family": generator.family,
                          "data_family": family, "min_pixels": min_pixels, "max_pixels": max_pixels,
                          "max_new_tokens": max_new_tokens, "backend": backend})
    predictions = out / "predictions.jsonl"
    done_ids = {row["id"] for row in read_done(predictions)}
    todo = [s for s in samples if s.id not in done_ids]
    score_words = words if task == "forgery" and backend == "transformers" else None
    with open(predictions, "a", encoding="utf-8") as f, \
            tqdm(total=len(samples), initial=len(samples) - len(todo), desc=f"eval {task}", unit="sample") as bar:
        for start in range(0, len(todo), batch_size):
            batch = todo[start:start + batch_size]
            for sample, generation in zip(batch, generator.generate(batch, max_new_tokens, score_words)):
                row = {"id": sample.id, "prediction": generation.text, "reference": sample.reference,
                       "images": sample.images, "image_size": sample.image_size()}
                if generation.score is not None:
                    row["score"] = generation.score
                if task == "forgery" and "label" in sample.extra:
                    row["label"] = sample.extra["label"]
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                f.flush()  # every answer is kept if the run stops here
            bar.update(len(batch))

    wanted = {s.id for s in samples}
    rows = [row for row in read_done(predictions) if row["id"] in wanted]
    records = normalize_records(rows, str(predictions))
    settings = ScoreSettings(family=family, min_pixels=min_pixels, max_pixels=max_pixels,
                             reference_resize_path=options.get("resize_path", "hf"), real_word=words[0],
                             fake_word=words[1], java_metrics=java_metrics)
    metrics, judged = score_records(task, records, settings)
    metrics["run"] = read_json(out / "run.json")
    write_scores(out, metrics, judged)
    return metrics
