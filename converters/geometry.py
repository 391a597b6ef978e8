"""Box geometry and Qwen's image resizing, reproduced exactly as each consumer runs it.

Three resize paths exist and can differ by up to one factor step (28 or 32 px) per side once an
image is larger than `max_pixels`:

- "hf": the transformers image processor alone (`Qwen2VLImageProcessor` smart_resize with the given
  min/max pixels). This is what plain HF inference / eval does when it sets the processor's limits.
- "swift": ms-swift 4.6 resizes with qwen-vl-utils' `fetch_image` (its own smart_resize, limits from
  the MAX_PIXELS / MIN_PIXELS env vars, which swift turns into token counts by integer division by
  factor**2) and then calls the processor with do_resize=False.
- "llamafactory": LLaMA-Factory 0.9.5 `_preprocess_image` first scales the PIL image so that
  w*h <= image_max_pixels (and >= image_min_pixels) with int() truncation, enforces a 28 px minimum
  side (Qwen2VLPlugin), and only then the HF processor smart_resizes with ITS OWN limits (the
  checkpoint's preprocessor_config, not the recipe's).
"""
from __future__ import annotations

import math

from converters.schema import Box

RESIZE_PATHS = ("hf", "swift", "llamafactory")

# Patch size x spatial merge size: the side of one visual token in pixels.
FACTORS = {"qwen2_vl": 28, "qwen2_5_vl": 28, "qwen3_vl": 32}

# (min_pixels, max_pixels) of the official checkpoints' preprocessor_config.json; LLaMA-Factory leaves
# them in place and pre-scales the image instead.
PROCESSOR_PIXELS = {
    "qwen2_vl": (56 * 56, 28 * 28 * 16384),
    "qwen2_5_vl": (56 * 56, 28 * 28 * 16384),
    "qwen3_vl": (65536, 16777216),
}

MAX_ASPECT_RATIO = 200


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 28 * 28 * 1280) -> tuple[int, int]:
    """transformers' Qwen2-VL smart_resize (5.x): (height, width) divisible by factor, area in range.

    A copy, not an import: importing it from transformers loads torch (~6 s, 4000 modules), which the
    converters otherwise never need; tests/unit/test_geometry.py checks it against transformers' own."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                         f"got {max(height, width) / min(height, width)}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def smart_resize_qwen_vl_utils(height: int, width: int, factor: int, min_pixels: int,
                               max_pixels: int) -> tuple[int, int]:
    """qwen-vl-utils 0.0.14 smart_resize: differs from transformers' only at the edges (a side below
    factor/2 rounds up to one factor; the max branch has no lower bound)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, "
                         f"got {max(height, width) / min(height, width)}")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def llamafactory_prescale(width: int, height: int, image_max_pixels: int,
                          image_min_pixels: int) -> tuple[int, int]:
    """LLaMA-Factory 0.9.5 BasePlugin._preprocess_image + Qwen2VLPlugin._preprocess_image sizes."""
    if width * height > image_max_pixels:
        scale = math.sqrt(image_max_pixels / (width * height))
        width, height = int(width * scale), int(height * scale)
    if width * height < image_min_pixels:
        scale = math.sqrt(image_min_pixels / (width * height))
        width, height = int(width * scale), int(height * scale)
    if min(width, height) < 28:
        width, height = max(width, 28), max(height, 28)
    if width / height > MAX_ASPECT_RATIO:
        width = height * 180
    if height / width > MAX_ASPECT_RATIO:
        height = width * 180
    return width, height


def resized_size(width: int, height: int, family: str, path: str, *, min_pixels: int, max_pixels: int,
                 processor_pixels: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) of the image the model sees, for one resize path (see module doc).

    min_pixels/max_pixels are the recipe's limits (LLaMA-Factory image_min/max_pixels, swift
    MIN_PIXELS/MAX_PIXELS, HF processor min/max_pixels). processor_pixels overrides the checkpoint's
    own processor limits, which only the "llamafactory" path consults.
    """
    factor = FACTORS[family]
    if path == "hf":
        h, w = smart_resize(height, width, factor, min_pixels, max_pixels)
    elif path == "swift":
        # swift: MAX_PIXELS -> IMAGE_MAX_TOKEN_NUM = MAX_PIXELS // factor**2 -> back to pixels.
        step = factor * factor
        h, w = smart_resize_qwen_vl_utils(height, width, factor, (min_pixels // step) * step,
                                          (max_pixels // step) * step)
    elif path == "llamafactory":
        proc_min, proc_max = processor_pixels or PROCESSOR_PIXELS[family]
        pre_w, pre_h = llamafactory_prescale(width, height, max_pixels, min_pixels)
        h, w = smart_resize(pre_h, pre_w, factor, proc_min, proc_max)
    else:
        raise ValueError(f"unknown resize path {path!r}; expected one of {RESIZE_PATHS}")
    return w, h


def xywh_to_xyxy(x: float, y: float, w: float, h: float) -> Box:
    return Box(float(x), float(y), float(x) + float(w), float(y) + float(h))


def clip_box(box: Box, width: int, height: int, tolerance: float = 2.0) -> Box | None:
    """Clip a box to the image when it overshoots by at most `tolerance` pixels on every side.

    Returns None for a box that lies further outside, is inverted, or has no area after clipping.
    """
    if box.x1 < -tolerance or box.y1 < -tolerance or box.x2 > width + tolerance or box.y2 > height + tolerance:
        return None
    clipped = Box(min(max(box.x1, 0.0), width), min(max(box.y1, 0.0), height),
                  min(max(box.x2, 0.0), width), min(max(box.y2, 0.0), height))
    if clipped.x2 <= clipped.x1 or clipped.y2 <= clipped.y1:
        return None
    return clipped
