"""COCO-2014 captions: official captions_*.json, Karpathy dataset_coco.json, image_path,caption CSV,
and modelscope MsDataset rows.

Every reader yields image groups (one image with its captions); `expand_groups` applies the shared
policy (limit, one seeded caption or all, resize, missing images) and yields records for `to_sample`.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from converters.images import (ImageFolderProbe, TrainerImage, claimed_size, find_coco_image, resized_copy,
                               store_image_bytes, trainer_image)
from converters.options import add_split_options, size_wxh
from converters.registry import Conversion, Source, register_source
from converters.schema import Sample, Skip, SkipRecord, Turn
from converters.sources.tables import DEFAULT_SPLIT, SplitRule, hashable
from qwenvl_recipes.io import InputError, read_input_text, read_json

DEFAULT_PROMPT = "Describe the image in one sentence."
MODELSCOPE_PREFIX = "modelscope:"
MODELSCOPE_SPLITS = {"train": "train", "validation": "val"}


@dataclass(frozen=True)
class CaptionOptions:
    prompt: str = DEFAULT_PROMPT


@dataclass(frozen=True)
class ImageGroup:
    """One image and its captions as read from a source, before policy is applied."""

    split: str
    key: str                        # image id used in sample ids
    image: str                      # path relative to --images, absolute path, or "" with `data`
    captions: tuple[tuple[str, object], ...]   # (caption id, raw caption)
    size: tuple[int, int] | None = None
    data: bytes | None = None       # embedded image bytes (modelscope rows)
    source: str = ""


def clean_caption(caption: object) -> str:
    """Caption text with stray whitespace (leading/trailing, runs, newlines) collapsed."""
    if not isinstance(caption, str):
        return ""
    return " ".join(caption.split())


def to_sample(record: dict, opts: CaptionOptions, resize_path: str = "hf") -> Sample:
    """record: {"id", "image" (abs path), "size" (w, h), "caption"} -> one caption conversation."""
    caption = clean_caption(record["caption"])
    if not caption:
        raise SkipRecord("empty caption", "caption")
    return Sample(id=record["id"], images=(record["image"],),
                  turns=(Turn("user", "<image>" + opts.prompt), Turn("assistant", caption)),
                  image_sizes=(tuple(record["size"]),))


# ---- policy shared by all readers -------------------------------------------------------------------


def expand_groups(groups: Iterable[ImageGroup | tuple[str, Skip]], *, images_dir: Path | None, out: Path,
                  captions_per_image: str, seed: int, limit: int | None, resize: tuple[int, int] | None,
                  only_split: str | None = None, source: str = "") -> Iterator[tuple[str, object]]:
    """Image groups -> (split, record | Skip). `limit` counts images per split."""
    images_per_split: dict[str, int] = {}
    probe = ImageFolderProbe(source, images_dir)
    for group in groups:
        split = group[0] if isinstance(group, tuple) else group.split
        if only_split is not None and split != only_split:
            continue
        if isinstance(group, tuple):
            yield group
            continue
        if limit is not None and images_per_split.get(group.split, 0) >= limit:
            continue
        images_per_split[group.split] = images_per_split.get(group.split, 0) + 1
        if not group.captions:
            yield group.split, Skip(group.key, "image has no captions", group.source, "sentences")
            continue
        if captions_per_image == "one":
            chosen = [random.Random(f"{seed}:{group.key}").choice(group.captions)] if group.captions else []
            ids = [group.key]
        else:
            chosen = list(group.captions)
            ids = [f"{group.key}_{cid}" for cid, _ in chosen]
        try:
            image = _locate_image(group, images_dir, out, resize, probe)
        except SkipRecord as skip:
            for record_id in ids:
                yield group.split, Skip(record_id, skip.reason, group.source, skip.field)
            continue
        for record_id, (_, caption) in zip(ids, chosen):
            record = {"id": record_id, "image": image.path, "size": image.size, "caption": caption,
                      "source": group.source}
            yield group.split, {**record, "note": image.note} if image.note else record
    probe.finish()


def _locate_image(group: ImageGroup, images_dir: Path | None, out: Path, resize: tuple[int, int] | None,
                  probe: ImageFolderProbe) -> TrainerImage:
    if group.data is not None:
        image = store_image_bytes(group.data, out / "images")
    else:
        image = trainer_image(probe.look(find_coco_image, images_dir, group.image), expected=group.size)
    if resize is not None:
        return image._replace(path=resized_copy(image.path, resize, out / "images", images_dir), size=resize)
    return image


# ---- readers ----------------------------------------------------------------------------------------


def split_from_filename(path: Path) -> str | None:
    match = re.search(r"(train|val|test|restval)", path.stem)
    return match.group(1) if match else None


def read_official(path: Path, data: dict, rule: SplitRule = SplitRule()) -> Iterator[ImageGroup | tuple[str, Skip]]:
    """captions_<split>2014.json: images joined to annotations by image_id, file order kept. A file whose name
    names no split puts its images where `rule` says (train by default)."""
    named = split_from_filename(path)
    split = named or rule.file_split or DEFAULT_SPLIT  # where the skips of records without an image go
    source = path.name
    if not isinstance(data["annotations"], list):
        raise InputError(f"{path}: 'annotations' must be a list, got {type(data['annotations']).__name__}")
    images: dict[object, dict] = {}
    for index, image in enumerate(data["images"]):
        if not isinstance(image, dict):
            yield split, Skip(f"images[{index}]", f"image entry is a {type(image).__name__}, expected an object",
                              f"{source} images[{index}]", "images[]")
            continue
        if not hashable(image.get("id")):
            yield split, Skip(f"images[{index}]", f"image id must be a number or string, got {image.get('id')!r}",
                              f"{source} images[{index}]", "images[].id")
            continue
        if image.get("id") in images:
            yield split, Skip(str(image.get("id")), "duplicate image id", source, "images[].id")
            continue
        images[image.get("id")] = image
    captions: dict[object, list] = {}
    for index, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict):
            yield split, Skip(f"annotations[{index}]", f"annotation is a {type(ann).__name__}, expected an object",
                              f"{source} annotations[{index}]", "annotations[]")
            continue
        image_id = ann.get("image_id")
        if not hashable(image_id) or image_id not in images:
            yield split, Skip(f"{image_id}_{ann.get('id')}", f"unknown image_id {image_id}", source,
                              "annotations[].image_id")
            continue
        captions.setdefault(image_id, []).append((ann.get("id"), ann.get("caption")))
    del data  # only the indexes above stay alive while groups stream out
    for image_id, image in images.items():
        if image_id not in captions:
            continue
        size = claimed_size(image.get("width"), image.get("height"))
        name = image.get("file_name", "")
        yield ImageGroup(named or rule.split_for(str(name)), str(image_id), name, tuple(captions.pop(image_id)), size,
                         source=source)


def read_karpathy(path: Path, data: dict) -> Iterator[ImageGroup]:
    """dataset_coco.json: each image carries its split (train/val/test/restval) and sentences."""
    source = path.name
    for index, image in enumerate(data["images"]):
        where = f"{source} images[{index}]"
        if not isinstance(image, dict):
            yield "train", Skip(f"images[{index}]", f"image entry is a {type(image).__name__}, expected an object",
                                where, "images[]")
            continue
        key = str(image.get("cocoid", image.get("imgid", f"images[{index}]")))
        split = image.get("split", "train")
        problem = None
        if not isinstance(split, str) or not split:
            split, problem = "train", (f"split must be a name, got {split!r}", "split")
        elif not isinstance(image.get("filename"), str) or not isinstance(image.get("filepath", ""), str):
            problem = (f"filename must be a string, got {image.get('filename')!r}", "filename")
        elif not isinstance(image.get("sentences", []), list):
            problem = (f"sentences must be a list, got {image.get('sentences')!r}", "sentences")
        if problem:
            yield split, Skip(key, problem[0], where, problem[1])
            continue
        sentences = tuple((s.get("sentid", i), s.get("raw")) if isinstance(s, dict) else (i, None)
                          for i, s in enumerate(image.get("sentences", [])))
        name = os.path.join(image.get("filepath", ""), image["filename"])
        yield ImageGroup(split, key, name, sentences, source=where)


def read_csv(path: Path, rule: SplitRule = SplitRule()) -> Iterator[ImageGroup]:
    """image_path,caption[,split] rows; rows of one image are grouped, first-appearance order kept. A row with
    no split goes where `rule` says (train by default)."""
    source = path.name
    groups: dict[tuple[str, str], list] = {}
    reader = csv.DictReader(io.StringIO(read_input_text(path), newline=""))
    missing = {"image_path", "caption"} - set(reader.fieldnames or ())
    if missing:
        raise InputError(f"{path}: CSV header lacks column(s) {sorted(missing)}; expected image_path,caption")
    for row_number, row in enumerate(reader, start=2):
        if not row["image_path"]:
            yield row.get("split") or rule.file_split or DEFAULT_SPLIT, Skip(f"row{row_number}", "empty image_path",
                                                    f"{source}:{row_number}", "image_path")
            continue
        key = (row.get("split") or rule.split_for(row["image_path"]), row["image_path"])
        groups.setdefault(key, []).append((f"row{row_number}", row["caption"]))
    for (split, image), captions in groups.items():
        yield ImageGroup(split, image, image, tuple(captions), source=source)


def read_modelscope(dataset_id: str, subset: str, splits: Iterable[str],
                    load_rows: Callable[[str, str, str], Iterable[dict]] | None = None) -> Iterator[ImageGroup]:
    """modelscope MsDataset rows {"image": PIL | {"bytes","path"} | path, "caption" ('&&'-joined), "image_id"}.

    `load_rows(dataset_id, subset, split)` defaults to MsDataset.load; tests pass a fake row iterator.
    """
    load_rows = load_rows or _ms_rows
    for ms_split in splits:
        split = MODELSCOPE_SPLITS.get(ms_split, ms_split)
        source = f"{MODELSCOPE_PREFIX}{dataset_id}/{subset}/{ms_split}"
        for index, row in enumerate(load_rows(dataset_id, subset, ms_split)):
            key = str(row.get("image_id", index))
            captions = tuple((i, c) for i, c in enumerate(str(row.get("caption") or "").split("&&")))
            path, data = _ms_image(row.get("image"))
            yield ImageGroup(split, key, path, captions, data=data, source=f"{source}[{index}]")


def _ms_rows(dataset_id: str, subset: str, split: str) -> Iterable[dict]:
    from modelscope.msdatasets import MsDataset  # heavy, optional: only for modelscope inputs

    return MsDataset.load(dataset_id, subset_name=subset, split=split)


def _ms_image(image) -> tuple[str, bytes | None]:
    if isinstance(image, str):
        return image, None
    if isinstance(image, dict):
        if image.get("bytes"):
            return "", image["bytes"]
        return image.get("path") or "", None
    filename = getattr(image, "filename", "")
    if filename and os.path.isfile(filename):
        return filename, None
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "", buffer.getvalue()


def input_files(spec: str) -> list[Path]:
    """The files an input names: itself, or a directory's captions_*.json (else dataset_*.json)."""
    if spec.startswith(MODELSCOPE_PREFIX):
        return []
    path = Path(spec)
    if not path.is_dir():
        return [path]
    files = sorted(path.glob("captions_*.json")) or sorted(path.glob("dataset_*.json"))
    if not files:
        raise InputError(f"{path}: no captions_*.json or dataset_*.json in this directory")
    return files


