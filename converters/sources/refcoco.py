"""RefCOCO / RefCOCO+ / RefCOCOg: the `refer` layout and Hugging Face parquet rows -> grounding samples.

refer layout: <dir>/refs(<splitby>).p (pickled list of refs) + <dir>/instances.json. A ref's own
`file_name` carries an `_<ann_id>` suffix and names no real file: the image is the one instances.json
lists for the ref's image_id. The box is the ref's annotation bbox, COCO xywh floats.
Every sentence of a ref becomes one record (REC and/or REG).
"""
from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from converters.boxes import render_box, render_grounding
from converters.files import existing_image, find_coco_image, image_size, store_image_bytes
from converters.geometry import clip_box, xywh_to_xyxy
from converters.safe_pickle import load_plain_pickle
from converters.schema import Box, Sample, Skip, SkipRecord, Turn
from converters.sources.tables import select_splits

SPLITBYS = ("umd", "google", "unc")
TASKS = ("rec", "reg")


@dataclass(frozen=True)
class RefOptions:
    family: str
    min_pixels: int
    max_pixels: int
    processor_pixels: tuple[int, int] | None = None
    box_tolerance: float = 2.0


def rec_prompt(phrase: str, family: str) -> str:
    if family == "qwen2_vl":
        return f"<image>Find the bounding box of <|object_ref_start|>{phrase}<|object_ref_end|>."
    return f'<image>Locate "{phrase}" in the image and output its bbox coordinates in JSON format.'


def reg_prompt(box_text: str) -> str:
    return f"<image>Describe the region {box_text} in a short phrase."


def to_sample(record: dict, opts: RefOptions, resize_path: str = "hf") -> Sample:
    """record: {"id", "task" rec|reg, "image", "size" (w, h), "phrase", "bbox" [4 floats], "bbox_format"}."""
    phrase = " ".join(str(record["phrase"] or "").split())
    if not phrase:
        raise SkipRecord("empty referring expression", "sentence")
    box = record_box(record, opts.box_tolerance)
    size = tuple(record["size"])
    pixels = dict(min_pixels=opts.min_pixels, max_pixels=opts.max_pixels, resize_path=resize_path,
                  processor_pixels=opts.processor_pixels)
    if record["task"] == "rec":
        turns = (Turn("user", rec_prompt(phrase, opts.family)),
                 Turn("assistant", render_grounding(phrase, box, size, opts.family, **pixels)))
    else:
        turns = (Turn("user", reg_prompt(render_box(box, size, opts.family, **pixels))),
                 Turn("assistant", phrase))
    return Sample(id=record["id"], images=(record["image"],), turns=turns, image_sizes=(size,),
                  objects=((phrase, box),))


