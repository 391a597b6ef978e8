"""The ONE place that knows each model family's box text convention (eval imports it too).

- qwen2_vl:   <|object_ref_start|>phrase<|object_ref_end|><|box_start|>(x1,y1),(x2,y2)<|box_end|>,
              ints 0..1000 relative to the image.
- qwen2_5_vl: JSON {"bbox_2d": [x1, y1, x2, y2], "label": phrase} in absolute pixels of the image AS
              RESIZED for the model (factor 28). Which resize that is depends on who feeds the model
              (`resize_path`, see converters.geometry): a converter renders each trainer's file with that
              trainer's path; eval parses with the path its own inference uses ("hf" by default).
- qwen3_vl:   JSON bbox_2d, ints 0..1000 relative (factor 32, resize-independent).

JSON answers use the fenced list the official checkpoints emit (```json\\n[\\n\\t{...}\\n]\\n```).
"""
from __future__ import annotations

import json
import re
from typing import Sequence

from converters.geometry import resized_size
from converters.schema import Box

MODEL_FAMILIES = ("qwen2_vl", "qwen2_5_vl", "qwen3_vl")

# Recipe pixel limits per family: 768 visual tokens at most (602112 = 768*28*28, 786432 = 768*32*32),
# at least 4 tokens. Multiples of factor**2 so swift's MAX_PIXELS -> token-count division is exact.
# Grounding recipes must use the same numbers (LLaMA-Factory image_max_pixels / image_min_pixels,
# swift MAX_PIXELS / MIN_PIXELS); a test compares them.
DEFAULT_PIXELS = {
    "qwen2_vl": (4 * 28 * 28, 768 * 28 * 28),
    "qwen2_5_vl": (4 * 28 * 28, 768 * 28 * 28),
    "qwen3_vl": (4 * 32 * 32, 768 * 32 * 32),
}
RELATIVE_SCALE = 1000

_NUM = r"(-?\d+(?:\.\d+)?)"
_PAIR = rf"\(\s*{_NUM}\s*,\s*{_NUM}\s*\)\s*,\s*\(\s*{_NUM}\s*,\s*{_NUM}\s*\)"
_LIST = rf"\[\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*,\s*{_NUM}\s*\]"
_EXPLICIT = re.compile(rf"<\|box_start\|>\s*{_PAIR}\s*<\|box_end\|>|[\"']?bbox_2d[\"']?\s*:\s*{_LIST}")
_BARE = (re.compile(_PAIR), re.compile(_LIST))
# Where a phrase sits in box text: a Qwen2-VL object_ref span (holding no other such token), a JSON string
# that is a value (not a key: no colon follows it). Strings are matched left to right, keys included, so that
# none is taken to start at another's closing quote.
_REF_SPAN = re.compile(r"<\|object_ref_start\|>((?:(?!<\|object_ref_(?:start|end)\|>).)*)<\|object_ref_end\|>",
                       re.DOTALL)
_JSON_STRING = re.compile(r'"(?:[^"\\]|\\.)*"(\s*:)?')
# The Qwen2-VL box as render_box writes it: integer corners between its special tokens.
_BOX_SPAN = re.compile(r"<\|box_start\|>\(\d+,\d+\),\(\d+,\d+\)<\|box_end\|>")


def _check_family(family: str) -> None:
    if family not in MODEL_FAMILIES:
        raise ValueError(f"unknown model family {family!r}; expected one of {MODEL_FAMILIES}")


def default_pixels(family: str) -> tuple[int, int]:
    """(min_pixels, max_pixels) our recipes use for this family."""
    _check_family(family)
    return DEFAULT_PIXELS[family]


def _scale(image_size: tuple[int, int], family: str, min_pixels: int, max_pixels: int, resize_path: str,
           processor_pixels: tuple[int, int] | None) -> tuple[float, float]:
    """Model units per original pixel along x and y."""
    _check_family(family)
    width, height = image_size
    if family == "qwen2_5_vl":
        rw, rh = resized_size(width, height, family, resize_path, min_pixels=min_pixels, max_pixels=max_pixels,
                              processor_pixels=processor_pixels)
        return rw / width, rh / height
    return RELATIVE_SCALE / width, RELATIVE_SCALE / height


def to_model_coords(box: Box, image_size: tuple[int, int], family: str, *, min_pixels: int, max_pixels: int,
                    resize_path: str = "hf", processor_pixels: tuple[int, int] | None = None) -> list[int]:
    """Box in original pixels -> the family's integer coordinates [x1, y1, x2, y2]."""
    sx, sy = _scale(image_size, family, min_pixels, max_pixels, resize_path, processor_pixels)
    limit_x, limit_y = round(image_size[0] * sx), round(image_size[1] * sy)
    return [min(max(round(box.x1 * sx), 0), limit_x), min(max(round(box.y1 * sy), 0), limit_y),
            min(max(round(box.x2 * sx), 0), limit_x), min(max(round(box.y2 * sy), 0), limit_y)]


