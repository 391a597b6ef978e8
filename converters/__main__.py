"""python -m converters <task> ...: convert a source dataset into LLaMA-Factory and ms-swift files.

Outputs per split in --out: <name>_<split>.json (sharegpt, LLaMA-Factory), <name>_<split>.jsonl (ms-swift),
dataset_info.json (LLaMA-Factory entries named <name>_<split>) and manifest.json (inputs with sha256,
options, counts, every skipped record with its reason). Image paths are absolute, which both trainers
resolve. Recipes reference the result with `dataset_dir: <out>` and `dataset: <name>_<split>`.

Exit status: 0 converted (skipped records are counted per reason on stderr and listed in manifest.json);
1 a split ended with no usable sample, or --strict and a record was skipped; 2 an input file or folder
is unusable (the message names it), or the options are wrong.
"""
from __future__ import annotations

import argparse
import json
import sys
import traceback
from functools import partial
from pathlib import Path

from converters import files, pipeline
from converters.boxes import MODEL_FAMILIES, default_pixels
from converters.check import check_dir
from converters.schema import InputError
from converters.sources import coco_caption, forgery, microscopy, refcoco

TARGET_CHOICES = {"llamafactory": ("llamafactory",), "swift": ("swift",), "both": ("llamafactory", "swift")}


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH like 280x280, got {text!r}") from None
    return width, height


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value} (it would convert nothing)")
    return value


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions as written, and every option's default after its help (in words where the help gives
    it, e.g. "default: the input's folder"; "off" for flags)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.required or not action.option_strings or action.default is argparse.SUPPRESS \
                or "default" in text:
            return text
        if isinstance(action, argparse._StoreTrueAction):
            return text + " (default: off)"
        return text + " (default: %(default)s)"


def _processor_pixels(path: str) -> tuple[int, int]:
    """(min, max) pixels from a checkpoint's preprocessor_config.json (or the directory holding it)."""
    config_path = Path(path)
    if config_path.is_dir():
        config_path = config_path / "preprocessor_config.json"
    try:
        config = files.load_json_file(config_path, dict, "a preprocessor config")
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    size = config.get("size") or {}
    low, high = config.get("min_pixels", size.get("shortest_edge")), config.get("max_pixels", size.get("longest_edge"))
    if low is None or high is None:
        raise argparse.ArgumentTypeError(f"{config_path}: no min/max pixels (min_pixels/max_pixels or size)")
    return int(low), int(high)


def _debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an input error (otherwise one line naming the file)")


def _common(parser: argparse.ArgumentParser, input_help: str, images_default: str) -> None:
    parser.add_argument("--input", required=True, help=input_help)
    parser.add_argument("--images", type=Path, default=None,
                        help="the data root: the folder relative image paths are relative to, and that record "
                             f"paths may not leave; {images_default}")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept record paths that resolve outside the data root: relative paths with "
                             "../.. and, when --images is given, absolute paths elsewhere (without --images "
                             "an absolute path is taken as written); without it such records are skipped")
    parser.add_argument("--out", required=True, type=Path, help="output directory (dataset_dir for recipes)")
    parser.add_argument("--model", choices=MODEL_FAMILIES, default="qwen2_5_vl", help="model family")
    parser.add_argument("--target", choices=TARGET_CHOICES, default="both", help="trainer file(s) to write")
    parser.add_argument("--split", default=None,
                        help="convert only this split (default: every split in the input, each to its own files)")
    parser.add_argument("--limit", type=_positive_int, default=None,
                        help="at most N source records per split (COCO: images; default: all)")
    parser.add_argument("--name", default=None,
                        help="dataset name used in file names and dataset_info keys (default: the task's name)")
    parser.add_argument("--strict", action="store_true", help="exit non-zero and write nothing if any record is skipped")
    parser.add_argument("--workers", type=_positive_int, default=1,
                        help="processes rendering records (output identical for any number)")
    _debug_option(parser)


