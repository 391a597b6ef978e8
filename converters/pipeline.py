"""Drive one conversion: reader items -> Sample -> rows per target, plus dataset_info.json and manifest.json.

Readers yield (split, item) pairs where item is either a record (a dict with an "id") or a `Skip`
found while reading. `convert(record, resize_path)` is the source's pure record -> Sample function.
Nothing is held per record except the set of ids seen (for duplicate detection), so memory stays
bounded by that set, whatever the input size.

The output folder is committed whole: everything a run writes (data files of every target, images, the
merged dataset_info.json and manifest.json) goes into a staging copy of the folder, which takes the
folder's place in one step only when every split has a sample (qwenvl_recipes.io.FolderUpdate).
"""
from __future__ import annotations

import json
import multiprocessing
import os
import re
import threading
from collections import Counter, deque
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tqdm import tqdm

from converters import __version__
from converters.images import adopt_conversion_settings, conversion_settings, reset_listings, writing_into
from converters.schema import Sample, Skip, SkipRecord
from converters.sources.tables import DEFAULT_SPLIT
from converters.targets import TARGETS, RowWriter, dataset_info_entry, encode_row
from converters.trainable import active_rule, adopt_rule, check_sample
from qwenvl_recipes.io import FolderUpdate, InputError, name_problem, read_json, sha256_file, write_text_atomic

MAX_IN_FLIGHT = 32768  # records read but not yet written (bounds memory with --workers)


class StrictModeError(Exception):
    pass


def _load_json(path: Path) -> dict:
    """An index file already in the output folder ({} when there is none yet)."""
    return read_json(path, dict, path.name) if path.exists() else {}


def _dump_json(data) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


class _Split:
    def __init__(self, out: Path, name: str, split: str, targets: tuple[str, ...]):
        self.files = {t: f"{name}_{split}{TARGETS[t][0]}" for t in targets}
        self.writers = {t: RowWriter(out / f) for t, f in self.files.items()}
        self.writer_list = [self.writers[t] for t in targets]
        self.seen: set[str] = set()
        self.skipped: list[tuple[int, Skip]] = []  # (input position, skip): sorted at the end
        self.notes: list[dict] = []  # kept records worth a remark (e.g. a fake image without its mask)
        self.count = 0


# The record -> lines step, set once per process (worker processes get it through the pool initializer).
_RENDER: tuple[Callable[[dict, str], Sample], tuple[str, ...] | None] | None = None


def _set_render(render) -> None:
    global _RENDER
    _RENDER = render


def _start_worker(render, image_settings: dict, rule) -> None:
    """A worker process starts clean (forkserver): it takes over the conversion's settings, then its render."""
    adopt_conversion_settings(image_settings)
    adopt_rule(rule)
    _set_render(render)


def _worker_pool(workers: int, render):
    """`workers` processes forked from the forkserver, a fresh interpreter of one thread: a fork of this process
    could copy a lock another of its threads holds (the tokenizers', torch's, a progress bar's) and wait on it
    forever. What each needs comes pickled: the render (module-level functions and plain options) and the
    settings of this conversion."""
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return context.Pool(workers, _start_worker, (render, conversion_settings(), active_rule()))


def main_script_functions(convert) -> list[str]:
    """The functions of `convert` (a function, or a partial of one over options) that the running script defines in
    its own `__main__`: a worker process, which does not run that script, cannot find them by name, dies as it
    starts, and the pool starts another in its place, forever."""
    if isinstance(convert, partial):
        parts = [convert.func, *convert.args, *convert.keywords.values()]
        return [name for part in parts for name in main_script_functions(part)]
    if callable(convert) and getattr(convert, "__module__", None) == "__main__":
        return [getattr(convert, "__qualname__", repr(convert))]
    return []


def _render(record: dict):
    """One record -> its encoded line (shared by all targets), or one line per target's resize path, or
    ("skip", reason, field): also for a sample a trainer cannot take as it is (converters.trainable)."""
    convert, resize_paths = _RENDER
    try:
        if resize_paths is None:
            return encode_row(check_sample(convert(record, "hf")))
        return [encode_row(check_sample(convert(record, path))) for path in resize_paths]
    except SkipRecord as skip:
        return ("skip", skip.reason, skip.field)


