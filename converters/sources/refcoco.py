"""RefCOCO / RefCOCO+ / RefCOCOg: the `refer` layout and Hugging Face parquet rows -> grounding samples.

refer layout: <dir>/refs(<splitby>).p (pickled list of refs) + <dir>/instances.json. A ref's own
`file_name` carries an `_<ann_id>` suffix and names no real file: the image is the one instances.json
lists for the ref's image_id. The box is the ref's annotation bbox, COCO xywh floats.
Every sentence of a ref becomes one record (REC and/or REG).
"""
from __future__ import annotations

import argparse
import json
import math
import pickle
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from converters.boxes import parse_boxes, render_box, render_grounding
from converters.geometry import clip_box, xywh_to_xyxy
from converters.images import (ImageFolderProbe, TrainerImage, claimed_size, find_coco_image, store_image_bytes,
                               trainer_image)
from converters.options import add_box_options, box_pixels, prompt_template
from converters.registry import Conversion, Source, register_source
from converters.safe_pickle import load_plain_pickle
from converters.schema import Box, Sample, Skip, SkipRecord, Turn
from converters.sources.tables import DEFAULT_SPLIT, hashable, select_splits, split_named_by
from qwenvl_recipes.io import InputError, os_error_cause, read_input_bytes, read_json

DATASET = "refcoco"
SPLITBYS = ("umd", "google", "unc")
DIRECTIONS = ("rec", "reg")  # REC: expression -> box; REG: box -> expression


REC_PROMPTS = {"qwen2_vl": "<image>Find the bounding box of <|object_ref_start|>{phrase}<|object_ref_end|>.",
               "json": '<image>Locate "{phrase}" in the image and output its bbox coordinates in JSON format.'}
REG_PROMPT = "<image>Describe the region {box} in a short phrase."


@dataclass(frozen=True)
class RefOptions:
    family: str
    min_pixels: int
    max_pixels: int
    processor_pixels: tuple[int, int] | None = None
    box_tolerance: float = 2.0
    rec_prompt: str | None = None  # --prompt: a template with {phrase} (default: the family's REC_PROMPTS)
    reg_prompt: str = REG_PROMPT   # --reg-prompt: a template with {box}


def rec_prompt(phrase: str, family: str, template: str | None = None) -> str:
    template = template or REC_PROMPTS["qwen2_vl" if family == "qwen2_vl" else "json"]
    return template.replace("{phrase}", phrase)


def reg_prompt(box_text: str, template: str = REG_PROMPT) -> str:
    return template.replace("{box}", box_text)


def to_sample(record: dict, opts: RefOptions, resize_path: str = "hf") -> Sample:
    """record: {"id", "direction" rec|reg, "image", "size" (w, h), "phrase", "bbox" [4 floats], "bbox_format"}."""
    phrase = " ".join(str(record["phrase"] or "").split())
    if not phrase:
        raise SkipRecord("empty referring expression", "sentence")
    box = record_box(record, opts.box_tolerance)
    size = tuple(record["size"])
    pixels = dict(min_pixels=opts.min_pixels, max_pixels=opts.max_pixels, resize_path=resize_path,
                  processor_pixels=opts.processor_pixels)
    if record["direction"] == "rec":
        turns = (Turn("user", rec_prompt(phrase, opts.family, opts.rec_prompt)),
                 Turn("assistant", render_grounding(phrase, box, size, opts.family, **pixels)))
    else:
        turns = (Turn("user", reg_prompt(render_box(box, size, opts.family, **pixels), opts.reg_prompt)),
                 Turn("assistant", phrase))
    return Sample(id=record["id"], images=(record["image"],), turns=turns, image_sizes=(size,),
                  objects=((phrase, box),))


def record_box(record: dict, tolerance: float) -> Box:
    values = record["bbox"]
    if not is_box(values):
        raise SkipRecord(f"bbox must be 4 finite numbers, got {values!r}", "bbox")
    box = xywh_to_xyxy(*values) if record["bbox_format"] == "xywh" else Box(*map(float, values))
    width, height = record["size"]
    clipped = clip_box(box, width, height, tolerance)
    if clipped is None:
        raise SkipRecord(f"box {values} ({record['bbox_format']}) outside the {width}x{height} image "
                         f"beyond {tolerance} px, or empty", "bbox")
    return clipped


