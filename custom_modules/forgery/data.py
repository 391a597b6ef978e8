"""Forgery rows (the converters' output) -> model batches, for our own loop and evaluation, and the
per-image label/mask lookup the trainer integrations add to their batches.

A row: {"messages": [user "<image>prompt", assistant word], "images": [path], "label": 0|1, "mask": png|null}.
Masks are compared at `mask_size` x `mask_size` (image frame, aspect not kept): a real image's mask is all
zeros; a fake without a mask file is marked invalid, so its heatmap loss is skipped (and counted).
Images reach the processor as the trainer handed them to it (TrainingImages, recorded with every checkpoint), so
evaluation sees the patch grid training saw.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from converters.geometry import llamafactory_prescale, smart_resize_qwen_vl_utils
from converters.images import read_mask
from qwenvl_recipes.settings import parse_dataclass

IMAGE_PLACEHOLDER = "<image>"
QWEN_IMAGE_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"


def read_rows(path: str | os.PathLike, limit: int | None = None) -> list[dict]:
    """Rows of a converter output file (.jsonl lines or a .json list); checks the keys the head needs."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    rows = ([json.loads(line) for line in text.splitlines() if line.strip()] if path.suffix == ".jsonl"
            else json.loads(text))
    rows = rows[:limit] if limit else rows
    for number, row in enumerate(rows):
        for key in ("messages", "images", "label"):
            if key not in row:
                raise ValueError(f"{path}[{number}]: forgery row lacks {key!r} (convert with `python -m converters forgery`)")
        if len(row["images"]) != 1:
            raise ValueError(f"{path}[{number}]: forgery rows carry exactly one image, got {len(row['images'])}")
    return rows


def image_key(path: str) -> str:
    return os.path.normcase(os.path.abspath(path))


def load_mask(row: dict, size: int) -> tuple[torch.Tensor, bool]:
    """(size x size float mask in {0, 1}, known?) for one row."""
    if int(row["label"]) == 0:
        return torch.zeros(size, size), True
    if not row.get("mask"):
        return torch.zeros(size, size), False
    # The converter's reader: it skipped fakes whose mask reads empty with it, so both agree on every pixel.
    mask = Image.fromarray(read_mask(row["mask"]).astype(np.uint8) * 255).resize((size, size), Image.NEAREST)
    return torch.from_numpy((np.asarray(mask) > 127).astype(np.float32)), True


def forgery_fields(rows: list[dict], mask_size: int) -> dict[str, torch.Tensor]:
    """The batch keys the attached forward pops: forgery_labels, forgery_masks, forgery_mask_valid."""
    masks = [load_mask(row, mask_size) for row in rows]
    return {"forgery_labels": torch.tensor([float(row["label"]) for row in rows]),
            "forgery_masks": torch.stack([m for m, _ in masks]),
            "forgery_mask_valid": torch.tensor([v for _, v in masks])}


class RowIndex:
    """Rows by absolute image path: trainer collators see image paths, not our extra columns."""

    def __init__(self, rows: list[dict]):
        self.rows = {image_key(row["images"][0]): row for row in rows}

    def lookup(self, image: str | dict) -> dict:
        path = image.get("path") if isinstance(image, dict) else image
        row = self.rows.get(image_key(str(path)))
        if row is None:
            raise KeyError(f"image {path} is in the training data but not in the forgery rows (label/mask unknown)")
        return row


def prompt_text(tokenizer, row: dict) -> str:
    """The chat-template prompt up to `<|im_start|>assistant\\n`, image placeholder in Qwen's form."""
    user = row["messages"][0]["content"].replace(IMAGE_PLACEHOLDER, QWEN_IMAGE_TOKENS)
    return tokenizer.apply_chat_template([{"role": "user", "content": user}], tokenize=False,
                                         add_generation_prompt=True)


@dataclass(frozen=True)
class TrainingImages:
    """How a trainer sized each image for the processor (converters/geometry.py's resize paths), with its limits:
    "llamafactory": its Qwen2-VL plugin scales the image into [min_pixels, max_pixels] (image_min/max_pixels),
    then the processor smart_resizes it at the processor's own limits; "swift": qwen-vl-utils' smart_resize into
    [min_pixels, max_pixels] (MIN_PIXELS / MAX_PIXELS as whole visual tokens), the processor then keeps that size."""
    resize: str = field(metadata={"choices": ("llamafactory", "swift")})
    min_pixels: int
    max_pixels: int


def parse_training_images(raw, where: str) -> TrainingImages | None:
    """A checkpoint's recorded TrainingImages (null: images went to the processor as they are)."""
    return None if raw is None else parse_dataclass(TrainingImages, raw, where, lambda key: f"{where}.{key}")


def as_trained(images: list[Image.Image], training: TrainingImages | None,
               image_processor) -> tuple[list[Image.Image], dict]:
    """(images, processor keyword arguments) that give the processor's output for these images in training: the
    same resize before it, the same resizing (or none) in it. `training` None: the processor at its own limits."""
    if training is None:
        return images, {}
    sized = []
    for image in images:
        width, height = image.size
        if training.resize == "llamafactory":
            size = llamafactory_prescale(width, height, training.max_pixels, training.min_pixels)
        else:
            factor = image_processor.patch_size * image_processor.merge_size
            height, width = smart_resize_qwen_vl_utils(height, width, factor, training.min_pixels,
                                                       training.max_pixels)
            size = (width, height)
        sized.append(image if size == image.size else image.resize(size, Image.Resampling.BICUBIC))
    return sized, {"do_resize": False} if training.resize == "swift" else {}


class Collator:
    """rows -> processor batch (+ LM labels on the answer word when `with_answer`) + forgery fields; images sized
    as `training_images` says the trainer sized them (None: as they are, the processor at its own limits)."""

    def __init__(self, processor, mask_size: int, with_answer: bool = True,
                 training_images: TrainingImages | None = None):
        self.processor, self.mask_size, self.with_answer = processor, mask_size, with_answer
        self.training_images = training_images
        tokenizer = processor.tokenizer
        self.end_ids = tokenizer.encode("<|im_end|>\n", add_special_tokens=False)

    def __call__(self, rows: list[dict]) -> dict:
        tokenizer = self.processor.tokenizer
        texts, answers = [], []
        for row in rows:
            text = prompt_text(tokenizer, row)
            if self.with_answer:
                answer = row["messages"][-1]["content"]
                answers.append(tokenizer.encode(answer, add_special_tokens=False) + self.end_ids[:-1])
                text += answer + "<|im_end|>\n"
            texts.append(text)
        images, sizing = as_trained([Image.open(row["images"][0]).convert("RGB") for row in rows],
                                    self.training_images, self.processor.image_processor)
        batch = dict(self.processor(text=texts, images=images, return_tensors="pt", padding=True, **sizing))
        if self.with_answer:
            batch["labels"] = self._labels(batch, answers)
        batch.update(forgery_fields(rows, self.mask_size))
        return batch

    def _labels(self, batch: dict, answers: list[list[int]]) -> torch.Tensor:
        """-100 everywhere but the answer tokens and <|im_end|> (the final newline is not predicted)."""
        ids, attention = batch["input_ids"], batch["attention_mask"]
        labels = torch.full_like(ids, -100)
        for i, answer in enumerate(answers):
            end = int(attention[i].cumsum(0).argmax()) + 1 - (len(self.end_ids) - 1)
            start = end - len(answer)
            if ids[i, start:end].tolist() != answer:
                raise ValueError(f"row {i}: answer tokens not found at the end of the templated text")
            labels[i, start:end] = ids[i, start:end]
        return labels
