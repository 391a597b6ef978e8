"""Validate a converter output directory: what the trainers will trip over, before they do."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

from converters.images import check_decodes, image_size, reset_listings
from converters.registry import Source, registered
from converters.schema import SkipRecord
from converters.targets import TARGETS
from converters.trainable import rule_of
from qwenvl_recipes.io import name_problem, read_json, sha256_file


def read_output_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, row) of a written .json list (0-based) or .jsonl file (1-based lines)."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                yield number, json.loads(line)
    else:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(json.load(f))


def check_row(row: object, where: str, source: Source | None, task: str | None, options: dict, resize_path: str,
              sizes: dict[str, tuple[int, int]]) -> list[str]:
    """What every trainer needs of a row (converters.trainable's text rule, images that decode), then the
    check its source registered; `task` is what its manifest entry says the data trains."""
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        return [f"{where}: row has no 'messages' list"]
    images = row.get("images") or []
    turns = [(str(m.get("role")), m.get("content") if isinstance(m.get("content"), str) else str(m.get("content", "")))
             if isinstance(m, dict) else ("?", "") for m in row["messages"]]
    problems = []
    last = row["messages"][-1] if row["messages"] else {}
    if not isinstance(last, dict) or last.get("role") != "assistant" or not str(last.get("content", "")).strip():
        problems.append(f"{where}: the last message is not a non-empty assistant answer")
    found = rule_of(options).problem(turns, len(images), task == "grounding")
    if found:
        problems.append(f"{where}: {found[0]} (field {found[1]})")
    for image in images:
        if image not in sizes:
            try:
                check_decodes(image)
                sizes[image] = image_size(image)
            except SkipRecord as skip:
                problems.append(f"{where}: {skip.reason}")
    if source is not None and source.check_row is not None:
        problems += [f"{where}: {problem}"
                     for problem in source.check_row(row, options, resize_path, [sizes.get(i) for i in images])]
    return problems


def check_dir(out: Path) -> list[str]:
    reset_listings()  # images are checked as they are now, not as an earlier run in this process saw them
    problems = []
    info_path, manifest_path = out / "dataset_info.json", out / "manifest.json"
    info = read_json(info_path, dict, "dataset_info.json") if info_path.exists() else {}
    manifest = read_json(manifest_path, dict, "manifest.json") if manifest_path.exists() else {}
    if not info and not manifest:
        return [f"{out}: neither dataset_info.json nor manifest.json found"]
    sources = registered()
    files: dict[str, dict] = {}  # file name -> manifest entry (or {})
    for key, entry in info.items():
        name = entry.get("file_name", "")
        if name_problem(name) is not None:
            problems.append(f"dataset_info.json: entry {key!r} names {name!r}, not a file of this folder")
            continue
        if not (out / name).is_file():
            problems.append(f"dataset_info.json: entry {key!r} points at missing file {name!r}")
        elif entry.get("formatting") != "sharegpt" or "messages" not in entry.get("columns", {}):
            problems.append(f"dataset_info.json: entry {key!r} is not sharegpt with a messages column")
        files.setdefault(name, {})
    for key, entry in manifest.get("datasets", {}).items():
        if entry.get("converter") is not None and entry["converter"] not in sources:
            problems.append(f"manifest.json: {key!r} was written by converter {entry['converter']!r}, which no "
                            f"module of converters/sources registers (known: {sorted(sources)})")
        for name in entry.get("files", {}).values():
            if name_problem(name) is not None:
                problems.append(f"manifest.json: {key!r} lists {name!r}, not a file of this folder")
            elif not (out / name).is_file():
                problems.append(f"manifest.json: {key!r} lists missing file {name!r}")
            else:
                files[name] = entry
                recorded = entry.get("sha256", {}).get(name)
                if recorded is not None and sha256_file(out / name) != recorded:
                    problems.append(f"{name}: not the file manifest.json records for {key!r} (its sha256 differs): "
                                    "it changed after the conversion; convert again")
    resize_by_suffix = {suffix: path for suffix, path in TARGETS.values()}
    sizes: dict[str, tuple[int, int]] = {}
    for name, entry in sorted(files.items()):
        path = out / name
        if not path.is_file():
            continue
        try:
            for number, row in read_output_rows(path):
                problems += check_row(row, f"{name} row {number}", sources.get(entry.get("converter")),
                                      entry.get("task"), entry.get("options", {}), resize_by_suffix.get(path.suffix, "hf"), sizes)
        except json.JSONDecodeError as error:
            problems.append(f"{name}: invalid JSON: {error}")
    return problems