def run(*, name: str, task: str, converter: str, items: Iterable[tuple[str, object]],
        convert: Callable[[dict, str], Sample], out: Path, targets: tuple[str, ...],
        inputs: list[Path], options: dict, trainer_dependent: bool, strict: bool = False,
        workers: int = 1) -> dict:
    """Convert everything, commit the output folder whole when usable (empty_splits), return the manifest
    entries of this run (`task`: the samples' task name, `converter`: the subcommand of the registered source
    that read them; converters.registry).

    workers > 1 renders records in that many worker processes (order kept: the output is identical).
    """
    problem = name_problem(name)
    if problem is not None:
        raise InputError(f"--name {name!r} {problem}: it names the output files")
    _refuse_inputs_inside(out, inputs)
    in_main = main_script_functions(convert) if workers > 1 else []
    if in_main:
        raise ValueError(f"workers={workers}: {', '.join(in_main)} is defined in the main script, which worker "
                         "processes do not run; define it in an importable module, or use one worker")
    with FolderUpdate(out) as update, writing_into(out, update.staging):
        index = _read_index_files(out)
        entries = _convert(name, task, converter, items, convert, update.staging, targets, inputs, options,
                           trainer_dependent, strict, workers)
        if entries and not empty_splits(entries):
            _merge_index_files(update.staging, index, entries, targets)
            update.commit()
    return entries


def empty_splits(entries: dict) -> list[str]:
    """The entries of a run without any sample: such a run commits nothing (the output stays as it was)."""
    return [key for key, entry in entries.items() if entry["count"] == 0]


def _refuse_inputs_inside(out: Path, inputs: list[Path]) -> None:
    """An input inside --out would be replaced or mixed with the output."""
    real_out = os.path.realpath(out)
    for path in inputs:
        real = os.path.realpath(path)
        if real == real_out or real.startswith(real_out.rstrip(os.sep) + os.sep):
            raise InputError(f"--out {out}: holds the input {path}; write the output to another folder")


def _convert(name: str, task: str, converter: str, items: Iterable[tuple[str, object]],
             convert: Callable[[dict, str], Sample], staging: Path, targets: tuple[str, ...],
             inputs: list[Path], options: dict, trainer_dependent: bool, strict: bool, workers: int) -> dict:
    """Write every split's data files into `staging`; return the manifest entries."""
    reset_listings()
    splits: dict[str, _Split] = {}
    render = (convert, tuple(TARGETS[t][1] for t in targets) if trainer_dependent else None)
    pending: deque = deque()  # (position, split, id, record) of records sent to _render, in order
    # Backpressure: the pool's feeder thread may run at most MAX_IN_FLIGHT records ahead of the writer.
    in_flight, stopped = threading.BoundedSemaphore(MAX_IN_FLIGHT), threading.Event()

    def split_state(split: str) -> _Split:
        state = splits.get(split)
        if state is None:
            state = splits[split] = _Split(staging, name, split, targets)
        return state

    def to_render() -> Iterator[dict]:
        """Reader items -> records to render; reader skips, bad splits and duplicate ids are recorded here."""
        for position, (split, item) in enumerate(tqdm(items, desc=name, unit="rec", disable=None, mininterval=1.0)):
            state = splits.get(split)
            if state is None:
                problem = name_problem(split)
                if problem is not None:  # the split names files: one from the data may not be a path
                    if not isinstance(item, Skip):
                        item = Skip(str(item["id"]), f"split {split!r} {problem}: it names the output files",
                                    item.get("source", ""), "split")
                    split_state(DEFAULT_SPLIT).skipped.append((position, item))
                    continue
                state = split_state(split)
            if isinstance(item, Skip):
                state.skipped.append((position, item))
                continue
            record_id = str(item["id"])
            if record_id in state.seen:
                state.skipped.append((position, Skip(record_id, "duplicate id", item.get("source", ""), "id")))
                continue
            state.seen.add(record_id)
            while not in_flight.acquire(timeout=0.5):
                if stopped.is_set():
                    return
            pending.append((position, split, record_id, item))
            yield item

    _set_render(render)
    pool = _worker_pool(workers, render) if workers > 1 else None
    try:
        results = pool.imap(_render, to_render(), chunksize=512) if pool else map(_render, to_render())
        for result in results:
            position, split, record_id, item = pending.popleft()
            in_flight.release()
            state = splits[split]
            if isinstance(result, tuple):
                state.skipped.append((position, Skip(record_id, result[1], item.get("source", ""), result[2])))
                continue
            for writer, line in zip(state.writer_list, [result] * len(targets) if isinstance(result, str) else result):
                writer.write(line)
            state.count += 1
            if "note" in item:
                state.notes.append({"id": record_id, "note": item["note"], "source": item.get("source", "")})
        for state in splits.values():
            state.skipped.sort(key=lambda entry: entry[0])
        skipped_total = sum(len(s.skipped) for s in splits.values())
        if strict and skipped_total:
            details = "\n".join(f"  [{split}] {s.source} record {s.id} field {s.field or '-'}: {s.reason}"
                                for split, st in splits.items() for _, s in st.skipped)
            raise StrictModeError(f"--strict: {skipped_total} record(s) skipped, nothing written:\n{details}")
    except BaseException:
        for state in splits.values():
            for writer in state.writers.values():
                writer.abort()
        raise
    finally:
        stopped.set()
        if pool:
            pool.terminate()
    for state in splits.values():
        for writer in state.writers.values():
            writer.commit()

    input_sums = [{"path": str(p), "sha256": sha256_file(p)} for p in inputs if Path(p).is_file()]
    entries = {}
    for split, state in sorted(splits.items()):
        entries[f"{name}_{split}"] = {
            "task": task, "converter": converter, "split": split, "files": state.files, "count": state.count,
            "sha256": {file: sha256_file(staging / file) for file in state.files.values()},
            "skipped_count": len(state.skipped), "skipped": [asdict(s) for _, s in state.skipped],
            "notes": state.notes,
            "inputs": input_sums, "options": options, "converter_version": __version__,
        }
    return entries