def read_input(spec: str, ms_splits: Iterable[str], rule: SplitRule = SplitRule()
               ) -> Iterator[ImageGroup | tuple[str, Skip]]:
    """Pick the reader by input kind: modelscope:<id>[:<subset>], a directory of jsons, .csv, Karpathy
    or official json; `rule` places the images of a CSV or official json that names no split."""
    if spec.startswith(MODELSCOPE_PREFIX):
        dataset_id, _, subset = spec[len(MODELSCOPE_PREFIX):].partition(":")
        return read_modelscope(dataset_id, subset or "coco_2014_caption", ms_splits)
    files = input_files(spec)
    if len(files) > 1:
        return (group for file in files for group in read_input(str(file), ms_splits, rule))
    path = files[0]
    if path.suffix.lower() == ".csv":
        return read_csv(path, rule)
    data = read_json(path, dict, "a COCO captions json")
    if not isinstance(data.get("images"), list):
        raise InputError(f"{path}: not a COCO captions json (no 'images' list)")
    if "annotations" in data:
        return read_official(path, data, rule)
    return read_karpathy(path, data)


# ---- registration -------------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--resize", type=size_wxh, default=None,
                        help="write WxH copies under <out>/images and train on those (default: the originals)")
    parser.add_argument("--captions-per-image", choices=("one", "all"), default="all",
                        help="all captions, or one chosen per image with --seed")
    add_split_options(parser, seed_help="which caption --captions-per-image one keeps, and which images "
                                        "--val-fraction holds out")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT,
                        help='user text after <image> (the seed recipe used "COCO Yes:")')


def read(args: argparse.Namespace, images: Path | None) -> Conversion:
    inputs = input_files(args.input)
    if not inputs:  # ModelScope rows: images come embedded or by absolute path, not from a data root
        images = args.images
    ms_splits = [{"val": "validation"}.get(args.split, args.split)] if args.split else list(MODELSCOPE_SPLITS)
    items = expand_groups(read_input(args.input, ms_splits, SplitRule.of(args)), images_dir=images, out=args.out,
                          captions_per_image=args.captions_per_image, seed=args.seed, limit=args.limit,
                          resize=args.resize, only_split=args.split, source=args.input)
    return Conversion(items, to_sample, CaptionOptions(args.prompt), inputs)


register_source(Source(
    command="coco-caption", tasks=("caption",), dataset="coco_caption", help="COCO-2014 captions", description=__doc__,
    input_help="captions_<split>2014.json | a folder of them | Karpathy dataset_coco.json | "
               "CSV image_path,caption[,split] | modelscope:<dataset id>[:<subset>] "
               "(e.g. modelscope:modelscope/coco_2014_caption)",
    images_help="default: the input's folder (official COCO json: pass the folder holding train2014/, val2014/)",
    add_arguments=add_arguments, read=read))