def record_box(record: dict, tolerance: float) -> Box:
    values = record["bbox"]
    if not isinstance(values, (list, tuple)) or len(values) != 4 or not all(
            isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise SkipRecord(f"bbox must be 4 numbers, got {values!r}", "bbox")
    box = xywh_to_xyxy(*values) if record["bbox_format"] == "xywh" else Box(*map(float, values))
    width, height = record["size"]
    clipped = clip_box(box, width, height, tolerance)
    if clipped is None:
        raise SkipRecord(f"box {values} ({record['bbox_format']}) outside the {width}x{height} image "
                         f"beyond {tolerance} px, or empty", "bbox")
    return clipped


def _records(base: dict, phrases: Iterable[tuple[object, str]], tasks: tuple[str, ...]) -> Iterator[dict]:
    for sent_id, phrase in phrases:
        for task in tasks:
            suffix = "" if task == "rec" else "_reg"
            yield {**base, "id": f"{base['id']}_{sent_id}{suffix}", "task": task, "phrase": phrase}


# ---- refer layout -----------------------------------------------------------------------------------


def find_refs_file(refer_dir: Path, splitby: str | None) -> Path:
    candidates = sorted(refer_dir.glob("refs(*).p"))
    if splitby:
        path = refer_dir / f"refs({splitby}).p"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found; present: {[c.name for c in candidates]}")
        return path
    if len(candidates) != 1:
        raise ValueError(f"{refer_dir}: found {[c.name for c in candidates]}; choose one with --splitby "
                         f"{'|'.join(SPLITBYS)}")
    return candidates[0]


def read_refer(refer_dir: Path, images_dir: Path | None, *, splitby: str | None, tasks: tuple[str, ...],
               only_split: str | None = None, limit: int | None = None) -> Iterator[tuple[str, object]]:
    refs_path = find_refs_file(refer_dir, splitby)
    instances_path = refer_dir / "instances.json"
    refs = load_plain_pickle(refs_path.read_bytes())
    if not isinstance(refs, list):
        raise ValueError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    with open(instances_path, encoding="utf-8") as f:
        instances = json.load(f)
    images = {image["id"]: image for image in instances.get("images", [])}
    boxes = {ann["id"]: ann.get("bbox") for ann in instances.get("annotations", [])}
    del instances
    sizes: dict[object, tuple[str, tuple[int, int]] | SkipRecord] = {}
    source = refs_path.name
    for split, ref in select_splits(((str(ref.get("split", "train")), ref) for ref in refs), only_split, limit):
        base = {"id": str(ref.get("ref_id")), "source": source, "bbox_format": "xywh"}
        phrases = [(s.get("sent_id", i), s.get("sent") or s.get("raw"))
                   for i, s in enumerate(ref.get("sentences", []))]
        try:
            image = images.get(ref.get("image_id"))
            if image is None:
                raise SkipRecord(f"unknown image_id {ref.get('image_id')} (not in instances.json)", "image_id")
            if ref.get("ann_id") not in boxes:
                raise SkipRecord(f"unknown ann_id {ref.get('ann_id')} (not in instances.json)", "ann_id")
            base["image"], base["size"] = _refer_image(images_dir, image, sizes)
            base["bbox"] = boxes[ref["ann_id"]]
        except SkipRecord as skip:
            for record in _records(base, phrases, tasks):
                yield split, Skip(record["id"], skip.reason, source, skip.field)
            continue
        for record in _records(base, phrases, tasks):
            yield split, record


def _refer_image(images_dir: Path | None, image: dict, cache: dict) -> tuple[str, tuple[int, int]]:
    """Image path and size, looked up once per image (many refs share one)."""
    if image["id"] not in cache:
        try:
            path = find_coco_image(images_dir, image["file_name"], "file_name")
            size = (image["width"], image["height"]) if image.get("width") else image_size(path)
            cache[image["id"]] = (path, size)
        except SkipRecord as skip:
            cache[image["id"]] = skip
    found = cache[image["id"]]
    if isinstance(found, SkipRecord):
        raise found
    return found


# ---- Hugging Face parquet ---------------------------------------------------------------------------

PHRASE_FIELDS = ("sentences", "sentence", "answer", "question")
SPLIT_NAMES = ("train", "validation", "val", "testA", "testB", "test")


def parquet_files(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.rglob("*.parquet"))
    if not files:
        raise FileNotFoundError(f"no .parquet files under {path}")
    return files


def split_of(path: Path) -> str:
    for name in SPLIT_NAMES:
        if re.search(rf"(^|[^a-zA-Z]){name}([^a-zA-Z]|$)", path.stem):
            return "val" if name == "validation" else name
    return "train"


def _parse_bbox(value):
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return list(value) if isinstance(value, (list, tuple)) else None


def _row_size(row: dict) -> tuple[int, int] | None:
    if row.get("width") and row.get("height"):
        return int(row["width"]), int(row["height"])
    size = row.get("image_size")
    if isinstance(size, str):
        size = json.loads(size)
    return (int(size[0]), int(size[1])) if size else None


def _row_phrases(row: dict) -> list[tuple[object, str]]:
    for field in PHRASE_FIELDS:
        value = row.get(field)
        if value is None or value == [] or value == "":
            continue
        if isinstance(value, str):
            value = [value]
        phrases = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                phrases.append((item.get("sent_id", i), item.get("sent") or item.get("raw") or ""))
            else:
                phrases.append((i, str(item)))
        return phrases
    return []


def _iter_rows(files: list[Path], columns: list[str] | None = None) -> Iterator[tuple[Path, int, dict]]:
    import pyarrow.parquet as pq

    for path in files:
        parquet = pq.ParquetFile(path)
        names = parquet.schema_arrow.names
        wanted = None if columns is None else [c for c in columns if c in names]
        index = 0
        for batch in parquet.iter_batches(batch_size=256, columns=wanted):
            for row in batch.to_pylist():
                yield path, index, row
                index += 1


def detect_bbox_format(files: list[Path], tolerance: float = 2.0) -> str:
    """xywh or xyxy when the rows decide it; ValueError when every box fits both readings."""
    xywh_only = xyxy_only = 0
    for path, index, row in _iter_rows(files, ["bbox", "image_size", "width", "height"]):
        bbox = _parse_bbox(row.get("bbox"))
        if not bbox or len(bbox) != 4:
            continue
        x, y, c, d = bbox
        if c <= x or d <= y:
            xywh_only += 1  # as xyxy it would be inverted
            continue
        size = _row_size(row)
        if size and (x + c > size[0] + tolerance or y + d > size[1] + tolerance):
            xyxy_only += 1  # as xywh it would leave the image
    if xywh_only and not xyxy_only:
        return "xywh"
    if xyxy_only and not xywh_only:
        return "xyxy"
    raise ValueError(f"cannot auto-detect the bbox format of {[str(f) for f in files]}: {xywh_only} row(s) only "
                     f"fit xywh, {xyxy_only} only fit xyxy; pass --bbox-format xywh or xyxy")


def read_parquet(path: Path, images_dir: Path | None, out: Path, *, bbox_format: str, tasks: tuple[str, ...],
                 only_split: str | None = None, limit: int | None = None,
                 tolerance: float = 2.0) -> Iterator[tuple[str, object]]:
    files = parquet_files(path)
    if bbox_format == "auto":
        bbox_format = detect_bbox_format(files, tolerance)
    rows = ((str(row.get("split") or split_of(file)), (file, index, row)) for file, index, row in _iter_rows(files))
    for split, (file, index, row) in select_splits(rows, only_split, limit):
        key = row.get("ref_id", row.get("question_id", row.get("id", index)))
        source = f"{file.name}[{index}]"
        base = {"id": str(key), "source": source, "bbox_format": bbox_format}
        phrases = _row_phrases(row)
        try:
            bbox = _parse_bbox(row.get("bbox"))
            if bbox is None:
                raise SkipRecord(f"bbox is neither a list nor a JSON list: {row.get('bbox')!r}", "bbox")
            base["bbox"] = bbox
            base["image"], base["size"] = _parquet_image(row, images_dir, out)
            if not phrases:
                raise SkipRecord(f"no referring expression in any of {PHRASE_FIELDS}", "sentences")
        except SkipRecord as skip:
            for record in _records(base, phrases or [(0, "")], tasks):
                yield split, Skip(record["id"], skip.reason, source, skip.field)
            continue
        for record in _records(base, phrases, tasks):
            yield split, record


def _parquet_image(row: dict, images_dir: Path | None, out: Path) -> tuple[str, tuple[int, int]]:
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes"):
        return store_image_bytes(image["bytes"], out / "images")
    if isinstance(image, bytes):
        return store_image_bytes(image, out / "images")
    name = image.get("path") if isinstance(image, dict) else image
    name = name or row.get("image_path") or row.get("file_name")
    if not name:
        raise SkipRecord("row has no image bytes and no image path", "image")
    try:
        path = existing_image(images_dir, name)
    except SkipRecord:
        # a ref-style file_name carries an _<ann_id> suffix the real image file lacks
        unsuffixed = re.sub(r"_\d+(\.\w+)$", r"\1", name)
        if unsuffixed == name:
            raise
        path = existing_image(images_dir, unsuffixed)
    return path, image_size(path)
