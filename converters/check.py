"""Validate a converter output directory: what the trainers will trip over, before they do."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterator

from converters.boxes import parse_boxes
from converters.files import image_size, load_json_file
from converters.schema import SkipRecord
from converters.targets import TARGETS

BOX_TOLERANCE = 1.5  # px: integer model coordinates round to at most half a model unit


def read_output_rows(path: Path) -> Iterator[tuple[int, object]]:
    """(row number, row) of a written .json list (0-based) or .jsonl file (1-based lines)."""
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                yield number, json.loads(line)
    else:
        with open(path, encoding="utf-8") as f:
            yield from enumerate(json.load(f))


def check_row(row: object, where: str, task: str | None, options: dict, resize_path: str,
              sizes: dict[str, tuple[int, int]]) -> list[str]:
    if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
        return [f"{where}: row has no 'messages' list"]
    images = row.get("images") or []
    contents = [m.get("content", "") if isinstance(m, dict) else "" for m in row["messages"]]
    problems = []
    last = row["messages"][-1] if row["messages"] else {}
    if not isinstance(last, dict) or last.get("role") != "assistant" or not str(last.get("content", "")).strip():
        problems.append(f"{where}: the last message is not a non-empty assistant answer")
    placeholders = sum(c.count("<image>") for c in contents)
    if placeholders != len(images):
        problems.append(f"{where}: {placeholders} <image> placeholder(s) but {len(images)} image(s)")
    for image in images:
        if image not in sizes:
            try:
                sizes[image] = image_size(image)
            except SkipRecord as skip:
                problems.append(f"{where}: {skip.reason}")
                continue
    if task == "forgery" and row.get("mask") and not os.path.isfile(row["mask"]):
        problems.append(f"{where}: mask {row['mask']} does not exist")
    if task == "refcoco" and images and images[0] in sizes:
        width, height = sizes[images[0]]
        boxes = [box for content in contents for box in parse_boxes(
            content, options["model"], (width, height), min_pixels=options["min_pixels"],
            max_pixels=options["max_pixels"], resize_path=resize_path,
            processor_pixels=tuple(options["processor_pixels"]) if options.get("processor_pixels") else None)]
        if not boxes:
            problems.append(f"{where}: no box parses in a grounding row")
        for box in boxes:
            if (box.x1 < -BOX_TOLERANCE or box.y1 < -BOX_TOLERANCE or box.x2 > width + BOX_TOLERANCE
                    or box.y2 > height + BOX_TOLERANCE or box.x2 <= box.x1 or box.y2 <= box.y1):
                problems.append(f"{where}: box {box} not inside the {width}x{height} image")
    if task == "microscopy":
        try:
            answer = json.loads(contents[-1])
            if answer.get("direction") not in ("+", "-") or not isinstance(answer.get("distance"), int):
                problems.append(f"{where}: answer lacks direction +|- or integer distance")
        except (json.JSONDecodeError, AttributeError, IndexError):
            problems.append(f"{where}: assistant answer is not JSON")
    return problems


def check_dir(out: Path) -> list[str]:
    problems = []
    info_path, manifest_path = out / "dataset_info.json", out / "manifest.json"
    info = load_json_file(info_path, dict, "dataset_info.json") if info_path.exists() else {}
    manifest = load_json_file(manifest_path, dict, "manifest.json") if manifest_path.exists() else {}
    if not info and not manifest:
        return [f"{out}: neither dataset_info.json nor manifest.json found"]
    files: dict[str, dict] = {}  # file name -> manifest entry (or {})
    for key, entry in info.items():
        name = entry.get("file_name", "")
        if not (out / name).is_file():
            problems.append(f"dataset_info.json: entry {key!r} points at missing file {name!r}")
        elif entry.get("formatting") != "sharegpt" or "messages" not in entry.get("columns", {}):
            problems.append(f"dataset_info.json: entry {key!r} is not sharegpt with a messages column")
        files.setdefault(name, {})
    for key, entry in manifest.get("datasets", {}).items():
        for name in entry.get("files", {}).values():
            if not (out / name).is_file():
                problems.append(f"manifest.json: {key!r} lists missing file {name!r}")
            else:
                files[name] = entry
    resize_by_suffix = {suffix: path for suffix, path in TARGETS.values()}
    sizes: dict[str, tuple[int, int]] = {}
    for name, entry in sorted(files.items()):
        path = out / name
        if not path.is_file():
            continue
        try:
            for number, row in read_output_rows(path):
                problems += check_row(row, f"{name} row {number}", entry.get("task"), entry.get("options", {}),
                                      resize_by_suffix.get(path.suffix, "hf"), sizes)
        except json.JSONDecodeError as error:
            problems.append(f"{name}: invalid JSON: {error}")
    return problems
