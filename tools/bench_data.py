"""Benchmark data shaped like users' data: COCO's mix of image sizes and the task's own range of text lengths.

`write_bench_data(out, task, n, family=...)` writes `n` one-image training rows (LLaMA-Factory sharegpt +
dataset_info, ms-swift jsonl, the same rows) over up to 512 distinct seeded JPEGs:

- `shape="coco"` (the default of every benchmark): image sizes drawn from COCO's size mix (COCO_SIZES; most
  images are 640 pixels on the long side and not square), and texts as the converters write them for the task:
  a caption of 8-24 words (COCO captions average about 10.5), or a RefCOCO/RefCOCOg referring expression of
  1-20 words in the converter's own grounding prompt, answered with the family's box convention
  (converters.boxes) for a box inside the image. A caption recipe that resizes its images (the converter's
  `--resize 280x280`) gets images of that size: what its data really holds.
- `shape="ideal"`: one fixed square size and fixed-length texts, the best case for compilation, batching and
  padding. Figures measured on it are labelled "ideal", never given as the figure.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

# (width, height, percent of images): the most common sizes of COCO-2014 train images, approximate shares. The
# rest (TAIL_PERCENT) keeps the long side at 640 with the short side drawn from 360..640. Checked against two
# published statistics of COCO train (tests/unit/test_bench_data.py): 90% of images hold 167,500-355,840 pixels,
# and 90% have a height/width ratio of 0.6-1.5.
COCO_SIZES = ((640, 480, 31.0), (640, 427, 16.0), (480, 640, 9.0), (427, 640, 5.0), (640, 426, 3.0),
              (640, 428, 3.0), (640, 425, 2.0), (500, 375, 2.0), (640, 360, 2.0), (612, 612, 1.5),
              (640, 640, 1.5), (375, 500, 1.0), (640, 512, 1.0))
TAIL_PERCENT = 100.0 - sum(share for _, _, share in COCO_SIZES)
LANDSCAPE_SHARE = 0.75  # of the tail, as in the common sizes above
SHAPES = ("coco", "ideal")
MAX_IMAGES = 512

WORDS = ("the a red blue green small large dog cat car tree house person table chair on in near left right top "
         "bottom with and of is there two three one white black man woman street window door sign road sky "
         "sitting standing holding next to behind front wooden old young little big plate pizza bus train "
         "bike horse kite umbrella bench field water grass snow beach kitchen").split()
CAPTION_PROMPT = "Describe the image in one sentence."
IDEAL = {"caption": dict(side=280, answer_words=14), "grounding": dict(side=448, answer_words=44)}
IDEAL_GROUNDING_PROMPT = "Locate every object in the image and describe it."


def coco_image_size(rng: random.Random) -> tuple[int, int]:
    """(width, height) drawn from COCO's size mix."""
    pick = rng.uniform(0, 100)
    for width, height, share in COCO_SIZES:
        if pick < share:
            return width, height
        pick -= share
    short = rng.randint(360, 640)
    return (640, short) if rng.random() < LANDSCAPE_SHARE else (short, 640)


def words(rng: random.Random, count: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(count))


def caption_turns(rng: random.Random) -> tuple[str, str]:
    count = min(max(round(rng.gauss(10.5, 2.5)), 8), 24)
    return "<image>" + CAPTION_PROMPT, words(rng, count).capitalize() + "."


def grounding_turns(rng: random.Random, size: tuple[int, int], family: str, min_pixels: int,
                    max_pixels: int) -> tuple[str, str]:
    """The RefCOCO converter's prompt and answer (converters.sources.refcoco, converters.boxes) for a referring
    expression of RefCOCO/RefCOCOg length and a box inside the image."""
    from converters.boxes import render_grounding
    from converters.schema import Box
    from converters.sources.refcoco import rec_prompt

    phrase = words(rng, min(max(round(rng.gauss(6.0, 3.5)), 1), 20))
    width, height = size
    x1, y1 = rng.uniform(0, width * 0.7), rng.uniform(0, height * 0.7)
    box = Box(x1, y1, rng.uniform(x1 + 8, width), rng.uniform(y1 + 8, height))
    answer = render_grounding(phrase, box, size, family, min_pixels=min_pixels, max_pixels=max_pixels)
    return rec_prompt(phrase, family), answer


def write_image(path: Path, size: tuple[int, int], seed: int) -> None:
    """A smooth random picture (upsampled noise): it compresses like a photo, not like white noise."""
    import numpy as np
    from PIL import Image

    width, height = size
    coarse = np.random.default_rng(seed).integers(0, 256, (max(height // 16, 2), max(width // 16, 2), 3),
                                                  dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path, quality=90)


def write_bench_data(out_dir: Path, task: str, n: int, family: str, min_pixels: int, max_pixels: int,
                     shape: str = "coco", resize: int | None = None, seed: int = 0) -> Path:
    """`n` rows of `task` ("caption" or "grounding") over min(n, MAX_IMAGES) distinct images; `resize` is the
    side of the square images a resizing converter wrote (coco shape only). Returns `out_dir`."""
    from converters.targets import dataset_info_entry

    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: expected one of {SHAPES}")
    if task not in IDEAL:
        raise ValueError(f"task {task!r}: expected one of {sorted(IDEAL)}")
    rng = random.Random(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    ideal_side = IDEAL[task]["side"]
    sizes = []
    for i in range(min(n, MAX_IMAGES)):
        if shape == "ideal":
            size = (ideal_side, ideal_side)
        else:
            size = (resize, resize) if resize else coco_image_size(rng)
        write_image(out_dir / f"img_{i:03d}.jpg", size, seed + i)
        sizes.append(size)
    rows = []
    for i in range(n):
        image = i % len(sizes)
        if shape == "ideal":
            prompt = "<image>" + (CAPTION_PROMPT if task == "caption" else IDEAL_GROUNDING_PROMPT)
            answer = words(rng, IDEAL[task]["answer_words"]) + "."
        elif task == "caption":
            prompt, answer = caption_turns(rng)
        else:
            prompt, answer = grounding_turns(rng, sizes[image], family, min_pixels, max_pixels)
        rows.append({"messages": [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}],
                     "images": [str(out_dir / f"img_{image:03d}.jpg")]})
    (out_dir / "bench_train.json").write_text(json.dumps(rows))
    (out_dir / "bench_train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    info = {"bench_train": dataset_info_entry("bench_train.json")}
    (out_dir / "dataset_info.json").write_text(json.dumps(info, indent=1))
    return out_dir
