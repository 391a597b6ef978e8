"""Deterministic small datasets in the REAL source formats, for tests, the demo and CI.

    python -m tools.synthetic_data <coco_caption|refcoco|microscopy|forgery|all> --out DIR [--n N] [--seed S]

Each make_<task>(out_dir, n=..., seed=...) returns the path to pass to `python -m converters <task> --input`
(relative image paths resolve against that input's directory, so --images can be left out):
- coco_caption: <out>/captions_train2014.json + captions_val2014.json (official layout, images in
  <out>/train2014, <out>/val2014); returns <out> (the converter reads every captions_*.json in it).
- shape_caption: the same layout, one attribute caption per image ("A red circle on a white background.",
  eval.metrics.caption.ATTRIBUTE_CAPTION) of one large shape: a task a tiny model can learn (docs/learning.md).
- refcoco: refer layout <out>/refs(umd).p (plain pickle, protocol 2 like the Python 2 originals) +
  instances.json, images in <out>/train2014; a ref's file_name carries the _<ann_id> suffix.
- shape_grounding: the same refer layout, one shape per image placed anywhere, images of several aspect
  ratios, train / val splits: the box depends only on where the shape is (docs/learning.md).
- microscopy: <out>/pairs.jsonl (image1,image2,direction,distance,analysis) and <out>/zstack.csv
  (stack_id,image,z,focus_z); returns pairs.jsonl (pass zstack.csv for the z-stack input).
- focus_pairs: the same pairs.jsonl layout (with a split column), each pair two blurs of one texture: the
  second image sharper exactly when the focal plane lies ahead ("+"): a task a tiny model can learn.
- forgery: <out>/list.json ({image_path, label, mask_path png | "HxW"}) with spliced fakes + png masks
  (with_test: a test split beside val, for scoring a checkpoint chosen on val).
Images are 64-128 px so CPU training on tiny models stays fast.
"""
from __future__ import annotations

import argparse
import csv
import json
import pickle
import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter

from eval.metrics.caption import ATTRIBUTE_CAPTION

COLORS = {"red": (220, 40, 40), "green": (40, 170, 60), "blue": (40, 70, 220), "yellow": (230, 210, 40)}
SHAPES = ("circle", "square", "triangle")
BACKGROUNDS = {"white": (245, 245, 245), "gray": (128, 128, 128), "black": (15, 15, 15)}
SIZES = ((128, 96), (96, 128), (112, 112), (128, 64))


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: list[int], fill: tuple[int, int, int]) -> None:
    """One filled shape inside the xyxy box (x2, y2 exclusive)."""
    x1, y1, x2, y2 = box
    if shape == "circle":
        draw.ellipse([x1, y1, x2 - 1, y2 - 1], fill=fill)
    elif shape == "square":
        draw.rectangle([x1, y1, x2 - 1, y2 - 1], fill=fill)
    else:
        draw.polygon([((x1 + x2) / 2, y1), (x1, y2 - 1), (x2 - 1, y2 - 1)], fill=fill)


