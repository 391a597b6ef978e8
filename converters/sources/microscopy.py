"""Microscope focusing: two consecutive images -> {"analysis", "direction" +|-, "distance" steps}.

Inputs: a pairs table (image1,image2,direction,distance[,analysis][,split][,id]; JSON list, JSONL or
CSV); conversation rows as the microscopy seed writes them (`conversations`: a user turn with two images
and the prompt, an assistant turn whose text is the JSON answer; content either a list of
{"type": "image"|"text"} parts or a string with <image> tags plus a row-level `images` list), whose own
prompt and answer are kept; or a z-stack table (stack_id,image,z,focus_z[,split]) from which
consecutive pairs are drawn: images of a stack sorted by z, each neighbour pair (z_a < z_b) shown in
that order, the second image being the current position. The target moves the motor from z_b to
focus_z: direction "+" when focus_z > z_b (else "-"), distance |focus_z - z_b| * steps_per_z, rounded to
whole steps.
"""
from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from converters.images import existing_image, trainer_image
from converters.options import add_split_options, positive_int
from converters.registry import Conversion, Source, register_source
from converters.schema import Sample, Skip, SkipRecord, Turn
from converters.sources.conversations import TURN_KEYS, parse_row
from converters.sources.tables import (DEFAULT_SPLIT, SplitRule, is_text_table, number_cell, read_rows, row_content,
                                      row_source, rows_with_splits, split_rows)

DEFAULT_PROMPT = (
    "这两张图像是显微镜在相邻两个焦平面位置连续拍摄的（第一张为上一位置，第二张为当前位置）。"
    "请比较两张图像的清晰度、边缘锐利程度和细节变化，判断当前的对焦状态，并给出电机的调焦方向和步数。"
    '只输出 JSON：{"analysis": "简要分析", "direction": "+" 或 "-", "distance": 步数}。'
)
PAIR_COLUMNS = ("image1", "image2", "direction", "distance")
STACK_COLUMNS = ("stack_id", "image", "z", "focus_z")


# A focusing move beyond this many motor steps is a unit or typing error, not a move (see --max-distance).
MAX_DISTANCE = 100_000


@dataclass(frozen=True)
class MicroscopyOptions:
    prompt: str = DEFAULT_PROMPT
    max_distance: int = MAX_DISTANCE


def default_analysis(direction: str, distance: int) -> str:
    if distance == 0:
        return "第二张图像已处于焦平面，清晰度最高，无需移动。"
    return f"第二张图像仍未清晰对焦，焦平面位于{'正' if direction == '+' else '负'}方向，需移动约{distance}步。"


def parse_direction(value: object) -> str:
    direction = str(value).strip()
    if direction not in ("+", "-"):
        raise SkipRecord(f"direction must be '+' or '-', got {value!r}", "direction")
    return direction


