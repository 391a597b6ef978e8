"""`eval run`: generate answers for a converter output split, write predictions as they come (resumable),
then score them (metrics.json, samples.jsonl)."""
from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from converters.boxes import MODEL_FAMILIES
from converters.geometry import PROCESSOR_PIXELS
from converters.options import checkpoint_processor_pixels
from converters.registry import TASK_NAMES
from eval.data import check_split, choose_data_file, load_samples, read_manifest_entry, trainer_resize_path
from eval.infer import resolve_adapter, resolve_device_dtype
from eval.score import ScoreSettings, normalize_records, score_records, write_scores
from qwenvl_recipes.io import (InputError, folder_lock, os_error_cause, read_input_text, read_json, sha256_file,
                               write_json_atomic, write_text_atomic)

RUN_OUTPUTS = ("predictions.jsonl", "metrics.json", "samples.jsonl", "report.md")
# Besides config.json, the processor configs: eval reads a local checkpoint's image limits from them.
MODEL_CONFIGS = ("config.json", "preprocessor_config.json", "processor_config.json")


def forgery_head(adapter_dir: Path) -> Path | None:
    """The forgery head weights of a custom_modules.forgery checkpoint dir, if it is one."""
    from custom_modules.forgery.checkpoint import HEAD_FILE  # imports torch: only for forgery runs

    return adapter_dir / HEAD_FILE if (adapter_dir / HEAD_FILE).is_file() else None