def _file_split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split-of-file", metavar="SPLIT", default=None,
                        help="put every row of the input in this split (e.g. val for a file that holds only "
                             "validation rows); a row whose own split field names another split is skipped "
                             "(default: each row's split field, train when it has none)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m converters", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = partial(commands.add_parser, formatter_class=HelpFormatter)

    coco = sub("coco-caption", help="COCO-2014 captions", description=coco_caption.__doc__)
    _common(coco, "captions_<split>2014.json | a folder of them | Karpathy dataset_coco.json | "
                  "CSV image_path,caption[,split] | modelscope:<dataset id>[:<subset>] "
                  "(e.g. modelscope:modelscope/coco_2014_caption)",
            "default: the input's folder (official COCO json: pass the folder holding train2014/, val2014/)")
    coco.add_argument("--resize", type=_size, default=None,
                      help="write WxH copies under <out>/images and train on those (default: the originals)")
    coco.add_argument("--captions-per-image", choices=("one", "all"), default="all",
                      help="all captions, or one chosen per image with --seed")
    coco.add_argument("--seed", type=int, default=0, help="which caption --captions-per-image one keeps")
    coco.add_argument("--prompt", default=coco_caption.DEFAULT_PROMPT,
                      help='user text after <image> (the seed recipe used "COCO Yes:")')

    ref = sub("refcoco", help="RefCOCO/RefCOCO+/RefCOCOg grounding", description=refcoco.__doc__)
    _common(ref, "refer directory (refs(<splitby>).p + instances.json) | parquet file or directory",
            "default: the input's folder (refer layout: pass the folder holding the COCO train2014/ images)")
    ref.add_argument("--splitby", choices=refcoco.SPLITBYS, default=None,
                     help="which refs(<splitby>).p to read (default: the only one present)")
    ref.add_argument("--bbox-format", choices=("xywh", "xyxy", "auto"), default="auto",
                     help="parquet bbox format; auto only when the rows decide it (refer layout is always xywh)")
    ref.add_argument("--task", choices=("rec", "reg", "both"), default="rec",
                     help="rec: expression -> box; reg: box -> expression")
    ref.add_argument("--min-pixels", type=int, default=None,
                     help="default: the family's recipe value (converters.boxes)")
    ref.add_argument("--max-pixels", type=int, default=None,
                     help="must equal the recipe's (default: the family's recipe value)")
    ref.add_argument("--processor-config", type=_processor_pixels, default=None,
                     help="checkpoint dir or preprocessor_config.json whose own pixel limits LLaMA-Factory's "
                          "processor applies (default: the official Qwen checkpoints')")
    ref.add_argument("--box-tolerance", type=float, default=2.0,
                     help="px a box may overshoot the image and still be clipped instead of skipped")

    micro = sub("microscopy", help="microscope focusing image pairs", description=microscopy.__doc__)
    _common(micro, "pairs JSON/JSONL/CSV (image1,image2,direction,distance[,analysis]) | conversation rows "
                   "(the seed's `conversations` JSONL/JSON) | z-stack CSV/JSON (stack_id,image,z,focus_z)",
            "default: the input's folder")
    _file_split(micro)
    micro.add_argument("--prompt", default=microscopy.DEFAULT_PROMPT,
                       help="user text after the two <image> tags (conversation rows keep their own)")
    micro.add_argument("--steps-per-z", type=float, default=1.0, help="motor steps per z unit (z-stack input)")
    micro.add_argument("--max-distance", type=_positive_int, default=microscopy.MAX_DISTANCE,
                       help="largest plausible move in motor steps; a record beyond it is skipped")

    forge = sub("forgery", help="real/fake image classification with masks", description=forgery.__doc__)
    _common(forge, 'list JSON/JSONL/CSV of {"image_path", "label" 0|1, "mask_path" png | "HxW"[, "split"]}',
            "default: the input's folder")
    _file_split(forge)
    forge.add_argument("--real-word", default="real", help="the answer for label 0")
    forge.add_argument("--fake-word", default="fake", help="the answer for label 1")

    check = sub("check", help="validate an output directory",
                description="Exit 1 and one line per problem when a trainer would trip over the files.")
    check.add_argument("out", type=Path, help="a converter output directory")
    _debug_option(check)
    return parser