def parse_distance(value: object, max_distance: int = MAX_DISTANCE, field: str = "distance") -> int:
    """Whole motor steps from a number (a CSV cell is read as its number first: tables.number_cell); a
    string, a bool, NaN, a fraction or an absurd size is a bad record, never a distance."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SkipRecord(f"distance must be a number of steps, got {value!r}", field)
    number = float(value)
    if not math.isfinite(number) or number < 0 or number != int(number):
        raise SkipRecord(f"distance must be a whole number of steps >= 0, got {value!r}", field)
    if number > max_distance:
        raise SkipRecord(f"distance {value!r} exceeds {max_distance} steps (--max-distance)", field)
    return int(number)


def parse_answer(text: object, max_distance: int = MAX_DISTANCE) -> tuple[str, int]:
    """(direction, distance) of an assistant answer {"analysis", "direction", "distance"}; the distance
    must be a JSON integer there (the trained text is what eval parses back)."""
    field = "answer"
    try:
        answer = json.loads(text) if isinstance(text, str) else None
    except json.JSONDecodeError as error:
        raise SkipRecord(f"assistant answer is not JSON ({error.msg}): {str(text)[:80]!r}", field) from None
    if not isinstance(answer, dict):
        raise SkipRecord(f"assistant answer must be a JSON object with direction and distance, got {text!r}",
                         field)
    distance = answer.get("distance")
    if not isinstance(distance, int) or isinstance(distance, bool):
        raise SkipRecord(f"answer distance must be a JSON integer, got {distance!r}", f"{field}.distance")
    try:
        direction = parse_direction(answer.get("direction"))
    except SkipRecord as skip:
        raise SkipRecord(skip.reason, f"{field}.direction") from None
    return direction, parse_distance(distance, max_distance, f"{field}.distance")


def to_sample(record: dict, opts: MicroscopyOptions, resize_path: str = "hf") -> Sample:
    """record: {"id", "images" (2 abs paths), "sizes", "direction", "distance"[, "analysis"]}, or a
    conversation record {"id", "images", "sizes", "prompt" (with <image> tags), "answer"[, "system"]}
    whose prompt and answer text are kept as written."""
    if "answer" in record:
        parse_answer(record["answer"], opts.max_distance)
        turns = ((Turn("system", record["system"]),) if record.get("system") else ()) + (
            Turn("user", record["prompt"]), Turn("assistant", record["answer"].strip()))
        return Sample(id=record["id"], images=tuple(record["images"]), turns=turns,
                      image_sizes=tuple(tuple(s) for s in record["sizes"]))
    direction = parse_direction(record["direction"])
    distance = parse_distance(record["distance"], opts.max_distance)
    analysis = " ".join(str(record.get("analysis") or "").split()) or default_analysis(direction, distance)
    answer = json.dumps({"analysis": analysis, "direction": direction, "distance": distance}, ensure_ascii=False)
    return Sample(id=record["id"], images=tuple(record["images"]),
                  turns=(Turn("user", "<image><image>" + opts.prompt), Turn("assistant", answer)),
                  image_sizes=tuple(tuple(s) for s in record["sizes"]))


def _with_images(record: dict, names: list[str], images_dir: Path | None, fields=("image1", "image2")) -> dict:
    """The record with its pair's images as the trainers will read them; the two frames must have one size and
    one depth (16-bit frames are read as 8-bit copies scaled by their bit depth: converters.images), or
    comparing their sharpness compares something else."""
    images = []
    for field, name in zip(fields, names):
        if not isinstance(name, str) or not name:
            raise SkipRecord(f"image path must be a non-empty string, got {name!r}", field)
        images.append(trainer_image(existing_image(images_dir, str(name), field), field))
    first, second = images
    if first.size != second.size:
        raise SkipRecord(f"the pair's images differ in size: {first.size[0]}x{first.size[1]} and "
                         f"{second.size[0]}x{second.size[1]}", fields[1])
    if first.depth != second.depth:
        raise SkipRecord(f"the pair's images were read with different ranges ({first.depth} and {second.depth}): "
                         "pass --bit-depth with the camera's bits", fields[1])
    record = {**record, "images": [image.path for image in images], "sizes": [image.size for image in images]}
    note = "; ".join(image.note for image in images if image.note)
    return {**record, "note": note} if note else record


def parse_conversation(row: dict) -> dict:
    """A seed conversation row (converters.sources.conversations) -> {"prompt" (<image> tags where the images
    were), "image_names", "answer", "system"}: one user turn with the two images, then the answer."""
    chat = parse_row(row)
    system = chat.turns[0][1] if chat.turns[0][0] == "system" else None
    turns = chat.turns[1:] if system is not None else chat.turns
    if len(turns) != 2:
        raise SkipRecord(f"expected one user turn then one assistant answer, got {len(turns)} turns", chat.key)
    if len(chat.image_names) != 2:
        raise SkipRecord(f"a focusing pair has 2 images, this turn has {len(chat.image_names)}",
                         f"{chat.key}[{len(chat.turns) - 2}].content")
    return {"prompt": turns[0][1], "image_names": list(chat.image_names), "system": system,
            "answer": turns[1][1]}


def is_stack_table(path: Path) -> bool:
    first = next(read_rows(path), None)
    return first is not None and isinstance(first[1], dict) and all(c in first[1] for c in ("stack_id", "image", "z"))


def _pair_key(row: dict) -> str:
    """What --val-fraction groups pair rows by: their two images (conversation rows: the whole row)."""
    return json.dumps([row["image1"], row.get("image2")], default=str) if "image1" in row else row_content(row)


def read_pairs(path: Path, images_dir: Path | None, only_split: str | None = None,
               limit: int | None = None, rule: SplitRule = SplitRule()) -> Iterator[tuple[str, object]]:
    text_table = is_text_table(path)
    for split, (number, row) in split_rows(path, only_split, limit, rule, key=_pair_key):
        if isinstance(row, Skip):
            yield split, row
            continue
        record_id = str(row.get("id") or f"pair{number}")
        source = row_source(path, number)
        if any(k in row for k in TURN_KEYS):
            try:
                turn = parse_conversation(row)
                base = {"id": record_id, "source": source, "prompt": turn["prompt"], "answer": turn["answer"],
                        "system": turn["system"]}
                fields = [f"image{i + 1}" for i in range(len(turn["image_names"]))]
                yield split, _with_images(base, turn["image_names"], images_dir, fields)
            except SkipRecord as skip:
                yield split, Skip(record_id, skip.reason, source, skip.field)
            continue
        missing = [c for c in PAIR_COLUMNS if row.get(c) in (None, "")]
        if missing:
            yield split, Skip(record_id, f"missing column(s) {missing}", source, missing[0])
            continue
        base = {"id": record_id, "source": source, "direction": row["direction"],
                "distance": number_cell(row["distance"], text_table), "analysis": row.get("analysis")}
        try:
            yield split, _with_images(base, [row["image1"], row["image2"]], images_dir)
        except SkipRecord as skip:
            yield split, Skip(record_id, skip.reason, source, skip.field)


def _z_value(row: dict, field: str, text_table: bool) -> float:
    value = number_cell(row[field], text_table)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise SkipRecord(f"{field} must be a number, got {value!r}", field)
    number = float(value)
    if not math.isfinite(number):
        raise SkipRecord(f"{field} must be a finite number, got {value!r}", field)
    return number


def read_stacks(path: Path, images_dir: Path | None, *, steps_per_z: float = 1.0, only_split: str | None = None,
                limit: int | None = None, rule: SplitRule = SplitRule()) -> Iterator[tuple[str, object]]:
    text_table = is_text_table(path)
    stacks: dict[str, list] = {}
    # the slices of one stack share a split (--val-fraction)
    rows = rows_with_splits(path, rule, key=lambda row: str(row.get("stack_id")),
                            warn=only_split in (None, DEFAULT_SPLIT))
    for split, (number, row) in rows:
        missing = [] if isinstance(row, Skip) else [c for c in STACK_COLUMNS if row.get(c) in (None, "")]
        if missing:
            row = Skip(f"row{number}", f"missing column(s) {missing}", row_source(path, number), missing[0])
        if isinstance(row, Skip):
            if only_split is None or split == only_split:
                yield split, row
            continue
        stacks.setdefault(str(row["stack_id"]), []).append((number, row, split))
    per_split: dict[str, int] = {}
    for stack_id, rows in stacks.items():
        split = rows[0][2]
        if only_split is not None and split != only_split:
            continue
        splits = sorted({s for _, _, s in rows})
        if len(splits) > 1:
            yield split, Skip(stack_id, f"stack's rows name several splits {splits}", path.name, "split")
            continue
        try:
            slices = sorted((_z_value(r, "z", text_table), n, r["image"]) for n, r, _ in rows)
            focus = {_z_value(r, "focus_z", text_table) for _, r, _ in rows}
        except SkipRecord as skip:
            yield split, Skip(stack_id, skip.reason, path.name, skip.field)
            continue
        if len(focus) != 1:
            yield split, Skip(stack_id, f"stack has several focus_z values {sorted(focus)}", path.name, "focus_z")
            continue
        focus_z = focus.pop()
        for (z_a, n_a, image_a), (z_b, n_b, image_b) in zip(slices, slices[1:]):
            if per_split.get(split, 0) == limit:
                break
            per_split[split] = per_split.get(split, 0) + 1
            delta = (focus_z - z_b) * steps_per_z
            base = {"id": f"{stack_id}_z{z_a:g}_z{z_b:g}", "source": f"{path.name}:{n_a},{n_b}",
                    "direction": "+" if delta > 0 else "-", "distance": round(abs(delta))}
            try:
                yield split, _with_images(base, [image_a, image_b], images_dir)
            except SkipRecord as skip:
                yield split, Skip(base["id"], skip.reason, base["source"], skip.field)


# ---- registration -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_split_options(parser)
    parser.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help="user text after the two <image> tags (conversation rows keep their own)")
    parser.add_argument("--steps-per-z", type=float, default=1.0, help="motor steps per z unit (z-stack input)")
    parser.add_argument("--max-distance", type=positive_int, default=MAX_DISTANCE,
                        help="largest plausible move in motor steps; a record beyond it is skipped")


def read(args: argparse.Namespace, images: Path | None) -> Conversion:
    source = Path(args.input)
    if is_stack_table(source):
        items = read_stacks(source, images, steps_per_z=args.steps_per_z, only_split=args.split, limit=args.limit,
                            rule=SplitRule.of(args))
    else:
        items = read_pairs(source, images, only_split=args.split, limit=args.limit, rule=SplitRule.of(args))
    return Conversion(items, to_sample, MicroscopyOptions(args.prompt, args.max_distance), [source])


def check_row(row: dict, options: dict, resize_path: str, image_sizes: list) -> list[str]:
    """The answer is the JSON move the eval parses: direction +|- and a whole number of steps."""
    last = row["messages"][-1] if row["messages"] else {}
    try:
        answer = json.loads(last.get("content", "") if isinstance(last, dict) else "")
    except (json.JSONDecodeError, TypeError):
        return ["assistant answer is not JSON"]
    if not isinstance(answer, dict) or answer.get("direction") not in ("+", "-") \
            or not isinstance(answer.get("distance"), int):
        return ["answer lacks direction +|- or integer distance"]
    return []


register_source(Source(
    command="microscopy", tasks=("microscopy",), dataset="microscopy", help="microscope focusing image pairs",
    description=__doc__,
    input_help="pairs JSON/JSONL/CSV (image1,image2,direction,distance[,analysis]) | conversation rows "
               "(the seed's `conversations` JSONL/JSON) | z-stack CSV/JSON (stack_id,image,z,focus_z)",
    images_help="default: the input's folder", add_arguments=add_arguments, read=read, check_row=check_row))