def is_box(values: object) -> bool:
    """4 finite numbers (a bool, None or NaN in a bbox is a broken record, not a coordinate)."""
    return isinstance(values, (list, tuple)) and len(values) == 4 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values)


def _skips(split: str, base: dict, phrases: list, directions: tuple[str, ...], skip: SkipRecord):
    """The records a bad ref/row would have made, each skipped (one Skip when it has no phrase at all),
    so that written + skipped counts what the input holds."""
    ids = [record["id"] for record in _records(base, phrases, directions)] or [base["id"]]
    for record_id in ids:
        yield split, Skip(record_id, skip.reason, base["source"], skip.field)


def _records(base: dict, phrases: Iterable[tuple[object, str]], directions: tuple[str, ...]) -> Iterator[dict]:
    for sent_id, phrase in phrases:
        for direction in directions:
            suffix = "" if direction == "rec" else "_reg"
            yield {**base, "id": f"{base['id']}_{sent_id}{suffix}", "direction": direction, "phrase": phrase}


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


def load_refs(refs_path: Path) -> list:
    try:
        refs = load_plain_pickle(read_input_bytes(refs_path))
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError) as error:
        raise InputError(f"{refs_path}: truncated or invalid pickle ({type(error).__name__}: {error})") from error
    if not isinstance(refs, list):
        raise InputError(f"{refs_path}: expected a list of refs, got {type(refs).__name__}")
    return refs


def read_refer(refer_dir: Path, images_dir: Path | None, *, splitby: str | None, directions: tuple[str, ...],
               only_split: str | None = None, limit: int | None = None) -> Iterator[tuple[str, object]]:
    refs_path = find_refs_file(refer_dir, splitby)
    instances_path = refer_dir / "instances.json"
    refs = load_refs(refs_path)
    instances = read_json(instances_path, dict, "a COCO instances json")
    for key in ("images", "annotations"):
        if not isinstance(instances.get(key), list):
            raise InputError(f"{instances_path}: '{key}' must be a list, got {type(instances.get(key)).__name__}")
    # Entries that are not objects (or whose id is a list) index nothing: the refs naming them are skipped.
    images = {image.get("id"): image for image in instances["images"]
              if isinstance(image, dict) and hashable(image.get("id"))}
    boxes = {ann.get("id"): ann.get("bbox") for ann in instances["annotations"]
             if isinstance(ann, dict) and hashable(ann.get("id"))}
    del instances
    sizes: dict[object, TrainerImage | SkipRecord] = {}
    source = refs_path.name
    probe = ImageFolderProbe(instances_path, images_dir)
    for split, (index, ref) in select_splits(_ref_splits(refs, source), only_split, limit):
        if isinstance(ref, Skip):
            yield split, ref
            continue
        base = {"id": str(ref.get("ref_id")), "source": f"{source}[{index}]", "bbox_format": "xywh"}
        try:
            phrases = _ref_phrases(ref)
            image = images.get(ref.get("image_id")) if hashable(ref.get("image_id")) else None
            if image is None:
                raise SkipRecord(f"unknown image_id {ref.get('image_id')!r} (not in instances.json)", "image_id")
            if not hashable(ref.get("ann_id")) or ref.get("ann_id") not in boxes:
                raise SkipRecord(f"unknown ann_id {ref.get('ann_id')!r} (not in instances.json)", "ann_id")
            _with_image(base, _refer_image(images_dir, image, sizes, probe))
            base["bbox"] = boxes[ref["ann_id"]]
        except SkipRecord as skip:
            yield from _skips(split, base, _ref_phrases(ref, strict=False), directions, skip)
            continue
        for record in _records(base, phrases, directions):
            yield split, record
    probe.finish()


def _ref_splits(refs: list, source: str) -> Iterator[tuple[str, tuple[int, object]]]:
    """(split, (index, ref | Skip)); a ref that is not a dict, or whose split is not a name (None), is a
    Skip under the default split (train) rather than a split named "None"."""
    for index, ref in enumerate(refs):
        if not isinstance(ref, dict):
            yield "train", (index, Skip(f"ref{index}", f"ref is a {type(ref).__name__}, expected a dict",
                                        f"{source}[{index}]", "ref"))
            continue
        split = ref.get("split", "train")
        if not isinstance(split, str) or not split:
            yield "train", (index, Skip(str(ref.get("ref_id", f"ref{index}")), f"split must be a name, got {split!r}",
                                        f"{source}[{index}]", "split"))
            continue
        yield split, (index, ref)


