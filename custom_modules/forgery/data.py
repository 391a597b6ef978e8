"""Forgery rows (the converters' output) -> model batches, for our own loop and evaluation, and the
per-image label/mask lookup the trainer integrations add to their batches.

A row: {"messages": [user "<image>prompt", assistant word], "images": [path], "label": 0|1, "mask": png|null}.
Masks are compared at `mask_size` x `mask_size` (image frame, aspect not kept): a real image's mask is all
zeros; a fake without a mask file is marked invalid, so its heatmap loss is skipped (and counted).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from converters.images import read_mask

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


class Collator:
    """rows -> processor batch (+ LM labels on the answer word when `with_answer`) + forgery fields."""

    def __init__(self, processor, mask_size: int, with_answer: bool = True):
        self.processor, self.mask_size, self.with_answer = processor, mask_size, with_answer
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
        images = [Image.open(row["images"][0]).convert("RGB") for row in rows]
        batch = dict(self.processor(text=texts, images=images, return_tensors="pt", padding=True))
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
