"""Image forgery: list JSON {"image_path", "label" 0 real | 1 fake, "mask_path" png | "HxW"} -> one-word answer.

The LM target is exactly the label word. `label` (0/1) and `mask` (absolute png path, or null for real
images and for fakes whose mask is missing) ride in both outputs for the detection head; a real image's
mask is all zeros of its size. A fake without its mask is kept and listed as maskless in the manifest; a
fake whose mask reads empty with the head's own reader (converters.images.read_mask) is skipped.
"""
from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from converters.images import ImageFolderProbe, existing_image, is_file, read_mask, resolve_image, trainer_image
from converters.options import add_split_options, image_prompt
from converters.registry import Conversion, Source, register_source
from converters.schema import Sample, Skip, SkipRecord, Turn
from converters.sources.tables import SplitRule, is_text_table, number_cell, row_source, split_rows

SIZE_TEXT = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


@dataclass(frozen=True)
class ForgeryOptions:
    real_word: str = "real"
    fake_word: str = "fake"
    own_prompt: str | None = None  # --prompt, as converters.options.image_prompt made it

    @property
    def prompt(self) -> str:
        return self.own_prompt or (f"<image>Is this image real or manipulated? Answer with one word: "
                                   f"{self.real_word} or {self.fake_word}.")


def parse_label(value: object) -> int:
    """0 or 1, as an integer (a CSV cell is read as its number first: tables.number_cell)."""
    if not isinstance(value, int) or isinstance(value, bool) or value not in (0, 1):
        raise SkipRecord(f"label must be 0 (real) or 1 (fake), got {value!r}", "label")
    return value


def to_sample(record: dict, opts: ForgeryOptions, resize_path: str = "hf") -> Sample:
    """record: {"id", "image", "size", "label", "mask" (abs path or None)}."""
    label = parse_label(record["label"])
    word = opts.fake_word if label else opts.real_word
    return Sample(id=record["id"], images=(record["image"],),
                  turns=(Turn("user", opts.prompt), Turn("assistant", word)),
                  image_sizes=(tuple(record["size"]),), extra={"label": label, "mask": record["mask"]})


def read_list(path: Path, images_dir: Path | None, only_split: str | None = None,
              limit: int | None = None, rule: SplitRule = SplitRule()) -> Iterator[tuple[str, object]]:
    probe = ImageFolderProbe(path, images_dir, hint="")
    text_table = is_text_table(path)
    # rows of one image share a split (--val-fraction)
    for split, (number, row) in split_rows(path, only_split, limit, rule, key=_image_key):
        if isinstance(row, Skip):
            yield split, row
            continue
        record_id = str(row.get("id") or row.get("image_path") or f"row{number}")
        source = row_source(path, number)
        try:
            if not row.get("image_path"):
                raise SkipRecord("empty image_path", "image_path")
            if not isinstance(row["image_path"], str):
                raise SkipRecord(f"image_path must be a string, got {row['image_path']!r}", "image_path")
            image = trainer_image(probe.look(existing_image, images_dir, row["image_path"], "image_path"), "image_path")
            label = parse_label(number_cell(row.get("label"), text_table))
            mask, mask_note = _mask(row.get("mask_path"), label, image.size, images_dir)
        except SkipRecord as skip:
            yield split, Skip(record_id, skip.reason, source, skip.field)
            continue
        record = {"id": record_id, "source": source, "image": image.path, "size": image.size, "label": label,
                  "mask": mask}
        note = "; ".join(n for n in (image.note, mask_note) if n)
        if note:
            record["note"] = note
        yield split, record
    probe.finish()


def _image_key(row: dict) -> str:
    return str(row.get("image_path"))


def _mask(mask_path: object, label: int, size: tuple[int, int], images_dir: Path | None):
    """(mask path or None, manifest note or None) after checking the mask against the image."""
    text = "" if mask_path is None else str(mask_path)
    if label == 0:
        match = SIZE_TEXT.match(text)
        if text and not match:
            raise SkipRecord(f"a real image's mask_path must be 'HxW', got {text!r}", "mask_path")
        if match and (int(match.group(2)), int(match.group(1))) != tuple(size):
            raise SkipRecord(f"mask_path {text!r} (HxW) differs from the image's {size[1]}x{size[0]}", "mask_path")
        return None, None
    path = resolve_image(images_dir, text, "mask_path") if text and not SIZE_TEXT.match(text) else ""
    if not path or not is_file(path):
        return None, f"maskless: fake image without a mask file ({text or 'no mask_path'})"
    problem = mask_problem(path, size)
    if problem:
        raise SkipRecord(problem, "mask_path")
    return path, None


def mask_problem(path: str, size: tuple[int, int]) -> str | None:
    """Why the detection head cannot train a fake on this mask (None when it can): unreadable, another size
    than the image, or no manipulated pixel as the head reads it (read_mask, the head's own reader)."""
    try:
        mask = read_mask(path)
    except Exception as error:  # PIL reports a damaged file with several exception types
        return f"unreadable mask {path}: {type(error).__name__}: {error}"
    height, width = mask.shape
    if (width, height) != tuple(size):
        return f"mask {path} is {width}x{height}, image is {size[0]}x{size[1]}"
    if not mask.any():
        return (f"mask {path} reads empty (no pixel above half its range): the head would train this fake "
                "against an all-real heatmap")
    return None


# ---- registration -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_split_options(parser)
    parser.add_argument("--real-word", default="real", help="the answer for label 0")
    parser.add_argument("--fake-word", default="fake", help="the answer for label 1")
    parser.add_argument("--prompt", type=image_prompt, default=None,
                        help="the user prompt, <image> first unless placed (default: \"" + ForgeryOptions().prompt
                             + "\", with --real-word/--fake-word)")


def read(args: argparse.Namespace, images: Path | None) -> Conversion:
    source = Path(args.input)
    items = read_list(source, images, only_split=args.split, limit=args.limit, rule=SplitRule.of(args))
    return Conversion(items, to_sample, ForgeryOptions(args.real_word, args.fake_word, args.prompt), [source])


def check_row(row: dict, options: dict, resize_path: str, image_sizes: list) -> list[str]:
    """The mask a fake row names reads as a mask of its image with manipulated pixels (the head reads it)."""
    if not row.get("mask"):
        return []
    if not os.path.isfile(row["mask"]):
        return [f"mask {row['mask']} does not exist"]
    problem = mask_problem(row["mask"], image_sizes[0]) if image_sizes and image_sizes[0] else None
    return [problem] if problem else []


register_source(Source(
    command="forgery", tasks=("forgery",), dataset="forgery", help="real/fake image classification with masks",
    description=__doc__,
    input_help='list JSON/JSONL/CSV of {"image_path", "label" 0|1, "mask_path" png | "HxW"[, "split"]}',
    images_help="default: the input's folder", add_arguments=add_arguments, read=read, check_row=check_row))
