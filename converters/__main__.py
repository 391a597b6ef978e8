"""python -m converters <task> ...: convert a source dataset into LLaMA-Factory and ms-swift files.

Outputs per split in --out: <name>_<split>.json (sharegpt, LLaMA-Factory), <name>_<split>.jsonl (ms-swift),
dataset_info.json (LLaMA-Factory entries named <name>_<split>) and manifest.json (inputs with sha256,
options, counts, every skipped record with its reason). Image paths are absolute, which both trainers
resolve. Recipes reference the result with `dataset_dir: <out>` and `dataset: <name>_<split>`.
"""
from __future__ import annotations

import argparse
import json
import sys
from functools import partial
from pathlib import Path

from converters import pipeline
from converters.boxes import MODEL_FAMILIES, default_pixels
from converters.check import check_dir
from converters.sources import coco_caption, forgery, microscopy, refcoco

TARGET_CHOICES = {"llamafactory": ("llamafactory",), "swift": ("swift",), "both": ("llamafactory", "swift")}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH like 280x280, got {text!r}") from None
    return width, height


def _processor_pixels(path: str) -> tuple[int, int]:
    """(min, max) pixels from a checkpoint's preprocessor_config.json (or the directory holding it)."""
    config_path = Path(path)
    if config_path.is_dir():
        config_path = config_path / "preprocessor_config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    size = config.get("size") or {}
    low, high = config.get("min_pixels", size.get("shortest_edge")), config.get("max_pixels", size.get("longest_edge"))
    if low is None or high is None:
        raise argparse.ArgumentTypeError(f"{config_path}: no min/max pixels (min_pixels/max_pixels or size)")
    return int(low), int(high)


def _common(parser: argparse.ArgumentParser, input_help: str) -> None:
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--images", type=Path,
                        help="directory relative image paths are relative to (default: the input's directory)")
    parser.add_argument("--out", required=True, type=Path, help="output directory (dataset_dir for recipes)")
    parser.add_argument("--model", choices=MODEL_FAMILIES, default="qwen2_5_vl", help="model family (default %(default)s)")
    parser.add_argument("--target", choices=TARGET_CHOICES, default="both", help="trainer file(s) to write (default %(default)s)")
    parser.add_argument("--split", help="convert only this split (default: every split in the input, each to its own files)")
    parser.add_argument("--limit", type=int, help="at most N source records per split (COCO: images)")
    parser.add_argument("--name", help="dataset name used in file names and dataset_info keys")
    parser.add_argument("--strict", action="store_true", help="exit non-zero and write nothing if any record is skipped")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes rendering records (output identical for any number; default %(default)s)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m converters", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)

    coco = commands.add_parser("coco-caption", help="COCO-2014 captions")
    _common(coco, "captions_<split>2014.json | Karpathy dataset_coco.json | CSV image_path,caption[,split] | "
                  "modelscope:<dataset id>[:<subset>] (e.g. modelscope:modelscope/coco_2014_caption)")
    coco.add_argument("--resize", type=_size, help="write WxH copies under <out>/images and train on those")
    coco.add_argument("--captions-per-image", choices=("one", "all"), default="all",
                      help="all captions, or one chosen per image with --seed (default %(default)s)")
    coco.add_argument("--seed", type=int, default=0)
    coco.add_argument("--prompt", default=coco_caption.DEFAULT_PROMPT,
                      help='user text after <image> (the seed recipe used "COCO Yes:")')

    ref = commands.add_parser("refcoco", help="RefCOCO/RefCOCO+/RefCOCOg grounding")
    _common(ref, "refer directory (refs(<splitby>).p + instances.json) | parquet file or directory")
    ref.add_argument("--splitby", choices=refcoco.SPLITBYS, help="which refs(<splitby>).p to read")
    ref.add_argument("--bbox-format", choices=("xywh", "xyxy", "auto"), default="auto",
                     help="parquet bbox format; auto only when the rows decide it (refer layout is always xywh)")
    ref.add_argument("--task", choices=("rec", "reg", "both"), default="rec",
                     help="rec: expression -> box; reg: box -> expression (default %(default)s)")
    ref.add_argument("--min-pixels", type=int, help="default: the family's recipe value (converters.boxes)")
    ref.add_argument("--max-pixels", type=int, help="default: the family's recipe value; must equal the recipe's")
    ref.add_argument("--processor-config", type=_processor_pixels,
                     help="checkpoint dir or preprocessor_config.json whose own pixel limits LLaMA-Factory's "
                          "processor applies (default: the official Qwen checkpoints')")
    ref.add_argument("--box-tolerance", type=float, default=2.0,
                     help="px a box may overshoot the image and still be clipped instead of skipped")

    micro = commands.add_parser("microscopy", help="microscope focusing image pairs")
    _common(micro, "pairs JSON/JSONL/CSV (image1,image2,direction,distance[,analysis]) | "
                   "z-stack CSV/JSON (stack_id,image,z,focus_z)")
    micro.add_argument("--prompt", default=microscopy.DEFAULT_PROMPT)
    micro.add_argument("--steps-per-z", type=float, default=1.0, help="motor steps per z unit (z-stack input)")

    forge = commands.add_parser("forgery", help="real/fake image classification with masks")
    _common(forge, 'list JSON of {"image_path", "label" 0|1, "mask_path" png | "HxW"}')
    forge.add_argument("--real-word", default="real")
    forge.add_argument("--fake-word", default="fake")

    check = commands.add_parser("check", help="validate an output directory")
    check.add_argument("out", type=Path)
    return parser