def _ref_phrases(ref: dict, strict: bool = True) -> list[tuple[object, str]]:
    """(sent_id, text) of every sentence; a ref without sentences is a skip, not nothing."""
    sentences = ref.get("sentences")
    if not isinstance(sentences, list) or not sentences:
        if strict:
            raise SkipRecord(f"ref has no sentences (got {sentences!r})", "sentences")
        return []
    phrases = []
    for i, sentence in enumerate(sentences):
        if not isinstance(sentence, dict):
            if strict:
                raise SkipRecord(f"sentence {i} is a {type(sentence).__name__}, expected a dict", f"sentences[{i}]")
            continue
        phrases.append((sentence.get("sent_id", i), sentence.get("sent") or sentence.get("raw")))
    return phrases


def _with_image(base: dict, image: TrainerImage) -> None:
    base.update(image=image.path, size=image.size)
    if image.note:
        base["note"] = image.note


def _refer_image(images_dir: Path | None, image: dict, cache: dict, probe: ImageFolderProbe) -> TrainerImage:
    """The image as the trainers will read it, looked up once per image (many refs share one)."""
    if image["id"] not in cache:
        try:
            path = probe.look(find_coco_image, images_dir, image.get("file_name"), "file_name")
            cache[image["id"]] = trainer_image(path, "file_name", claimed_size(image.get("width"), image.get("height")))
        except SkipRecord as skip:
            cache[image["id"]] = skip
    found = cache[image["id"]]
    if isinstance(found, SkipRecord):
        raise found
    return found


# ---- Hugging Face parquet ---------------------------------------------------------------------------

# Columns that hold the referring expressions, in order of preference. Not `question`: in lmms-lab/RefCOCO*
# it is the task prompt ("Please carefully observe the area circled..."), never the expression.
PHRASE_FIELDS = ("sentences", "sentence", "answer")


def parquet_files(path: Path) -> list[Path]:
    if not path.exists():
        raise InputError(f"{path}: no such file or directory")
    files = [path] if not path.is_dir() else sorted(path.rglob("*.parquet"))
    if not files:
        raise InputError(f"{path}: no .parquet files in this directory (nor a refs(*).p of the refer layout)")
    return files


def _parse_bbox(value):
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return list(value) if isinstance(value, (list, tuple)) else None


def _row_size(row: dict) -> tuple[int, int] | None:
    """The (width, height) a row states, or None when it states none or something unusable (the image
    header decides then)."""
    size = claimed_size(row.get("width"), row.get("height"))
    if size:
        return size
    value = row.get("image_size")
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return None
    return claimed_size(*value) if isinstance(value, (list, tuple)) and len(value) == 2 else None


def _row_phrases(row: dict) -> list[tuple[object, str]]:
    """(id, text) of the row's expressions: the first phrase column present decides; present but empty
    (an `answer` of []) is a skip naming that column, never a fall back to another column."""
    for field in PHRASE_FIELDS:
        value = row.get(field)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)) or not value:
            raise SkipRecord(f"{field} holds no referring expression (got {value!r})", field)
        phrases = []
        for i, item in enumerate(value):
            if isinstance(item, dict):
                phrases.append((item.get("sent_id", i), item.get("sent") or item.get("raw") or ""))
            else:
                phrases.append((i, item if isinstance(item, str) else ""))
        return phrases
    raise SkipRecord(f"no referring expression in any of {PHRASE_FIELDS}", "sentences")


