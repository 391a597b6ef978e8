"""Chat-format files: one conversation per row of a JSON list or JSONL file, in any of the forms people train
Qwen-VL with, single- or multi-image, one or several turns:

- qwen-vl-finetune / LLaVA: {"image": "a.jpg" | ["a.jpg", "b.jpg"], "conversations": [{"from": "human",
  "value": "<image>\\n..."}, {"from": "gpt", "value": "..."}]}
- ShareGPT: {"messages": [{"role": "user", "content": "<image>..."}, ...], "images": ["a.jpg"]}
- typed content (transformers / qwen-vl-utils): {"messages": [{"role": "user", "content": [{"type": "image",
  "image": "a.png"}, {"type": "text", "text": "..."}]}, ...]}
- image paths inline in the text, <|vision_start|>a.jpg<|vision_end|>: each becomes an `images` entry and an
  <image> placeholder where it stood.

Texts are kept as written, with one <image> per image, in the order the images are given; paths resolve against
--images. An optional system turn opens the conversation, then user and assistant turns alternate and the
assistant's ends it (LLaMA-Factory drops any other order without a word). --task names what the conversations
train, for the manifest and `eval run --task`. Boxes: qwen-vl-finetune writes `bbox_2d` JSON in pixels of the
original image; `--boxes pixels` (or `relative`, for 0-1000 boxes) rewrites every such JSON list or object into
the --model family's convention (converters.boxes), per trainer for Qwen2.5-VL.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from converters.boxes import render_objects
from converters.geometry import clip_box
from converters.images import ImageFolderProbe, existing_image, image_size
from converters.options import add_box_options, add_split_options, box_pixels
from converters.registry import TASK_NAMES, Conversion, Source, register_source
from converters.schema import Box, Sample, Skip, SkipRecord, Turn
from converters.sources import forgery, microscopy, refcoco
from converters.sources.conversations import local_name, parse_row
from converters.sources.tables import SplitRule, row_content, row_source, split_rows
from qwenvl_recipes.io import InputError

BOX_READINGS = {"pixels": "pixels of the original image, as qwen-vl-finetune writes them",
                "relative": "0-1000 across the original image, as Qwen2-VL and Qwen3-VL data"}
JSON_BLOCK = re.compile(r"```json[ \t]*\n(.*?)\n?```", re.S)
# A box, as opposed to a prompt naming the key ('answer with "bbox_2d" and "label"'): the key, then numbers.
BOX_VALUE = re.compile(r"[\"']bbox_2d[\"']\s*:\s*\[\s*-?\d")
BOX_KEYS = ("bbox_2d", "label")


@dataclass(frozen=True)
class ChatOptions:
    """What to_sample needs of the command line: the task its last answers are checked for, the box convention."""

    task: str
    family: str
    min_pixels: int
    max_pixels: int
    boxes: str | None = None                 # a BOX_READINGS key: how bbox_2d values are read; None: not at all
    processor_pixels: tuple[int, int] | None = None
    box_tolerance: float = 2.0


# ---- boxes ---------------------------------------------------------------------------------------------


def rewrite_boxes(text: str, size: tuple[int, int] | None, opts: ChatOptions, resize_path: str,
                  where: str) -> tuple[str, list[tuple[str, Box]]]:
    """A turn's text with each JSON list or object of bbox_2d boxes (fenced ```json, or the whole text) in the
    family's convention, and the (label, box) pairs in original pixels. `size`: the row's one image."""
    if not BOX_VALUE.search(text):
        return text, []
    if opts.boxes is None:
        raise SkipRecord("the text holds bbox_2d boxes: say how to read them, "
                         + " or ".join(f"--boxes {k} ({v})" for k, v in BOX_READINGS.items()), where)
    if size is None:
        raise SkipRecord("bbox_2d boxes in a row without exactly one image: which image they lie in is not said",
                         where)
    pixels = dict(min_pixels=opts.min_pixels, max_pixels=opts.max_pixels, resize_path=resize_path,
                  processor_pixels=opts.processor_pixels)
    found: list[tuple[str, Box]] = []

    def render(block: str) -> str:
        objects = _read_objects(block, size, opts, where)
        found.extend(objects)
        return render_objects(objects, size, opts.family, **pixels)

    if not JSON_BLOCK.search(text):
        return render(text), found
    if BOX_VALUE.search(JSON_BLOCK.sub("", text)):
        raise SkipRecord("bbox_2d outside a ```json block", where)
    rewritten = JSON_BLOCK.sub(lambda match: render(match.group(1)) if BOX_VALUE.search(match.group(1))
                               else match.group(0), text)
    return rewritten, found


def _read_objects(block: str, size: tuple[int, int], opts: ChatOptions, where: str) -> list[tuple[str, Box]]:
    try:
        value = json.loads(block)
    except json.JSONDecodeError as error:
        raise SkipRecord(f"bbox_2d boxes that are not JSON ({error.msg}): {block.strip()[:80]!r}", where) from None
    objects = [value] if isinstance(value, dict) else value
    if not isinstance(objects, list) or not objects or not all(isinstance(o, dict) for o in objects):
        raise SkipRecord(f"expected a JSON object or list of objects with bbox_2d, got {block.strip()[:80]!r}", where)
    width, height = size
    scale = (1.0, 1.0) if opts.boxes == "pixels" else (width / 1000, height / 1000)
    read = []
    for obj in objects:
        if sorted(obj) != sorted(BOX_KEYS) or not isinstance(obj["label"], str) or not obj["label"].strip():
            raise SkipRecord(f"a box object holds bbox_2d and a non-empty label, nothing else: got {obj!r}"[:200],
                             where)
        values = obj["bbox_2d"]
        if not refcoco.is_box(values):
            raise SkipRecord(f"bbox_2d must be 4 finite numbers, got {values!r}", where)
        box = Box(values[0] * scale[0], values[1] * scale[1], values[2] * scale[0], values[3] * scale[1])
        clipped = clip_box(box, width, height, opts.box_tolerance)
        if clipped is None:
            raise SkipRecord(f"box {values} ({opts.boxes}) outside the {width}x{height} image beyond "
                             f"{opts.box_tolerance} px, or empty", where)
        read.append((obj["label"], clipped))
    return read


# ---- record -> Sample ----------------------------------------------------------------------------------


def to_sample(record: dict, opts: ChatOptions, resize_path: str = "hf") -> Sample:
    """record: {"id", "key", "turns" [(role, text)], "images" (abs paths), "sizes"}: the conversation as written,
    its boxes in the family's convention; the last answer must be one its task is scored on."""
    sizes = tuple(tuple(s) for s in record["sizes"])
    size = sizes[0] if len(sizes) == 1 else None
    turns, objects, found = [], [], []
    for i, (role, text) in enumerate(record["turns"]):
        text, found = rewrite_boxes(text, size, opts, resize_path, f"{record['key']}[{i}]")
        turns.append(Turn(role, text))
        objects += found if role == "assistant" else []
    if opts.task == "grounding" and not found:
        raise SkipRecord("no bbox_2d box in the last answer, which a grounding row is scored on",
                         f"{record['key']}[{len(turns) - 1}]")
    if opts.task == "microscopy":
        microscopy.parse_answer(turns[-1].content)
    return Sample(id=record["id"], images=tuple(record["images"]), turns=tuple(turns), image_sizes=sizes,
                  objects=tuple(objects))


