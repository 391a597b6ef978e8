"""`eval run`: generate answers for a converter output split, write predictions as they come (resumable),
then score them (metrics.json, samples.jsonl)."""
from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from converters.boxes import MODEL_FAMILIES
from converters.geometry import PROCESSOR_PIXELS
from converters.options import checkpoint_processor_pixels
from converters.registry import TASK_NAMES
from eval.infer import resolve_adapter
from eval.data import choose_data_file, load_samples, read_manifest_entry, trainer_resize_path
from qwenvl_recipes.io import read_json, write_json_atomic, write_text_atomic
from eval.score import ScoreSettings, normalize_records, score_records, write_scores

def forgery_head(adapter_dir: Path) -> Path | None:
    """The forgery head weights of a custom_modules.forgery checkpoint dir, if it is one."""
    from custom_modules.forgery.checkpoint import HEAD_FILE  # imports torch: only for forgery runs

    return adapter_dir / HEAD_FILE if (adapter_dir / HEAD_FILE).is_file() else None


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


def data_settings(task: str, data_file: Path, entry: dict, *, min_pixels: int | None = None,
                  max_pixels: int | None = None, resize_path: str | None = None,
                  java_metrics: bool = True) -> ScoreSettings:
    """Family, pixel limits, resize path and words from the converter manifest entry (flags override)."""
    where = f"{data_file.parent / 'manifest.json'} entry for {data_file.name}"
    if entry.get("task") not in (None, task):
        raise ValueError(f"{where}: holds {entry['task']!r} data (converter {entry.get('converter')!r}), not {task!r} "
                         f"data for --task {task}")
    options = entry.get("options", {})
    family = options.get("model")
    if family not in MODEL_FAMILIES:
        raise ValueError(f"{where}: options.model must be one of {MODEL_FAMILIES}, got {family!r}")
    return ScoreSettings(family=family, min_pixels=min_pixels or options.get("min_pixels"),
                         max_pixels=max_pixels or options.get("max_pixels"),
                         resize_path=resize_path or trainer_resize_path(data_file, entry),
                         processor_pixels=options.get("processor_pixels"),
                         real_word=options.get("real_word") or "real", fake_word=options.get("fake_word") or "fake",
                         java_metrics=java_metrics)


def with_model_processor(settings: ScoreSettings, task: str, model: str | Path, data_file: Path,
                         samples: list) -> ScoreSettings:
    """The settings with the evaluated checkpoint's own image processor limits, which LLaMA-Factory's resize
    applies after its own, so eval feeds images at the size training did (a local model whose limits differ
    from the official checkpoints', as the tiny test models' do). Qwen2.5-VL grounding references are absolute
    pixels rendered under the limits the converter was given: an image those limits resize differently is an
    error naming the record, not a silent rescale."""
    if settings.resize_path != "llamafactory":
        return settings
    own = checkpoint_processor_pixels(model)
    expected = tuple(settings.processor_pixels or PROCESSOR_PIXELS[settings.family])
    if own is None or own == expected:
        return settings
    updated = replace(settings, processor_pixels=own)
    if task == "grounding" and settings.family == "qwen2_5_vl":
        written, fed = settings.box_convention(), updated.box_convention()
        for sample in samples:
            size = sample.image_size()
            if size is None:
                continue
            rendered, feeding = written.resized(size), fed.resized(size)
            if rendered != feeding:
                raise ValueError(
                    f"{data_file}: record {sample.id!r}: its boxes are pixels of the image resized to {rendered} "
                    f"(processor limits {list(expected)}), but {model} resizes it to {feeding} (limits "
                    f"{list(own)}); convert again with --processor-config {model}")
    return updated


def run_eval(task: str, model: str, data: str | Path, out: str | Path, *, adapter: str | None = None,
             split: str | None = None, limit: int | None = None, batch_size: int = 4, max_new_tokens: int = 128,
             device: str | None = None, dtype: str | None = None,
             min_pixels: int | None = None, max_pixels: int | None = None, resize_path: str | None = None,
             java_metrics: bool = True) -> dict:
    """Generate, write <out>/predictions.jsonl (resuming), score; returns the metrics.json content.

    min_pixels / max_pixels / resize_path override the converter manifest (they must match training)."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    out = Path(out)
    head = forgery_head(Path(adapter)) if task == "forgery" and adapter else None
    if head is not None:
        # The forgery loop feeds images through the processor alone: both split files serve.
        resolved, data_file = head.parent, choose_data_file(Path(data), split)
    else:
        resolved = resolve_adapter(adapter) if adapter else None
        data_file = choose_data_file(Path(data), split, Path(adapter) if adapter else None, resolved)
    settings = data_settings(task, data_file, read_manifest_entry(data_file), min_pixels=min_pixels,
                             max_pixels=max_pixels, resize_path=resize_path, java_metrics=java_metrics)
    samples = load_samples(data_file, task)
    settings = with_model_processor(settings, task, model, data_file, samples)
    convention = settings.box_convention()
    left_out = 0
    if task == "grounding":
        # A refcoco file may mix REC rows (answer = box) with REG rows (answer = phrase); only REC is grounding.
        rec = [s for s in samples if convention.parse(s.reference, s.image_size())]
        left_out, samples = len(samples) - len(rec), rec
    samples = samples[:limit] if limit else samples

    if head is not None:
        from eval.infer import ForgeryHeadScorer
        generator = ForgeryHeadScorer(model, head.parent, words=(settings.real_word, settings.fake_word),
                                      device=device)
    else:
        from eval.infer import TransformersGenerator
        generator = TransformersGenerator(model, adapter, convention=convention, device=device, dtype=dtype)
    if generator.family != settings.family and task == "grounding":
        raise ValueError(f"{data_file} holds {settings.family} boxes but --model is a {generator.family} model")

    out.mkdir(parents=True, exist_ok=True)
    _check_same_run(out, {"task": task, "model": str(model), "adapter": str(generator.adapter or ""),
                          "data_file": str(data_file.resolve()), "model_family": generator.family,
                          "data_family": settings.family, "box_convention": convention.describe(),
                          "max_new_tokens": max_new_tokens,
                          **({"forgery_head": str(head)} if head else {})})
    predictions = out / "predictions.jsonl"
    done_ids = {row["id"] for row in read_done(predictions)}
    todo = [s for s in samples if s.id not in done_ids]
    score_words = (settings.real_word, settings.fake_word) if task == "forgery" else None
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
    metrics, judged = score_records(task, records, settings)
    if head is not None:
        metrics["convention"]["score_source"] = generator.describe()
        metrics["convention"]["forgery_head"] = f"used: {head}"
    elif task == "forgery":
        metrics["convention"]["forgery_head"] = "none in the checkpoint: P(fake) comes from the answer words"
    metrics["run"] = read_json(out / "run.json")
    if left_out:
        metrics["left_out"] = f"{left_out} rows whose answer holds no box (REG: box -> phrase)"
    write_scores(out, metrics, judged)
    return metrics
