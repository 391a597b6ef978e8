"""Read model answers back: boxes (through converters.boxes, the one place that knows each family's box
convention), JSON answers, and real/fake words. Each parser says why it failed instead of guessing."""
from __future__ import annotations

import json
import re
from dataclasses import dataclass

from converters.boxes import parse_boxes
from converters.geometry import resized_size
from converters.schema import Box

_FENCE = re.compile(r"^```[A-Za-z]*\s*\n?(.*?)\n?\s*```$", re.DOTALL)


@dataclass(frozen=True)
class JsonAnswer:
    value: dict | None
    error: str | None  # "empty answer" | "invalid JSON" | "JSON is not an object"


def parse_json_answer(text: str) -> JsonAnswer:
    """The answer as a JSON object; a surrounding ``` / ```json fence is allowed, nothing else is."""
    body = text.strip()
    fenced = _FENCE.match(body)
    if fenced:
        body = fenced.group(1).strip()
    if not body:
        return JsonAnswer(None, "empty answer")
    try:
        value = json.loads(body)
    except json.JSONDecodeError:
        return JsonAnswer(None, "invalid JSON")
    if not isinstance(value, dict):
        return JsonAnswer(None, "JSON is not an object")
    return JsonAnswer(value, None)


@dataclass(frozen=True)
class WordAnswer:
    label: int | None  # 1 fake, 0 real
    error: str | None  # "no real/fake word" | "both real and fake words"


def parse_real_fake(text: str, real_word: str, fake_word: str) -> WordAnswer:
    """1 when the answer says `fake_word`, 0 for `real_word` (whole words, any case)."""
    said_real = re.search(rf"\b{re.escape(real_word)}\b", text, re.IGNORECASE) is not None
    said_fake = re.search(rf"\b{re.escape(fake_word)}\b", text, re.IGNORECASE) is not None
    if said_real and said_fake:
        return WordAnswer(None, "both real and fake words")
    if not (said_real or said_fake):
        return WordAnswer(None, "no real/fake word")
    return WordAnswer(int(said_fake), None)


@dataclass(frozen=True)
class BoxConvention:
    """How one family sees an image and writes boxes; every grounding score names one.

    resize_path is the trainer's (converters.geometry): eval feeds images resized exactly that way and
    reads boxes back with the same geometry that rendered the references."""

    family: str
    min_pixels: int
    max_pixels: int
    resize_path: str = "hf"
    processor_pixels: tuple[int, int] | None = None

    def resized(self, image_size: tuple[int, int]) -> tuple[int, int]:
        """(width, height) of the image as the model sees it."""
        return resized_size(*image_size, self.family, self.resize_path, min_pixels=self.min_pixels,
                            max_pixels=self.max_pixels, processor_pixels=self.processor_pixels)

    def parse(self, text: str, image_size: tuple[int, int]) -> list[Box]:
        return parse_boxes(text, self.family, tuple(image_size), min_pixels=self.min_pixels,
                           max_pixels=self.max_pixels, resize_path=self.resize_path,
                           processor_pixels=self.processor_pixels)

    def describe(self) -> str:
        if self.family == "qwen2_5_vl":
            limits = f", processor pixels {list(self.processor_pixels)}" if self.processor_pixels else ""
            units = (f"JSON bbox_2d in absolute pixels of the image as resized by the {self.resize_path} path "
                     f"(factor 28, min_pixels {self.min_pixels}, max_pixels {self.max_pixels}{limits})")
        elif self.family == "qwen2_vl":
            units = "<|box_start|>(x1,y1),(x2,y2)<|box_end|> ints 0..1000 relative to the image"
        else:
            units = "JSON bbox_2d ints 0..1000 relative to the image"
        return f"{self.family}: {units}"