def _bind_options(source_fn, opts, record: dict, resize_path: str):
    """A source's to_sample(record, opts, resize_path) as the pipeline's convert(record, resize_path);
    module-level so worker processes can receive it."""
    return source_fn(record, opts, resize_path)


def _options(args: argparse.Namespace, **extra) -> dict:
    # workers changes nothing in the output, so it stays out of the manifest (reruns stay byte-identical)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
               if k not in ("command", "workers")}
    options.update(extra)
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "check":
        problems = check_dir(args.out)
        for problem in problems:
            print(problem)
        print(f"{args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
        return 1 if problems else 0

    try:
        return _convert(args)
    except pipeline.StrictModeError as error:
        print(error, file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def _convert(args: argparse.Namespace) -> int:
    targets = TARGET_CHOICES[args.target]
    source = Path(args.input)
    # Relative image paths resolve against --images, else against the input's own directory.
    images = args.images or (source if source.is_dir() else source.parent)
    inputs = [source]
    trainer_dependent = False
    if args.command == "coco-caption":
        name, task = args.name or "coco_caption", "coco_caption"
        inputs = coco_caption.input_files(args.input)
        if not inputs:
            images = args.images
        ms_splits = [{"val": "validation"}.get(args.split, args.split)] if args.split else list(
            coco_caption.MODELSCOPE_SPLITS)
        items = coco_caption.expand_groups(
            coco_caption.read_input(args.input, ms_splits), images_dir=images, out=args.out,
            captions_per_image=args.captions_per_image, seed=args.seed, limit=args.limit, resize=args.resize,
            only_split=args.split)
        source_fn, opts = coco_caption.to_sample, coco_caption.CaptionOptions(args.prompt)
        options = _options(args, resize=list(args.resize) if args.resize else None)
    elif args.command == "refcoco":
        name, task = args.name or "refcoco", "refcoco"
        low, high = default_pixels(args.model)
        args.min_pixels, args.max_pixels = args.min_pixels or low, args.max_pixels or high
        opts = refcoco.RefOptions(args.model, args.min_pixels, args.max_pixels, args.processor_config,
                                  args.box_tolerance)
        tasks = refcoco.TASKS if args.task == "both" else (args.task,)
        if source.is_dir() and any(source.glob("refs(*).p")):
            items = refcoco.read_refer(source, images, splitby=args.splitby, tasks=tasks, only_split=args.split,
                                       limit=args.limit)
            inputs = [refcoco.find_refs_file(source, args.splitby), source / "instances.json"]
        else:
            items = refcoco.read_parquet(source, images, args.out, bbox_format=args.bbox_format, tasks=tasks,
                                         only_split=args.split, limit=args.limit, tolerance=args.box_tolerance)
            inputs = refcoco.parquet_files(source)
        source_fn = refcoco.to_sample
        # Qwen2.5-VL boxes live in resized-image pixels, and the trainers resize differently.
        trainer_dependent = args.model == "qwen2_5_vl"
        options = _options(args, processor_pixels=list(args.processor_config) if args.processor_config else None)
        options.pop("processor_config")
    elif args.command == "microscopy":
        name, task = args.name or "microscopy", "microscopy"
        if microscopy.is_stack_table(source):
            items = microscopy.read_stacks(source, images, steps_per_z=args.steps_per_z, only_split=args.split,
                                           limit=args.limit)
        else:
            items = microscopy.read_pairs(source, images, only_split=args.split, limit=args.limit)
        source_fn, opts = microscopy.to_sample, microscopy.MicroscopyOptions(args.prompt)
        options = _options(args)
    else:
        name, task = args.name or "forgery", "forgery"
        items = forgery.read_list(source, images, only_split=args.split, limit=args.limit)
        source_fn, opts = forgery.to_sample, forgery.ForgeryOptions(args.real_word, args.fake_word)
        options = _options(args)

    entries = pipeline.run(name=name, task=task, items=items, convert=partial(_bind_options, source_fn, opts),
                           out=args.out, targets=targets, inputs=inputs, options=options,
                           trainer_dependent=trainer_dependent, strict=args.strict, workers=args.workers)
    for key, entry in entries.items():
        print(f"{key}: {entry['count']} samples, {entry['skipped_count']} skipped"
              + (f", {len(entry['notes'])} noted" if entry["notes"] else ""), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
