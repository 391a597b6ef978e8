"""Drive one conversion: reader items -> Sample -> rows per target, plus dataset_info.json and manifest.json.

Readers yield (split, item) pairs where item is either a record (a dict with an "id") or a `Skip`
found while reading. `convert(record, resize_path)` is the source's pure record -> Sample function.
Nothing is held per record except the set of ids seen (for duplicate detection), so memory stays
bounded by that set, whatever the input size.
"""
from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from converters import __version__
from converters.files import sha256_file, write_text_atomic
from converters.schema import Sample, Skip, SkipRecord
from converters.targets import TARGETS, RowWriter, dataset_info_entry, encode_row

TEST_SPLITS = ("test", "testA", "testB")


class StrictModeError(Exception):
    pass


def _load_json(path: Path) -> dict:
    if not path.exists():
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _dump_json(data) -> str:
    return json.dumps(data, ensure_ascii=False, indent=2, sort_keys=True) + "\n"


class _Split:
    def __init__(self, out: Path, name: str, split: str, targets: tuple[str, ...]):
        self.files = {t: f"{name}_{split}{TARGETS[t][0]}" for t in targets}
        self.writers = {t: RowWriter(out / f) for t, f in self.files.items()}
        self.writer_list = [self.writers[t] for t in targets]
        self.seen: set[str] = set()
        self.skipped: list[Skip] = []
        self.notes: list[dict] = []  # kept records worth a remark (e.g. a fake image without its mask)
        self.count = 0


def run(*, name: str, task: str, items: Iterable[tuple[str, object]],
        convert: Callable[[dict, str], Sample], out: Path, targets: tuple[str, ...],
        inputs: list[Path], options: dict, trainer_dependent: bool, strict: bool = False) -> dict:
    """Convert everything, write outputs atomically, return the manifest entries of this run."""
    out.mkdir(parents=True, exist_ok=True)
    splits: dict[str, _Split] = {}
    paths = {t: TARGETS[t][1] for t in targets}
    try:
        for split, item in tqdm(items, desc=name, unit="rec", disable=None, mininterval=1.0):
            state = splits.get(split)
            if state is None:
                state = splits[split] = _Split(out, name, split, targets)
            if isinstance(item, Skip):
                state.skipped.append(item)
                continue
            record_id = str(item["id"])
            if record_id in state.seen:
                state.skipped.append(Skip(record_id, "duplicate id", item.get("source", ""), "id"))
                continue
            state.seen.add(record_id)
            try:
                if trainer_dependent:
                    lines = [encode_row(convert(item, paths[t])) for t in targets]
                else:
                    lines = [encode_row(convert(item, "hf"))] * len(targets)
            except SkipRecord as skip:
                state.skipped.append(Skip(record_id, skip.reason, item.get("source", ""), skip.field))
                continue
            for writer, line in zip(state.writer_list, lines):
                writer.write(line)
            state.count += 1
            if "note" in item:
                state.notes.append({"id": record_id, "note": item["note"], "source": item.get("source", "")})
        skipped_total = sum(len(s.skipped) for s in splits.values())
        if strict and skipped_total:
            details = "\n".join(f"  [{split}] {s.source} record {s.id} field {s.field or '-'}: {s.reason}"
                                for split, st in splits.items() for s in st.skipped)
            raise StrictModeError(f"--strict: {skipped_total} record(s) skipped, nothing written:\n{details}")
    except BaseException:
        for state in splits.values():
            for writer in state.writers.values():
                writer.abort()
        raise
    for state in splits.values():
        for writer in state.writers.values():
            writer.commit()

    for split in splits:
        if split in TEST_SPLITS:
            print(f"warning: converting the {split!r} split of {name} for training; evaluate on it instead",
                  file=sys.stderr)

    input_sums = [{"path": str(p), "sha256": sha256_file(p)} for p in inputs if Path(p).is_file()]
    entries = {}
    for split, state in sorted(splits.items()):
        entries[f"{name}_{split}"] = {
            "task": task, "split": split, "files": state.files, "count": state.count,
            "skipped_count": len(state.skipped), "skipped": [asdict(s) for s in state.skipped],
            "notes": state.notes,
            "inputs": input_sums, "options": options, "converter_version": __version__,
        }
    _merge_index_files(out, entries, targets)
    return entries


def _merge_index_files(out: Path, entries: dict, targets: tuple[str, ...]) -> None:
    """Update dataset_info.json and manifest.json, keeping entries of other datasets/splits in `out`."""
    info = _load_json(out / "dataset_info.json")
    manifest = _load_json(out / "manifest.json")
    manifest.setdefault("datasets", {})
    for key, entry in entries.items():
        if "llamafactory" in targets:
            info[key] = dataset_info_entry(entry["files"]["llamafactory"])
        else:
            info.pop(key, None)
        manifest["datasets"][key] = entry
    manifest["converter_version"] = __version__
    write_text_atomic(out / "dataset_info.json", _dump_json(info))
    write_text_atomic(out / "manifest.json", _dump_json(manifest))