def read_done(predictions: Path) -> list[dict]:
    """Predictions already written, each an object with a text id. A last line without its newline was cut by
    an interruption: it is dropped from the file (and generated again)."""
    if not predictions.exists():
        return []
    lines = read_input_text(predictions).splitlines(keepends=True)
    if lines and not lines[-1].endswith("\n"):
        write_text_atomic(predictions, "".join(lines[:-1]))
        lines = lines[:-1]
    done, line_of = [], {}
    for number, line in enumerate(lines, 1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise InputError(f"{predictions}:{number}: corrupt line in the middle of the file") from None
        if not isinstance(row, dict) or not isinstance(row.get("id"), str):
            raise InputError(f"{predictions}:{number}: not a line `eval run` writes (an object with a text 'id'): "
                             f"{line.strip()[:60]!r}; pass --overwrite to evaluate again")
        if row["id"] in line_of:
            raise InputError(f"{predictions}:{number}: id {row['id']!r} again (line {line_of[row['id']]}): two runs "
                             f"wrote into {predictions.parent} at once, or the file was edited; pass --overwrite to "
                             "evaluate again")
        line_of[row["id"]] = number
        done.append(row)
    return done


def checkpoint_files(folder: Path) -> list[Path]:
    """The files of an evaluated checkpoint that decide its answers: the peft adapter and its config, the forgery
    head and its settings, a custom encoder's vision_encoder/ (not optimizer or trainer state)."""
    from custom_modules.forgery.checkpoint import HEAD_FILE, SETTINGS_FILE
    from custom_modules.vision_encoder.training import SAVED_FOLDER

    names = ("adapter_config.json", "adapter_model.safetensors", "adapter_model.bin", HEAD_FILE, SETTINGS_FILE)
    files = [folder / name for name in names if (folder / name).is_file()]
    if (folder / SAVED_FOLDER).is_dir():
        files += sorted(p for p in (folder / SAVED_FOLDER).iterdir() if p.is_file())
    return files


def input_hashes(model: str, checkpoint: Path | None, data_file: Path) -> dict[str, str]:
    """sha256 of what the answers depend on, by name: the data file, a local --model's configs (a hub id is
    recorded as given) and the checkpoint's files."""
    hashes = {"data_file": sha256_file(data_file)}
    folder = Path(model)
    if folder.is_dir():
        if not (folder / "config.json").is_file():
            raise InputError(f"--model {model}: no config.json in it (not a model folder)")
        hashes.update({f"model/{name}": sha256_file(folder / name) for name in MODEL_CONFIGS
                       if (folder / name).is_file()})
    elif folder.is_absolute() or model.startswith((".", "~")) or len(folder.parts) > 2:  # a path, not org/name
        raise FileNotFoundError(f"--model {model}: no such directory")
    if checkpoint is not None:
        hashes.update({f"checkpoint/{path.relative_to(checkpoint)}": sha256_file(path)
                       for path in checkpoint_files(checkpoint)})
    return hashes


def run_changes(before: dict, now: dict) -> list[str]:
    """What differs between the run recorded in run.json and this one, one phrase per setting or file."""
    changes = [f"{key} {before.get(key)!r} -> {now.get(key)!r}" for key in sorted(set(before) | set(now))
               if key != "sha256" and before.get(key) != now.get(key)]
    old, new = before.get("sha256") or {}, now["sha256"]
    if not old:
        return changes + ["its run.json records no content hashes (an older eval wrote it)"]
    for name in sorted(set(old) | set(new)):
        if old.get(name) != new.get(name):
            was, becomes = (old.get(name) or "none")[:12], (new.get(name) or "none")[:12]
            changes.append(f"{name} {'changed' if name in old and name in new else 'appeared' if name in new else 'is gone'} "
                           f"(sha256 {was} -> {becomes})")
    return changes


def check_out(out: Path, run_info: dict, overwrite: bool) -> None:
    """Refuse an --out holding predictions of another run (other settings, or any input file changed since),
    naming what changed; with `overwrite` they are discarded instead (start_out)."""
    if overwrite:
        return
    if (out / "run.json").exists():
        changes = run_changes(read_json(out / "run.json", dict), run_info)
        if changes:
            raise InputError(f"{out} holds predictions of another run: {'; '.join(changes)}; pass --overwrite to "
                             "discard them and evaluate again, or use another --out")
    elif (out / "predictions.jsonl").exists():
        raise InputError(f"{out} holds predictions.jsonl but no run.json saying what they answer; pass --overwrite "
                         "to discard them and evaluate again, or use another --out")


def start_out(out: Path, run_info: dict, overwrite: bool) -> None:
    """Record this run in <out>/run.json; with `overwrite`, the earlier run's outputs go first (so a run stopped
    in between never leaves old predictions under the new run.json)."""
    if overwrite:
        for name in RUN_OUTPUTS:
            (out / name).unlink(missing_ok=True)
        from eval.figures import FIGURE_DIR
        shutil.rmtree(out / FIGURE_DIR, ignore_errors=True)
    write_json_atomic(out / "run.json", run_info)


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


def referring_expressions(samples: list, convention) -> list:
    """The REC samples (phrase -> box) of a grounding file, which may also hold REG rows (box -> phrase): a row
    whose prompt gives a box asks for a phrase, whatever its answer's text looks like (a phrase may read like
    a box); a REC row's answer holds a box."""
    def prompt_box(sample) -> bool:
        return any(isinstance(m.get("content"), str) and convention.parse(m["content"], sample.image_size())
                   for m in sample.prompt)

    return [s for s in samples if not prompt_box(s) and convention.parse(s.reference, s.image_size())]


def run_eval(task: str, model: str, data: str | Path, out: str | Path, *, adapter: str | None = None,
             split: str | None = None, limit: int | None = None, batch_size: int = 4, max_new_tokens: int = 128,
             device: str | None = None, dtype: str | None = None, min_pixels: int | None = None,
             max_pixels: int | None = None, resize_path: str | None = None, java_metrics: bool = True,
             overwrite: bool = False) -> dict:
    """Generate, write <out>/predictions.jsonl (resuming), score; returns the metrics.json content.

    <out>/run.json records the settings and the sha256 of the data file, a local model's configs and the
    checkpoint's files; an --out holding another run's predictions is refused naming what changed, unless
    `overwrite` discards them. One run writes into an --out at a time (<out>/.lock).
    min_pixels / max_pixels / resize_path override the converter manifest (they must match training)."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown task {task!r}; expected one of {TASK_NAMES}")
    for name, value in (("limit", limit), ("batch_size", batch_size), ("max_new_tokens", max_new_tokens)):
        if value is not None and not (isinstance(value, int) and value > 0):
            raise ValueError(f"--{name.replace('_', '-')} must be a positive integer, got {value!r}")
    out = Path(out)
    head = forgery_head(Path(adapter)) if task == "forgery" and adapter else None
    if head is not None:
        # Images are sized as the checkpoint records its trainer did: either trainer's split file serves.
        resolved, data_file = head.parent, choose_data_file(Path(data), split)
    else:
        resolved = resolve_adapter(adapter) if adapter else None
        data_file = choose_data_file(Path(data), split, Path(adapter) if adapter else None, resolved)
    entry = read_manifest_entry(data_file)
    check_split(data_file, entry, split)
    hashes = input_hashes(model, resolved, data_file)  # also: a --model path that is no model folder is named here
    settings = data_settings(task, data_file, entry, min_pixels=min_pixels, max_pixels=max_pixels,
                             resize_path=resize_path, java_metrics=java_metrics)
    samples = load_samples(data_file, task)
    settings = with_model_processor(settings, task, model, data_file, samples)
    convention = settings.box_convention()
    left_out = 0
    if task == "grounding":
        rec = referring_expressions(samples, convention)
        left_out, samples = len(samples) - len(rec), rec
    samples = samples[:limit] if limit else samples
    if not samples:
        raise ValueError(f"{data_file}: no samples to score" + (" (no row's answer holds a box)" if left_out else ""))
    device, dtype = resolve_device_dtype(device, dtype)
    run_info = {"task": task, "model": str(model), "adapter": str(resolved or ""),
                "data_file": str(data_file.resolve()), "data_family": settings.family,
                "box_convention": convention.describe(), "max_new_tokens": max_new_tokens,
                # the forgery head is scored in float32 whatever the device (custom_modules.forgery.evaluate)
                "dtype": "float32" if head else dtype, **({"forgery_head": str(head)} if head else {}),
                "sha256": hashes}

    with folder_lock(out, "eval run"):
        check_out(out, run_info, overwrite)
        done_ids = set() if overwrite else {row["id"] for row in read_done(out / "predictions.jsonl")}
        if head is not None:
            from eval.infer import ForgeryHeadScorer
            generator = ForgeryHeadScorer(model, head.parent, words=(settings.real_word, settings.fake_word),
                                          device=device)
        else:
            from eval.infer import TransformersGenerator
            generator = TransformersGenerator(model, adapter, convention=convention, device=device, dtype=dtype)
        if generator.family != settings.family and task == "grounding":
            raise ValueError(f"{data_file} holds {settings.family} boxes but --model is a {generator.family} model")
        start_out(out, run_info, overwrite)
        todo = [s for s in samples if s.id not in done_ids]
        metrics, judged = _generate_and_score(task, samples, todo, generator, settings, out, batch_size,
                                              max_new_tokens)
        if head is not None:
            metrics["convention"]["score_source"] = generator.describe()
            metrics["convention"]["forgery_head"] = f"used: {head}"
        elif task == "forgery":
            metrics["convention"]["forgery_head"] = "none in the checkpoint: P(fake) comes from the answer words"
        metrics["run"] = run_info
        if left_out:
            metrics["left_out"] = f"{left_out} rows whose answer holds no box (REG: box -> phrase)"
        if task == "forgery":  # the pictures: ROC / PR curves, and the head's maps of a few images
            from eval.figures import forgery_report, forgery_run_figures
            metrics["figures"] = forgery_run_figures(out, metrics, judged, samples, generator if head else None)
            write_text_atomic(out / "report.md", forgery_report(metrics, metrics["figures"]))
        write_scores(out, metrics, judged)
    return metrics


def _generate_and_score(task: str, samples: list, todo: list, generator, settings: ScoreSettings, out: Path,
                        batch_size: int, max_new_tokens: int) -> tuple[dict, list[dict]]:
    """Answers for `todo` (the samples not yet in <out>/predictions.jsonl), appended as they come; then all the
    samples scored."""
    predictions = out / "predictions.jsonl"
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
                try:
                    f.write(json.dumps(row, ensure_ascii=False) + "\n")
                    f.flush()  # every answer is kept if the run stops here
                except OSError as error:  # a full disk's error names no file; what was written is kept
                    raise InputError(f"{predictions}: cannot write ({os_error_cause(error)}); the answers "
                                     "written so far are kept, a rerun resumes") from error
            bar.update(len(batch))
    wanted = {s.id for s in samples}
    rows = [row for row in read_done(predictions) if row["id"] in wanted]
    return score_records(task, normalize_records(rows, str(predictions)), settings)