# ---- reading -------------------------------------------------------------------------------------------


def _images_key(row: dict) -> str:
    """What --val-fraction groups rows by: their images as written (rows about one image share a split)."""
    try:
        names = parse_row(row).image_names
    except SkipRecord:
        names = ()
    return json.dumps(names, default=str) if names else row_content(row)


def read_chat(path: Path, images_dir: Path | None, *, only_split: str | None = None, limit: int | None = None,
              rule: SplitRule = SplitRule()) -> Iterator[tuple[str, object]]:
    probe = ImageFolderProbe(path, images_dir, hint="")
    for split, (number, row) in split_rows(path, only_split, limit, rule, key=_images_key):
        if isinstance(row, Skip):
            yield split, row
            continue
        record_id, source = f"row{number}", row_source(path, number)
        try:
            chat = parse_row(row)
            paths, sizes = [], []
            for name, field in zip(chat.image_names, chat.image_fields):
                paths.append(probe.look(existing_image, images_dir, local_name(name, field), field))
                sizes.append(image_size(paths[-1], field))
        except SkipRecord as skip:
            yield split, Skip(record_id, skip.reason, source, skip.field)
            continue
        yield split, {"id": record_id, "source": source, "key": chat.key, "turns": chat.turns, "images": paths,
                      "sizes": sizes}
    probe.finish()


# ---- registration -------------------------------------------------------------------------------------

# The rows of a task must pass the check of the source that task's recipes were written for.
TASK_ROW_CHECKS = {"grounding": refcoco.check_row, "microscopy": microscopy.check_row, "forgery": forgery.check_row}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_split_options(parser)
    parser.add_argument("--boxes", choices=BOX_READINGS, default=None,
                        help="how to read bbox_2d boxes, each rewritten in the --model family's convention: "
                             + "; ".join(f"{k}: {v}" for k, v in BOX_READINGS.items())
                             + " (default: none expected; a row holding one is skipped)")
    add_box_options(parser)


def read(args: argparse.Namespace, images: Path | None) -> Conversion:
    if args.task == "grounding" and args.boxes is None:
        raise InputError("--task grounding: say how the bbox_2d values are to be read, --boxes "
                         + " or --boxes ".join(BOX_READINGS))
    source = Path(args.input)
    min_pixels, max_pixels = box_pixels(args)
    options = ChatOptions(args.task, args.model, min_pixels, max_pixels, args.boxes, args.processor_pixels,
                          args.box_tolerance)
    items = read_chat(source, images, only_split=args.split, limit=args.limit, rule=SplitRule.of(args))
    # Qwen2.5-VL boxes live in resized-image pixels, and the trainers resize differently.
    return Conversion(items, to_sample, options, [source], options={"min_pixels": min_pixels, "max_pixels": max_pixels},
                      trainer_dependent=args.boxes is not None and args.model == "qwen2_5_vl")


def check_row(row: dict, options: dict, resize_path: str, image_sizes: list) -> list[str]:
    check = TASK_ROW_CHECKS.get(options.get("task"))
    return check(row, options, resize_path, image_sizes) if check else []


register_source(Source(
    command="chat", tasks=TASK_NAMES, dataset="chat", help="chat-format conversations (qwen-vl-finetune, LLaVA, "
    "ShareGPT, typed content)", description=__doc__,
    input_help="a JSON list or JSONL of conversation rows (see the description)",
    images_help="default: the input's folder", add_arguments=add_arguments, read=read, check_row=check_row))
