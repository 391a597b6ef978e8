"""Converter throughput on a generated full-size COCO captions json.

    python -m tools.bench_converters [--captions 400000] [--target both] [--distinct] [--keep DIR]

Writes captions_train2014.json with captions/5 images (width/height in the json, as COCO has) and one
640x480 JPEG hard-linked under every image name (a new file every LINKS_PER_FILE names: filesystems cap
the links of one file, ext4 at 65000), then times `python -m converters coco-caption` in-process and prints
records/s (captions converted per second, by wall clock and per CPU-second of this process). The converter
reads each image's header and decodes each image file once (converters.images: hard links are one file, and
a file decoded in an earlier run is not decoded again); `--distinct` writes a different JPEG per image
instead, to time a first conversion of real data, where every image is decoded.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from converters.__main__ import main as converters_main

CAPTIONS_PER_IMAGE = 5
LINKS_PER_FILE = 50_000


@functools.lru_cache(maxsize=1)
def _shading_and_noise() -> tuple[np.ndarray, np.ndarray]:
    y, x = np.mgrid[0:480, 0:640]
    shade = 128 + 90 * np.sin(x / 40 + y / 57)[..., None] * np.array([1.0, 0.8, 0.6])
    return shade, np.random.default_rng(0).normal(0, 12, (480 + 97, 640 + 89, 3))


def photo_like(seed: int) -> Image.Image:
    """A 640x480 image that compresses like a photo (smooth shading plus sensor-like noise, ~110 kB as a
    quality-90 JPEG), a different one per seed."""
    shade, noise = _shading_and_noise()
    dy, dx = seed % 97, (seed // 97) % 89
    return Image.fromarray(np.clip(shade + noise[dy:dy + 480, dx:dx + 640], 0, 255).astype(np.uint8))


def make_captions_json(root: Path, captions: int, distinct: bool = False) -> Path:
    images_dir = root / "train2014"
    images_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for image_id in range(1, captions // CAPTIONS_PER_IMAGE + 1):
        file_name = f"COCO_train2014_{image_id:012d}.jpg"
        template = root / f"template{image_id // LINKS_PER_FILE}.jpg"
        if not distinct and not template.exists():
            Image.new("RGB", (640, 480), (120, 90, 60)).save(template, quality=50)
        if (images_dir / file_name).exists():
            pass
        elif distinct:
            photo_like(image_id).save(images_dir / file_name, quality=90)
        else:
            os.link(template, images_dir / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": 640, "height": 480})
        for k in range(CAPTIONS_PER_IMAGE):
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "caption": f" A man riding a wave on top of surfboard number {image_id} take {k}. "})
    path = root / "captions_train2014.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations}), encoding="utf-8")
    return path


def bench(root: Path, captions: int, target: str, workers: int, distinct: bool = False) -> float:
    source = make_captions_json(root, captions, distinct)
    out = root / "out"
    start, cpu_start = time.perf_counter(), time.process_time()
    code = converters_main(["coco-caption", "--input", str(source), "--out", str(out), "--target", target,
                            "--workers", str(workers)])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    if code != 0:
        raise SystemExit(f"conversion failed with exit code {code}")
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    converted = manifest["datasets"]["coco_caption_train"]["count"]
    if converted != captions:
        raise SystemExit(f"converted {converted} of {captions} captions")
    rate = converted / elapsed
    # Wall time is what a user waits; CPU time (this process; workers not counted) shows the main
    # process's own cost when other jobs share the cores.
    print(f"coco-caption --target {target} --workers {workers}: {converted} records in {elapsed:.2f} s = {rate:,.0f} records/s "
          f"(CPU {cpu:.2f} s = {converted / cpu:,.0f} records/s per CPU-second; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    return rate


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.bench_converters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--captions", type=int, default=400_000)
    parser.add_argument("--target", choices=("llamafactory", "swift", "both"), default="both")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="default: one per core")
    parser.add_argument("--distinct", action="store_true",
                        help="a different JPEG per image (a first conversion of real data: every image decoded)")
    parser.add_argument("--keep", type=Path, help="work in this directory instead of a temporary one")
    args = parser.parse_args(argv)
    if args.keep:
        bench(args.keep, args.captions, args.target, args.workers, args.distinct)
    else:
        with tempfile.TemporaryDirectory() as root:
            bench(Path(root), args.captions, args.target, args.workers, args.distinct)


if __name__ == "__main__":
    main()