# What varies between skips of one kind: quoted values, lists, absolute paths, numbers.
_DETAIL = re.compile(r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|(?<![\w.])/[^\s:,)]+|-?\b\d+(?:\.\d+)?(?:e[+-]?\d+)?\b")
TOP_REASONS = 5


def reason_kind(reason: str) -> str:
    """A skip reason with its record-specific details blanked, so that skips of one kind count together
    ("missing image /d/a.jpg" and "missing image /d/b.jpg" are both "missing image …")."""
    return _DETAIL.sub("…", reason)


def skip_summary(entry: dict, top: int = TOP_REASONS) -> list[str]:
    """Lines counting a split's skips per (field, reason kind), most frequent first, each with its first
    example (file/record, field, full reason)."""
    kinds: Counter = Counter()
    examples: dict[tuple[str, str], dict] = {}
    for skip in entry["skipped"]:
        key = (skip["field"], reason_kind(skip["reason"]))
        kinds[key] += 1
        examples.setdefault(key, skip)
    lines = []
    for (field, kind), count in kinds.most_common(top):
        example = examples[field, kind]
        lines.append(f"  {count} x field {field or '-'}: {kind}\n"
                     f"      e.g. {example['source'] or '-'} record {example['id']}: {example['reason']}")
    if len(kinds) > top:
        rest = sum(count for _, count in kinds.most_common()[top:])
        lines.append(f"  ... {rest} more skip(s) of {len(kinds) - top} other kind(s)")
    return lines


def _read_index_files(out: Path) -> tuple[dict, dict]:
    """dataset_info.json and manifest.json as the output folder holds them ({} when there is none yet); read
    before converting, so that a broken one stops the run before its work, naming the file."""
    return _load_json(out / "dataset_info.json"), _load_json(out / "manifest.json")


def _merge_index_files(staging: Path, index: tuple[dict, dict], entries: dict, targets: tuple[str, ...]) -> None:
    """Write dataset_info.json and manifest.json into `staging`: `index` (the folder's, read under its lock, so
    no other run's entries are lost) with this run's entries over it, other datasets/splits kept."""
    info, manifest = index
    manifest.setdefault("datasets", {})
    for key, entry in entries.items():
        if "llamafactory" in targets:
            info[key] = dataset_info_entry(entry["files"]["llamafactory"])
        else:
            info.pop(key, None)
        manifest["datasets"][key] = entry
    manifest["converter_version"] = __version__
    write_text_atomic(staging / "dataset_info.json", _dump_json(info))
    write_text_atomic(staging / "manifest.json", _dump_json(manifest))
