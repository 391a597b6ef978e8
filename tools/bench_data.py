"""Benchmark data shaped like users' data: COCO's mix of image sizes and the task's own range of text lengths.

`write_bench_data(out, task, n, family=...)` (or `python -m tools.bench_data '{"out_dir": ..., "task": ...}'`, its
arguments as one JSON object) writes `n` one-image training rows (LLaMA-Factory sharegpt +
dataset_info, ms-swift jsonl, the same rows) over up to 512 distinct seeded JPEGs:

- `shape="coco"` (the default of every benchmark): image sizes drawn from COCO's size mix (COCO_SIZES; most
  images are 640 pixels on the long side and not square), and texts as the converters write them for the task:
  a caption of 8-24 words (COCO captions average about 10.5), or a RefCOCO/RefCOCOg referring expression of
  1-20 words in the converter's own grounding prompt, answered with the family's box convention
  (converters.boxes) for a box inside the image. A caption recipe that resizes its images (the converter's
  `--resize 280x280`) gets images of that size: what its data really holds.
- `shape="ideal"`: one fixed square size and fixed-length texts, the best case for compilation, batching and
  padding. Figures measured on it are labelled "ideal", never given as the figure.

The other recipe families' data (coco shape only) goes through their own converter, so the rows are what users'
conversions hold (`python -m converters <family> ... --name bench`):

- `forgery`: CASIA / Columbia-like photographs (FORGERY_SIZES: most images 384x256 or 256x384, a tail up to
  Columbia's 1152x768), 41% spliced (CASIA v2's share) with a PNG mask of the splice, the rest real.
- `microscopy`: focusing pairs of two microscope frames (MICROSCOPY_SIDES: 1024x1024 or 2048x2048 grayscale PNGs,
  a camera's 16-bit frames as 8-bit) with the converter's prompt and JSON answer.
- `report`: chest X-ray-sized grayscale JPEGs (REPORT_SIZES) with findings texts of 30-120 words, converted as the
  report recipes' Data line converts a CSV.
"""
from __future__ import annotations

import json
import random
import sys
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

# (width, height, percent of images) of forgery benchmark sets: CASIA v1 (all 384x256) and v2 (mostly 384x256 or
# 256x384, 240x160 up to 900x600), Columbia's uncompressed splicing set (757x568 up to 1152x768). Approximate
# shares of a mix of the three.
FORGERY_SIZES = ((384, 256, 52.0), (256, 384, 14.0), (240, 160, 3.0), (500, 375, 5.0), (640, 480, 5.0),
                 (800, 600, 5.0), (900, 600, 3.0), (600, 800, 2.0), (757, 568, 7.0), (568, 757, 1.0),
                 (1152, 768, 3.0))
FAKE_SHARE = 0.41  # CASIA v2: 5,123 tampered of 12,614 images
MICROSCOPY_SIDES = (1024, 2048)  # square camera frames, half of each
MICROSCOPY_FRAMES = 64  # distinct frames (2048x2048 PNGs take a fraction of a second each to write)
# (width, height) of chest X-rays as datasets ship them: MIMIC-CXR-JPG portrait and landscape, Open-i PNG exports
# resized to JPEG, CheXpert's downsampled copies.
REPORT_SIZES = ((2544, 3056), (3056, 2544), (2048, 2500), (1024, 1024), (390, 320))
REPORT_IMAGES = 64
REPORT_PROMPT = "Write the findings section of the radiology report."
CONVERTED = ("forgery", "microscopy", "report")
# How the records and tables name the converted families' data.
DATA_LABELS = {"forgery": "forgery: CASIA/Columbia sizes, 41% spliced with masks",
               "microscopy": "microscopy: frame pairs of 1024/2048 px, JSON answers",
               "report": "report: chest X-ray sizes, findings of 30-120 words"}

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