def _draw_shapes(rng: random.Random, size: tuple[int, int]) -> tuple[Image.Image, str, list[tuple[str, str, list]]]:
    """An image with 1-3 distinct colored shapes; returns (image, background, [(color, shape, xywh box)])."""
    background = rng.choice(sorted(BACKGROUNDS))
    image = Image.new("RGB", size, BACKGROUNDS[background])
    draw = ImageDraw.Draw(image)
    kinds = rng.sample([(c, s) for c in sorted(COLORS) for s in SHAPES], rng.randint(1, 3))
    shapes = []
    width, height = size
    for i, (color, shape) in enumerate(kinds):
        side = rng.randint(16, min(width, height) // 2)
        # spread shapes over horizontal bands so they rarely overlap
        band = width // len(kinds)
        x = rng.randint(i * band, max(i * band, (i + 1) * band - side))
        x = min(x, width - side)
        y = rng.randint(0, height - side)
        _draw_shape(draw, shape, [x, y, x + side, y + side], COLORS[color])
        shapes.append((color, shape, [float(x), float(y), float(side), float(side)]))
    return image, background, shapes


def _position(box: list, width: int) -> str:
    center = box[0] + box[2] / 2
    return "on the left" if center < width / 3 else "on the right" if center > 2 * width / 3 else "in the middle"


def _captions(rng: random.Random, background: str, shapes: list, width: int) -> list[str]:
    """Five captions from a tiny grammar describing the drawn shapes."""
    things = [f"a {c} {s}" for c, s, _ in shapes]
    listed = things[0] if len(things) == 1 else ", ".join(things[:-1]) + " and " + things[-1]
    count = {1: "one shape", 2: "two shapes", 3: "three shapes"}[len(shapes)]
    color, shape, box = shapes[0]
    return [f"{listed.capitalize()} on a {background} background.",
            f"A {background} picture with {count}.",
            f"{things[0].capitalize()} {_position(box, width)} of the image.",
            f"Simple shapes: {listed}.",
            f"  An image   showing {listed}  "]  # stray whitespace, as real captions have


def _write_coco_split(out_dir: Path, split: str, images: list[dict], annotations: list[dict]) -> None:
    data = {"info": {"description": "synthetic COCO-2014 captions"}, "images": images, "annotations": annotations}
    (out_dir / f"captions_{split}2014.json").write_text(json.dumps(data), encoding="utf-8")


def make_coco_caption(out_dir: Path, n: int = 8, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    for split, count in (("train", n), ("val", max(2, n // 4))):
        folder = out_dir / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image_id = (1 if split == "train" else 500000) + i
            size = rng.choice(SIZES)
            image, background, shapes = _draw_shapes(rng, size)
            file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
            image.save(folder / file_name, quality=90)
            images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
            for caption in _captions(rng, background, shapes, size[0]):
                annotations.append({"id": len(annotations) + 10 * image_id, "image_id": image_id, "caption": caption})
        _write_coco_split(out_dir, split, images, annotations)
    return out_dir


def _write_refer(out_dir: Path, images: list[dict], annotations: list[dict], refs: list[dict]) -> None:
    categories = [{"id": i + 1, "name": s} for i, s in enumerate(SHAPES)]
    (out_dir / "instances.json").write_text(json.dumps({"images": images, "annotations": annotations,
                                                        "categories": categories}), encoding="utf-8")
    (out_dir / "refs(umd).p").write_bytes(pickle.dumps(refs, protocol=2))


def _ref(ref_id: int, ann_id: int, image_id: int, split: str, shape: str, sentences: list[str]) -> dict:
    sent_ids = [10 * ann_id + k for k in range(len(sentences))]
    return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "category_id": SHAPES.index(shape) + 1, "sent_ids": sent_ids,
            "sentences": [{"sent_id": s, "sent": t, "raw": t, "tokens": t.split()}
                          for s, t in zip(sent_ids, sentences)]}


# Shape captions: one shape filling 80-90% of a 112 px image. A 2-block random ViT's features carry colour
# and background at any size but the shape only when it is large (a probe: small shapes left shape at chance).
CAPTION_IMAGE_SIZE = (112, 112)
CAPTION_SHAPE_FILL = (0.80, 0.90)


def make_shape_caption(out_dir: Path, n: int = 400, seed: int = 0, n_val: int | None = None) -> Path:
    """n train and n_val (default n // 5, at least 2) held-out images, each with exactly one attribute caption."""
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    width, height = CAPTION_IMAGE_SIZE
    for split, count in (("train", n), ("val", n_val if n_val is not None else max(2, n // 5))):
        folder = out_dir / f"{split}2014"
        folder.mkdir(parents=True, exist_ok=True)
        images, annotations = [], []
        for i in range(count):
            image_id = (1 if split == "train" else 500000) + i
            colour, shape, background = (rng.choice(sorted(COLORS)), rng.choice(SHAPES),
                                         rng.choice(sorted(BACKGROUNDS)))
            side = round(min(width, height) * rng.uniform(*CAPTION_SHAPE_FILL))
            x, y = rng.randint(0, width - side), rng.randint(0, height - side)
            image = Image.new("RGB", (width, height), BACKGROUNDS[background])
            _draw_shape(ImageDraw.Draw(image), shape, [x, y, x + side, y + side], COLORS[colour])
            file_name = f"COCO_{split}2014_{image_id:012d}.jpg"
            image.save(folder / file_name, quality=90)
            images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
            caption = ATTRIBUTE_CAPTION.format(colour=colour, shape=shape, background=background)
            annotations.append({"id": 10 * image_id, "image_id": image_id, "caption": caption})
        _write_coco_split(out_dir, split, images, annotations)
    return out_dir


# Grounding images: several aspect ratios, so Qwen2.5-VL's absolute-pixel boxes span a different range per
# image; multiples of 56 px of at most 224 a side, so no processor resizes them (<= 64 visual tokens) and a
# 56 px grid cell is exactly 2 x 2 visual tokens after the 2 x 2 merge.
GROUNDING_SIZES = ((224, 168), (168, 224), (168, 168), (224, 112), (112, 224))
GROUNDING_SHAPE_SIDE = (60, 76)  # px whatever the image size (style solid): the box size nearly constant in pixels
GRID_CELL = 56      # style grid_pixels: a cell of 56 px, the grid of absolute pixels every image shares
GRID_CELLS = 4      # style grid_relative: each image cut into 4 x 4 cells of its own width and height
RAMP_CANVAS = 224   # grid_pixels ramps are crops of one 224 px ramp: a colour means one pixel position
RAMP_BLUE = 230  # far from the grey background in every ramp colour
# Grey, near the processors' normalisation mean: background patches come out of it near zero and the shape stands out.
GRID_BACKGROUND = (128, 128, 128)
GROUNDING_STYLES = ("solid", "grid_pixels", "grid_relative")


def _ramp(size: tuple[int, int], relative: bool) -> Image.Image:
    """Red grows left to right, green top to bottom: every patch's colour says where it is, over one fixed
    canvas (`relative` False: absolute pixels, as Qwen2.5-VL boxes are written) or over the image itself
    (`relative` True: the image's fraction, as Qwen2-VL's and Qwen3-VL's 0-1000 boxes are)."""
    canvas = size if relative else (RAMP_CANVAS, RAMP_CANVAS)
    red = Image.linear_gradient("L").rotate(90).resize(canvas).point(lambda v: 30 + v * 190 // 255)
    green = Image.linear_gradient("L").resize(canvas).point(lambda v: 30 + v * 190 // 255)
    ramp = Image.merge("RGB", (red, green, Image.new("L", canvas, RAMP_BLUE)))
    return ramp.crop((0, 0, *size))


def _grid_box(rng: random.Random, size: tuple[int, int], relative: bool) -> list[int]:
    """One cell of the style's grid, drawn uniformly: [x1, y1, x2, y2] in pixels."""
    width, height = size
    cell_w, cell_h = (width // GRID_CELLS, height // GRID_CELLS) if relative else (GRID_CELL, GRID_CELL)
    col, row = rng.randrange(width // cell_w), rng.randrange(height // cell_h)
    return [col * cell_w, row * cell_h, (col + 1) * cell_w, (row + 1) * cell_h]


def make_shape_grounding(out_dir: Path, n: int = 400, seed: int = 0, n_val: int | None = None,
                         style: str = "solid") -> Path:
    """n train and n_val (default n // 5, at least 2) val refs, one shape per image.

    style "solid": a coloured shape of 60-76 px anywhere on a plain background, "the <colour> <shape>".
    "grid_pixels" / "grid_relative": on a grey background, the shape fills one cell of a grid (56 px cells / 4 x 4
    cells of the image) and is painted with a colour ramp (over absolute pixels / over the image), so its visual
    tokens carry where they are in their pixels, and every phrase is "the shape" (docs/learning.md)."""
    if style not in GROUNDING_STYLES:
        raise ValueError(f"style must be one of {', '.join(GROUNDING_STYLES)}, got {style!r}")
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    folder = out_dir / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    splits = ["train"] * n + ["val"] * (n_val if n_val is not None else max(2, n // 5))
    for i, split in enumerate(splits):
        image_id = 1000 + i
        size = rng.choice(GROUNDING_SIZES)
        width, height = size
        colour, shape = rng.choice(sorted(COLORS)), rng.choice(SHAPES)
        if style == "solid":
            side = rng.randint(*GROUNDING_SHAPE_SIDE)
            x, y = rng.randint(0, width - side), rng.randint(0, height - side)
            box = [x, y, x + side, y + side]
            image = Image.new("RGB", size, BACKGROUNDS[rng.choice(sorted(BACKGROUNDS))])
            _draw_shape(ImageDraw.Draw(image), shape, box, COLORS[colour])
            phrase = f"the {colour} {shape}"
        else:
            relative = style == "grid_relative"
            box = _grid_box(rng, size, relative)
            mask = Image.new("L", size, 0)
            _draw_shape(ImageDraw.Draw(mask), shape, box, 255)
            image = Image.composite(_ramp(size, relative), Image.new("RGB", size, GRID_BACKGROUND), mask)
            phrase = "the shape"  # one phrase for every image: the answer differs only in its box
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        image.save(folder / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": width, "height": height})
        ann_id = 50000 + i
        x1, y1, x2, y2 = box
        xywh = [float(x1), float(y1), float(x2 - x1), float(y2 - y1)]
        annotations.append({"id": ann_id, "image_id": image_id, "bbox": xywh, "area": (x2 - x1) * (y2 - y1),
                            "category_id": SHAPES.index(shape) + 1, "iscrowd": 0})
        refs.append(_ref(i, ann_id, image_id, split, shape, [phrase]))
    _write_refer(out_dir, images, annotations, refs)
    return out_dir


def make_refcoco(out_dir: Path, n: int = 12, seed: int = 0) -> Path:
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    folder = out_dir / "train2014"
    folder.mkdir(parents=True, exist_ok=True)
    images, annotations, refs = [], [], []
    splits = ["train"] * max(1, n - n // 4 - n // 6) + ["val"] * (n // 4) + ["test"] * (n // 6)
    for i in range(n):
        image_id = 1000 + i
        size = rng.choice(SIZES)
        image, _, shapes = _draw_shapes(rng, size)
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        image.save(folder / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "width": size[0], "height": size[1]})
        for color, shape, box in shapes:
            ann_id = 50000 + len(annotations)
            annotations.append({"id": ann_id, "image_id": image_id, "bbox": box, "area": box[2] * box[3],
                                "category_id": SHAPES.index(shape) + 1, "iscrowd": 0})
            sentences = [f"the {color} {shape}", f"{color} {shape} {_position(box, size[0])}"]
            refs.append(_ref(len(refs), ann_id, image_id, splits[i], shape, sentences))
    _write_refer(out_dir, images, annotations, refs)
    return out_dir


def _texture(rng: random.Random, size: tuple[int, int]) -> Image.Image:
    image = Image.new("L", size, 30)
    draw = ImageDraw.Draw(image)
    for _ in range(40):
        x, y, r = rng.randrange(size[0]), rng.randrange(size[1]), rng.randint(2, 6)
        draw.ellipse([x - r, y - r, x + r, y + r], fill=rng.randint(120, 255))
    return image.convert("RGB")


def make_microscopy(out_dir: Path, n: int = 8, seed: int = 0) -> Path:
    """n stacks of 5 z slices; blur grows with distance from focus, slices shift slightly."""
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    folder = out_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    stack_rows, pairs = [], []
    for s in range(n):
        base = _texture(rng, (96, 96))
        focus_z = rng.randint(0, 4) * 10
        split = "val" if s % 4 == 3 else "train"
        names = []
        for z in range(0, 50, 10):
            blurred = base.filter(ImageFilter.GaussianBlur(abs(z - focus_z) / 8))
            shifted = blurred.transform(blurred.size, Image.AFFINE, (1, 0, (z - 20) / 10, 0, 1, 0))
            name = f"images/stack{s:03d}_z{z:02d}.png"
            shifted.save(out_dir / name)
            names.append((z, name))
            stack_rows.append({"stack_id": f"stack{s:03d}", "image": name, "z": z, "focus_z": focus_z, "split": split})
        for (z_a, a), (z_b, b) in zip(names, names[1:]):
            delta = focus_z - z_b
            pairs.append({"id": f"stack{s:03d}_{z_a}_{z_b}", "image1": a, "image2": b,
                          "direction": "+" if delta > 0 else "-", "distance": abs(delta),
                          "analysis": "第二张图像更清晰。" if abs(z_b - focus_z) < abs(z_a - focus_z) else "第二张图像更模糊。",
                          "split": split})
    with open(out_dir / "zstack.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["stack_id", "image", "z", "focus_z", "split"])
        writer.writeheader()
        writer.writerows(stack_rows)
    (out_dir / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
                                         encoding="utf-8")
    return out_dir / "pairs.jsonl"


# Focusing pairs a tiny model can learn: the motor moved FOCUS_STEP steps between the two images, so the second
# image is sharper than the first exactly when the focal plane lies further ahead ("+"), blurrier when it was
# passed ("-"); its own blur says how far (distance / FOCUS_BLUR_PER_STEP px of Gaussian sigma).
FOCUS_STEP = 10
FOCUS_DISTANCES = (10, 20, 30)
FOCUS_BLUR_PER_STEP = 1 / 8
FOCUS_IMAGE_SIZE = (96, 96)


def make_focus_pairs(out_dir: Path, n: int = 400, seed: int = 0, n_val: int | None = None) -> Path:
    """n train and n_val (default n // 5, at least 2) held-out focusing pairs in the seed's pairs.jsonl layout
    (image1, image2, direction, distance, analysis, split), half of each direction: the blur difference of the
    two images decides the direction, the second image's blur the distance (docs/learning.md)."""
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    pairs = []
    splits = ["train"] * n + ["val"] * (n_val if n_val is not None else max(2, n // 5))
    for i, split in enumerate(splits):
        texture = _texture(rng, FOCUS_IMAGE_SIZE)
        direction = "+" if i % 2 == 0 else "-"
        distance = rng.choice(FOCUS_DISTANCES)
        # the first image was taken FOCUS_STEP steps before the second: further from focus when heading "+"
        first = distance + FOCUS_STEP if direction == "+" else distance - FOCUS_STEP
        names = []
        for k, steps in enumerate((first, distance)):
            name = f"images/pair{i:04d}_{k + 1}.png"
            texture.filter(ImageFilter.GaussianBlur(steps * FOCUS_BLUR_PER_STEP)).save(out_dir / name)
            names.append(name)
        pairs.append({"id": f"pair{i:04d}", "image1": names[0], "image2": names[1], "direction": direction,
                      "distance": distance,
                      "analysis": "第二张图像更清晰。" if direction == "+" else "第二张图像更模糊。", "split": split})
    (out_dir / "pairs.jsonl").write_text("".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs),
                                         encoding="utf-8")
    return out_dir / "pairs.jsonl"


def _forgery_split(i: int, with_test: bool) -> str:
    """Each held-out split takes one real (even) and one fake (odd) row of every 8, so its AUROC is defined."""
    if with_test:
        return "val" if i % 8 in (1, 6) else "test" if i % 8 in (2, 7) else "train"
    return "val" if i % 8 in (6, 7) else "train"


def make_forgery(out_dir: Path, n: int = 12, seed: int = 0, with_test: bool = False) -> Path:
    """Half real textures, half fakes with a spliced patch of different statistics and its png mask (odd rows);
    rows 6 and 7 of every 8 form the val split, or with_test: rows 1 and 6 val, 2 and 7 test (train 50%)."""
    out_dir = Path(out_dir)
    rng = random.Random(seed)
    (out_dir / "images").mkdir(parents=True, exist_ok=True)
    (out_dir / "masks").mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        size = rng.choice(SIZES)
        image = _texture(rng, size)
        name = f"images/{i:04d}.png"
        split = _forgery_split(i, with_test)
        if i % 2 == 0:
            image.save(out_dir / name)
            rows.append({"image_path": name, "label": 0, "mask_path": f"{size[1]}x{size[0]}", "split": split})
            continue
        w, h = rng.randint(16, size[0] // 2), rng.randint(16, size[1] // 2)
        x, y = rng.randint(0, size[0] - w), rng.randint(0, size[1] - h)
        noise = Image.frombytes("L", (w, h), rng.randbytes(w * h)).convert("RGB")  # seeded, unlike effect_noise
        tint = Image.new("RGB", (w, h), (rng.randint(0, 255), rng.randint(0, 255), rng.randint(0, 255)))
        image.paste(Image.blend(noise, tint, 0.5), (x, y))
        mask = Image.new("L", size, 0)
        ImageDraw.Draw(mask).rectangle([x, y, x + w - 1, y + h - 1], fill=255)
        image.save(out_dir / name)
        mask_name = f"masks/{i:04d}.png"
        mask.save(out_dir / mask_name)
        rows.append({"image_path": name, "label": 1, "mask_path": mask_name, "split": split})
    (out_dir / "list.json").write_text(json.dumps(rows, indent=1), encoding="utf-8")
    return out_dir / "list.json"


MAKERS = {"coco_caption": make_coco_caption, "shape_caption": make_shape_caption, "refcoco": make_refcoco,
          "shape_grounding": make_shape_grounding, "microscopy": make_microscopy,
          "focus_pairs": make_focus_pairs, "forgery": make_forgery}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.synthetic_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=[*MAKERS, "all"])
    parser.add_argument("--out", type=Path, required=True, help="output dir (a subdir per task with 'all')")
    parser.add_argument("--n", type=int, help="number of images / stacks (default: per task)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for task in (MAKERS if args.task == "all" else [args.task]):
        out = args.out / task if args.task == "all" else args.out
        kwargs = {"seed": args.seed} if args.n is None else {"seed": args.seed, "n": args.n}
        print(f"{task}: --input {MAKERS[task](out, **kwargs)}")


if __name__ == "__main__":
    main()