def _bind_options(source_fn, opts, record: dict, resize_path: str):
    """A source's to_sample(record, opts, resize_path) as the pipeline's convert(record, resize_path);
    module-level so worker processes can receive it."""
    return source_fn(record, opts, resize_path)


def _options(args: argparse.Namespace, **extra) -> dict:
    # workers and debug change nothing in the output, so they stay out of the manifest (reruns stay
    # byte-identical)
    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
               if k not in ("command", "workers", "debug")}
    options.update(extra)
    return options


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "check":
            problems = check_dir(args.out)
            for problem in problems:
                print(problem)
            print(f"{args.out}: {'OK' if not problems else f'{len(problems)} problem(s)'}", file=sys.stderr)
            return 1 if problems else 0
        return _convert(args)
    except pipeline.StrictModeError as error:
        print(error, file=sys.stderr)
        return 1
    except (InputError, ValueError, OSError) as error:
        # User errors: one line naming the file; the traceback only on request.
        if args.debug:
            traceback.print_exc()
        if isinstance(error, OSError) and error.filename and not isinstance(error, InputError):
            error = f"{error.filename}: {files.os_error_cause(error)}"
        print(f"error: {error}", file=sys.stderr)
        return 2


def _convert(args: argparse.Namespace) -> int:
    targets = TARGET_CHOICES[args.target]
    source = Path(args.input)
    # Relative image paths resolve against --images, else against the input's own directory.
    images = args.images or (source if source.is_dir() else source.parent)
    if args.images is not None and not args.images.is_dir():
        cause = "no such folder" if not args.images.exists() else "not a folder"
        raise InputError(f"--images {args.images}: {cause}")
    files.allow_outside_root(args.allow_outside_root, absolute=args.images is None)
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
            only_split=args.split, source=args.input)
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
                                           limit=args.limit, file_split=args.split_of_file)
        else:
            items = microscopy.read_pairs(source, images, only_split=args.split, limit=args.limit,
                                          file_split=args.split_of_file)
        source_fn, opts = microscopy.to_sample, microscopy.MicroscopyOptions(args.prompt, args.max_distance)
        options = _options(args)
    else:
        name, task = args.name or "forgery", "forgery"
        items = forgery.read_list(source, images, only_split=args.split, limit=args.limit,
                                  file_split=args.split_of_file)
        source_fn, opts = forgery.to_sample, forgery.ForgeryOptions(args.real_word, args.fake_word)
        options = _options(args)

    entries = pipeline.run(name=name, task=task, items=items, convert=partial(_bind_options, source_fn, opts),
                           out=args.out, targets=targets, inputs=inputs, options=options,
                           trainer_dependent=trainer_dependent, strict=args.strict, workers=args.workers)
    return _report(entries, args, name)


def _report(entries: dict, args: argparse.Namespace, name: str) -> int:
    """Counts and skip reasons per split on stderr; 1 when a split (or the whole input) gave no sample."""
    manifest = args.out / "manifest.json"
    if not entries:
        wanted = f" of split {args.split!r}" if args.split else ""
        hint = (" (rows without a split field are train; --split-of-file puts a whole file in one split)"
                if args.command in ("microscopy", "forgery") and args.split else "")
        print(f"error: {args.input}: no record{wanted} in the input{hint}; nothing written", file=sys.stderr)
        return 1
    empty = []
    for key, entry in entries.items():
        if entry["count"] == 0:
            empty.append(key)
            print(f"error: {key}: no usable sample, all {entry['skipped_count']} record(s) of {args.input} "
                  "were skipped; top reasons:", file=sys.stderr)
        else:
            print(f"{key}: {entry['count']} samples, {entry['skipped_count']} skipped"
                  + (f", {len(entry['notes'])} noted" if entry["notes"] else ""), file=sys.stderr)
        for line in pipeline.skip_summary(entry):
            print(line, file=sys.stderr)
        if entry["skipped_count"]:
            print(f"  full list: {manifest}, datasets.{key}.skipped", file=sys.stderr)
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