def write_image(path: Path, size: tuple[int, int], seed: int, channels: int = 3) -> None:
    """A smooth random picture (upsampled noise): it compresses like a photo, not like white noise; one channel
    gives a grayscale image (microscope frames, X-rays)."""
    import numpy as np
    from PIL import Image

    width, height = size
    shape = (max(height // 16, 2), max(width // 16, 2)) + ((channels,) if channels > 1 else ())
    coarse = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    Image.fromarray(coarse).resize((width, height), Image.BILINEAR).save(path, quality=90)


def pick_size(rng: random.Random, sizes: tuple) -> tuple[int, int]:
    """(width, height) drawn from (width, height, percent) shares."""
    pick = rng.uniform(0, sum(share for _, _, share in sizes))
    for width, height, share in sizes:
        if pick < share:
            return width, height
        pick -= share
    return sizes[-1][:2]


def convert(family_command: str, source: Path, out_dir: Path, family: str, *options: str) -> None:
    """Run the family's converter on `source` into `out_dir` as dataset `bench` (bench_train.json/.jsonl and
    its dataset_info entry); a skipped record is an error (--strict)."""
    from converters.__main__ import main as converters_main

    status = converters_main([family_command, "--input", str(source), "--out", str(out_dir), "--model", family,
                              "--name", "bench", "--strict", *options])
    if status:
        raise RuntimeError(f"converting {source} with `converters {family_command}` failed (exit {status})")


def forgery_source(folder: Path, n: int, rng: random.Random, seed: int) -> Path:
    """The forgery converter's list JSON: n images of FORGERY_SIZES, FAKE_SHARE of them with a mask PNG of an
    elliptical splice covering 2-25% of the image; up to MAX_IMAGES distinct images, reused past that."""
    from PIL import Image, ImageDraw

    rows = []
    for i in range(min(n, MAX_IMAGES)):
        size = pick_size(rng, FORGERY_SIZES)
        name = f"img_{i:03d}.jpg"
        write_image(folder / name, size, seed + i)
        if rng.random() >= FAKE_SHARE:
            rows.append({"image_path": name, "label": 0, "mask_path": f"{size[1]}x{size[0]}"})
            continue
        width, height = size
        area = rng.uniform(0.02, 0.25) * width * height
        w = min(width, max(8, round((area * rng.uniform(0.5, 2.0)) ** 0.5)))
        h = min(height, max(8, round(area / w)))
        x, y = rng.randint(0, width - w), rng.randint(0, height - h)
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).ellipse([x, y, x + w - 1, y + h - 1], fill=255)
        mask.save(folder / f"mask_{i:03d}.png")
        rows.append({"image_path": name, "label": 1, "mask_path": f"mask_{i:03d}.png"})
    rows = [dict(rows[i % len(rows)], id=f"row{i}") for i in range(n)]
    (folder / "list.json").write_text(json.dumps(rows))
    return folder / "list.json"


def microscopy_source(folder: Path, n: int, rng: random.Random, seed: int) -> Path:
    """The microscopy converter's pairs table: n pairs of two frames of one side (MICROSCOPY_SIDES, half each)
    drawn from MICROSCOPY_FRAMES distinct frames, a direction and a distance of 0-300 motor steps."""
    frames = {side: [] for side in MICROSCOPY_SIDES}
    for i in range(min(2 * n, MICROSCOPY_FRAMES)):
        side = MICROSCOPY_SIDES[i % len(MICROSCOPY_SIDES)]
        name = f"frame_{i:03d}.png"
        write_image(folder / name, (side, side), seed + i, channels=1)
        frames[side].append(name)
    pairs = []
    for i in range(n):
        names = frames[MICROSCOPY_SIDES[i % len(MICROSCOPY_SIDES)]]
        first = rng.randrange(len(names))
        pairs.append({"id": f"pair{i}", "image1": names[first], "image2": names[(first + 1) % len(names)],
                      "direction": rng.choice("+-"), "distance": rng.randint(0, 300)})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    return folder / "pairs.jsonl"


def report_source(folder: Path, n: int, rng: random.Random, seed: int) -> Path:
    """The report recipes' CSV (image_path,caption): REPORT_IMAGES X-ray-sized grayscale JPEGs, findings texts of
    30-120 words."""
    import csv

    names = []
    for i in range(min(n, REPORT_IMAGES)):
        name = f"cxr_{i:03d}.jpg"
        write_image(folder / name, REPORT_SIZES[i % len(REPORT_SIZES)], seed + i, channels=1)
        names.append(name)
    with open(folder / "reports.csv", "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["image_path", "caption"])
        for i in range(n):
            sentences, remaining = [], rng.randint(30, 120)
            while remaining:  # sentences of 6-14 words
                count = min(remaining, rng.randint(6, 14))
                sentences.append(words(rng, count).capitalize() + ".")
                remaining -= count
            writer.writerow([names[i % len(names)], " ".join(sentences)])
    return folder / "reports.csv"


SOURCES = {"forgery": (forgery_source, "forgery", ()), "microscopy": (microscopy_source, "microscopy", ()),
           "report": (report_source, "coco-caption", ("--prompt", REPORT_PROMPT))}


def write_converted_data(out_dir: Path, task: str, n: int, family: str, seed: int = 0) -> Path:
    """`n` rows of a converted family (SOURCES) in `out_dir`: the source files beside it (<out_dir>-source: a
    converter refuses an output folder holding its input), the converter's output (dataset `bench`) in out_dir."""
    make_source, command, options = SOURCES[task]
    folder = out_dir.parent / f"{out_dir.name}-source"
    folder.mkdir(parents=True, exist_ok=True)
    source = make_source(folder, n, random.Random(seed), seed)
    convert(command, source, out_dir, family, *options)
    return out_dir


def write_bench_data(out_dir: Path, task: str, n: int, family: str, min_pixels: int, max_pixels: int,
                     shape: str = "coco", resize: int | None = None, seed: int = 0) -> Path:
    """`n` rows of `task` ("caption" or "grounding" over min(n, MAX_IMAGES) distinct images; "forgery",
    "microscopy" or "report" through their converters, coco shape only); `resize` is the side of the square
    images a resizing converter wrote (coco shape only). Returns `out_dir`, which holds dataset `bench_train`."""
    from converters.targets import dataset_info_entry

    out_dir = Path(out_dir)
    if shape not in SHAPES:
        raise ValueError(f"shape {shape!r}: expected one of {SHAPES}")
    if task in CONVERTED and shape == "coco":
        return write_converted_data(out_dir, task, n, family, seed)
    if task not in IDEAL:
        expected = sorted(IDEAL) if shape == "ideal" else sorted([*IDEAL, *CONVERTED])
        raise ValueError(f"task {task!r} with shape {shape!r}: expected one of {expected}")
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


if __name__ == "__main__":
    write_bench_data(**json.loads(sys.argv[1]))