def render_box(box: Box, image_size: tuple[int, int], family: str, *, min_pixels: int, max_pixels: int,
               resize_path: str = "hf", processor_pixels: tuple[int, int] | None = None) -> str:
    """A box alone, as it appears inside a prompt (region description, REG)."""
    x1, y1, x2, y2 = to_model_coords(box, image_size, family, min_pixels=min_pixels, max_pixels=max_pixels,
                                     resize_path=resize_path, processor_pixels=processor_pixels)
    if family == "qwen2_vl":
        return f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>"
    return json.dumps([x1, y1, x2, y2])


def render_grounding(phrase: str, box: Box, image_size: tuple[int, int], family: str, *, min_pixels: int,
                     max_pixels: int, resize_path: str = "hf",
                     processor_pixels: tuple[int, int] | None = None) -> str:
    """Assistant answer locating `phrase` at `box` (original pixels) in the family's convention."""
    return render_objects(((phrase, box),), image_size, family, min_pixels=min_pixels, max_pixels=max_pixels,
                          resize_path=resize_path, processor_pixels=processor_pixels)


def render_objects(objects: Sequence[tuple[str, Box]], image_size: tuple[int, int], family: str, *,
                   min_pixels: int, max_pixels: int, resize_path: str = "hf",
                   processor_pixels: tuple[int, int] | None = None) -> str:
    """(phrase, box) pairs of one image, in order, as one answer in the family's convention: the Qwen2-VL
    phrase/box tokens one after the other, or one fenced JSON list with an object per box."""
    rendered = []
    for phrase, box in objects:
        coords = to_model_coords(box, image_size, family, min_pixels=min_pixels, max_pixels=max_pixels,
                                 resize_path=resize_path, processor_pixels=processor_pixels)
        if family == "qwen2_vl":
            x1, y1, x2, y2 = coords
            rendered.append(f"<|object_ref_start|>{phrase}<|object_ref_end|>"
                            f"<|box_start|>({x1},{y1}),({x2},{y2})<|box_end|>")
        else:
            rendered.append(json.dumps({"bbox_2d": coords, "label": phrase}, ensure_ascii=False))
    if family == "qwen2_vl":
        return "".join(rendered)
    return "```json\n[\n\t" + ",\n\t".join(rendered) + "\n]\n```"


def parse_boxes(text: str, family: str, image_size: tuple[int, int], *, min_pixels: int, max_pixels: int,
                resize_path: str = "hf", processor_pixels: tuple[int, int] | None = None) -> list[Box]:
    """Every box in a model answer, back in ORIGINAL image pixels, in order of appearance.

    Accepts the Qwen2-VL special-token form and JSON `bbox_2d` (fenced or not, one object or a list);
    only when neither occurs, bare `(x1,y1),(x2,y2)` pairs, then bare `[x1, y1, x2, y2]` lists. Scale
    follows `family` whichever form the text uses. Returns [] when nothing parses. Boxes are not clipped.
    Phrases are never read as boxes: the text of an object_ref span and of a JSON string value (a label)
    is set aside first, so box-like text in a referring expression cannot become the answer's box.
    """
    sx, sy = _scale(image_size, family, min_pixels, max_pixels, resize_path, processor_pixels)
    text = _JSON_STRING.sub(lambda string: string.group(0) if string.group(1) else '""', _REF_SPAN.sub(" ", text))
    matches = list(_EXPLICIT.finditer(text))
    for pattern in _BARE:
        if matches:
            break
        matches = list(pattern.finditer(text))
    boxes = []
    for match in matches:
        x1, y1, x2, y2 = (float(v) for v in match.groups() if v is not None)
        boxes.append(Box(x1 / sx, y1 / sy, x2 / sx, y2 / sy))
    return boxes


def split_box_markup(text: str, family: str) -> tuple[str, list[str]]:
    """(`text` without the family's box markup, the phrases that markup wrapped). Qwen2-VL writes boxes with
    special tokens (render_grounding, render_box); the JSON families use none, so their text comes back whole.
    What is left, and each phrase, is text from the data (converters.trainable)."""
    _check_family(family)
    if family != "qwen2_vl":
        return text, []
    phrases = _REF_SPAN.findall(text)
    return _BOX_SPAN.sub(" ", _REF_SPAN.sub(" ", text)), phrases