def _iter_rows(files: list[Path], columns: list[str] | None = None) -> Iterator[tuple[Path, int, dict]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in files:
        try:
            parquet = pq.ParquetFile(path)
            names = parquet.schema_arrow.names
            wanted = None if columns is None else [c for c in columns if c in names]
            batches = parquet.iter_batches(batch_size=256, columns=wanted)
            index = 0
            for batch in batches:
                for row in batch.to_pylist():
                    yield path, index, row
                    index += 1
        except (OSError, pa.ArrowException) as error:  # ArrowInvalid: not parquet, truncated
            cause = os_error_cause(error) if getattr(error, "errno", None) else str(error).splitlines()[0]
            raise InputError(f"{path}: not a readable parquet file ({cause})") from error


def detect_bbox_format(files: list[Path], tolerance: float = 2.0) -> str:
    """xywh or xyxy when the rows decide it; ValueError when every box fits both readings."""
    xywh_only = xyxy_only = 0
    for path, index, row in _iter_rows(files, ["bbox", "image_size", "width", "height"]):
        bbox = _parse_bbox(row.get("bbox"))
        if not is_box(bbox):
            continue  # such rows are skipped when read, naming their bbox
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


def read_parquet(path: Path, images_dir: Path | None, out: Path, *, bbox_format: str, directions: tuple[str, ...],
                 only_split: str | None = None, limit: int | None = None,
                 tolerance: float = 2.0) -> Iterator[tuple[str, object]]:
    files = parquet_files(path)
    if bbox_format == "auto":
        bbox_format = detect_bbox_format(files, tolerance)
    rows = ((_parquet_split(row, file), (file, index, row)) for file, index, row in _iter_rows(files))
    probe = ImageFolderProbe(path, images_dir)
    for split, (file, index, row) in select_splits(rows, only_split, limit):
        key = row.get("ref_id", row.get("question_id", row.get("id", index)))
        source = f"{file.name}[{index}]"
        base = {"id": str(key), "source": source, "bbox_format": bbox_format}
        phrases = []
        try:
            if not isinstance(row.get("split", ""), (str, type(None))):
                raise SkipRecord(f"split must be a name, got {row['split']!r}", "split")
            phrases = _row_phrases(row)
            bbox = _parse_bbox(row.get("bbox"))
            if bbox is None:
                raise SkipRecord(f"bbox is neither a list nor a JSON list: {row.get('bbox')!r}", "bbox")
            base["bbox"] = bbox
            _with_image(base, _parquet_image(row, images_dir, out, probe))
        except SkipRecord as skip:
            yield from _skips(split, base, phrases, directions, skip)
            continue
        for record in _records(base, phrases, directions):
            yield split, record
    probe.finish()


def _parquet_split(row: dict, file: Path) -> str:
    split = row.get("split")
    return split if isinstance(split, str) and split else split_named_by(file) or DEFAULT_SPLIT


def _parquet_image(row: dict, images_dir: Path | None, out: Path, probe: ImageFolderProbe) -> TrainerImage:
    image = row.get("image")
    if isinstance(image, dict) and image.get("bytes"):
        return store_image_bytes(image["bytes"], out / "images")
    if isinstance(image, bytes):
        return store_image_bytes(image, out / "images")
    name = image.get("path") if isinstance(image, dict) else image
    name = name or row.get("image_path") or row.get("file_name")
    if not name:
        raise SkipRecord("row has no image bytes and no image path", "image")
    if not isinstance(name, str):
        raise SkipRecord(f"image path must be a string, got {name!r}", "image")
    return trainer_image(probe.look(_find_parquet_image, images_dir, name), "image", _row_size(row))


def _find_parquet_image(images_dir: Path | None, name: str) -> str:
    try:
        return find_coco_image(images_dir, name)
    except SkipRecord:
        # a ref-style file_name carries an _<ann_id> suffix the real image file lacks
        unsuffixed = re.sub(r"_\d+(\.\w+)$", r"\1", name)
        if unsuffixed == name:
            raise
        return find_coco_image(images_dir, unsuffixed)


# ---- registration -------------------------------------------------------------------------------------

CHECK_BOX_TOLERANCE = 1.5  # px: integer model coordinates round to at most half a model unit


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--splitby", choices=SPLITBYS, default=None,
                        help="which refs(<splitby>).p to read (default: the only one present)")
    parser.add_argument("--bbox-format", choices=("xywh", "xyxy", "auto"), default="auto",
                        help="parquet bbox format; auto only when the rows decide it (refer layout is always xywh)")
    parser.add_argument("--direction", choices=(*DIRECTIONS, "both"), default="rec",
                        help="rec: expression -> box; reg: box -> expression")
    add_box_options(parser)
    parser.add_argument("--prompt", type=prompt_template("phrase"), default=None,
                        help="the REC user prompt, {phrase} standing for the expression, <image> first unless "
                             "placed (default: the family's, e.g. " + REC_PROMPTS["json"].replace("%", "%%") + ")")
    parser.add_argument("--reg-prompt", type=prompt_template("box"), default=REG_PROMPT,
                        help="the REG user prompt, {box} standing for the box in the family's convention")


def read(args: argparse.Namespace, images: Path | None) -> Conversion:
    min_pixels, max_pixels = box_pixels(args)
    options = RefOptions(args.model, min_pixels, max_pixels, args.processor_pixels, args.box_tolerance,
                         args.prompt, args.reg_prompt)
    directions = DIRECTIONS if args.direction == "both" else (args.direction,)
    source = Path(args.input)
    if source.is_dir() and any(source.glob("refs(*).p")):
        items = read_refer(source, images, splitby=args.splitby, directions=directions, only_split=args.split,
                           limit=args.limit)
        inputs = [find_refs_file(source, args.splitby), source / "instances.json"]
    else:
        items = read_parquet(source, images, args.out, bbox_format=args.bbox_format, directions=directions,
                             only_split=args.split, limit=args.limit, tolerance=args.box_tolerance)
        inputs = parquet_files(source)
    if args.split is None:
        items = noting_missing_train(items, args)
    # Qwen2.5-VL boxes live in resized-image pixels, and the trainers resize differently.
    return Conversion(items, to_sample, options, inputs, options={"min_pixels": min_pixels, "max_pixels": max_pixels},
                      trainer_dependent=args.model == "qwen2_5_vl")


def noting_missing_train(items: Iterable[tuple[str, object]], args: argparse.Namespace):
    """The items, then a note when they held no train split: a Hugging Face copy of RefCOCO* holds only
    val/test (the refer layout train/val/test), and the grounding recipes train on <name>_train."""
    splits = set()
    for split, item in items:
        splits.add(split)
        yield split, item
    if splits and DEFAULT_SPLIT not in splits:
        name = args.name or DATASET
        instead = (f"to train on {name}_val instead, override the recipe's dataset: dataset={name}_val "
                   f"(LLaMA-Factory) or --dataset {args.out / f'{name}_val.jsonl'} (ms-swift), and evaluate on "
                   f"{name}_test" if "val" in splits else "convert the refer layout (refs(<splitby>).p) for training")
        print(f"note: {args.input} holds no train split, only {sorted(splits)} (Hugging Face copies of RefCOCO* hold "
              f"val/test); the grounding recipes train on {name}_train: {instead}", file=sys.stderr)


def check_row(row: dict, options: dict, resize_path: str, image_sizes: list) -> list[str]:
    """Every box of a grounding row parses under the file's convention and lies inside its image."""
    if not image_sizes or image_sizes[0] is None:
        return []
    width, height = image_sizes[0]
    pixels = tuple(options["processor_pixels"]) if options.get("processor_pixels") else None
    boxes = [box for message in row["messages"] if isinstance(message, dict)
             for box in parse_boxes(message.get("content", ""), options["model"], (width, height),
                                    min_pixels=options["min_pixels"], max_pixels=options["max_pixels"],
                                    resize_path=resize_path, processor_pixels=pixels)]
    problems = [] if boxes else ["no box parses in a grounding row"]
    tolerance = CHECK_BOX_TOLERANCE
    for box in boxes:
        if (box.x1 < -tolerance or box.y1 < -tolerance or box.x2 > width + tolerance
                or box.y2 > height + tolerance or box.x2 <= box.x1 or box.y2 <= box.y1):
            problems.append(f"box {box} not inside the {width}x{height} image")
    return problems


register_source(Source(
    command="refcoco", tasks=("grounding",), dataset=DATASET, help="RefCOCO/RefCOCO+/RefCOCOg grounding",
    description=__doc__, input_help="refer directory (refs(<splitby>).p + instances.json) | parquet file or directory",
    images_help="default: the input's folder (refer layout: pass the folder holding the COCO train2014/ images)",
    add_arguments=add_arguments, read=read, check_row=check_row))
