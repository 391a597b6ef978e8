"""python -m converters <source> ...: convert a source dataset into LLaMA-Factory and ms-swift files.

Outputs per split in --out: <name>_<split>.json (sharegpt, LLaMA-Factory), <name>_<split>.jsonl (ms-swift),
dataset_info.json (LLaMA-Factory entries named <name>_<split>) and manifest.json (inputs with sha256,
options, counts, every skipped record with its reason). Image paths are absolute, which both trainers
resolve. Recipes reference the result with `dataset_dir: <out>` and `dataset: <name>_<split>`.

Exit status: 0 converted (skipped records are counted per reason on stderr and listed in manifest.json);
1 a split ended with no usable sample, or --strict and a record was skipped; 2 an input file or folder
is unusable (the message names it), the options are wrong, or the output cannot be written (the message
names the file). Only a run that exits 0 changes --out: the whole folder at once, in one rename; one run
at a time writes into one --out (a second one waits for it).
"""
from __future__ import annotations

import argparse
import sys
import traceback
from functools import partial
from pathlib import Path

from converters import pipeline, trainable
from converters.boxes import MODEL_FAMILIES
from converters.check import check_dir
from converters.images import allow_outside_root
from converters.options import HelpFormatter, positive_int
from converters.registry import Source, registered
from qwenvl_recipes.io import InputError, os_error_cause

TARGET_CHOICES = {"llamafactory": ("llamafactory",), "swift": ("swift",), "both": ("llamafactory", "swift")}


def _debug_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of an input error (otherwise one line naming the file)")


def _common(parser: argparse.ArgumentParser, source: Source) -> None:
    parser.add_argument("--input", required=True, help=source.input_help)
    parser.add_argument("--images", type=Path, default=None,
                        help="the data root: the folder relative image paths are relative to, and that record "
                             f"paths may not leave; {source.images_help}")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="accept record paths that resolve outside the data root: relative paths with "
                             "../.. and, when --images is given, absolute paths elsewhere (without --images "
                             "an absolute path is taken as written); without it such records are skipped")
    parser.add_argument("--out", required=True, type=Path, help="output directory (dataset_dir for recipes)")
    parser.add_argument("--model", choices=MODEL_FAMILIES, default="qwen2_5_vl", help="model family")
    parser.add_argument("--target", choices=TARGET_CHOICES, default="both", help="trainer file(s) to write")
    parser.add_argument("--split", default=None,
                        help="convert only this split (default: every split in the input, each to its own files)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="at most N source records per split (COCO: images; default: all)")
    parser.add_argument("--name", default=None,
                        help=f"dataset name used in file names and dataset_info keys (default: {source.dataset})")
    parser.add_argument("--strict", action="store_true", help="exit non-zero and write nothing if any record is skipped")
    parser.add_argument("--workers", type=positive_int, default=1,
                        help="processes rendering records (output identical for any number)")
    trainable.add_arguments(parser)
    _debug_option(parser)


def build_parser() -> argparse.ArgumentParser:
    """One subcommand per registered source (converters.registry), then `check`."""
    parser = argparse.ArgumentParser(prog="python -m converters", description=__doc__, formatter_class=HelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    sub = partial(commands.add_parser, formatter_class=HelpFormatter)
    for source in registered().values():
        command = sub(source.command, help=f"{source.help} ({'|'.join(source.tasks)} task)",
                      description=source.description)
        _common(command, source)
        if len(source.tasks) > 1:
            command.add_argument("--task", choices=source.tasks, required=True,
                                 help="what the data trains: the manifest's task, which `eval run --task` reads")
        source.add_arguments(command)
    check = sub("check", help="validate an output directory",
                description="Exit 1 and one line per problem when a trainer would trip over the files.")
    check.add_argument("out", type=Path, help="a converter output directory")
    _debug_option(check)
    return parser


def _options(args: argparse.Namespace, settled: dict) -> dict:
    """The manifest's options: the command line as JSON values, with what the reader settled over it.
    workers and debug change nothing in the output, so they stay out (reruns stay byte-identical)."""
    options = {k: str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
               for k, v in vars(args).items() if k not in ("command", "workers", "debug")}
    options.update(settled)
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
        return _convert(registered()[args.command], args)
    except pipeline.StrictModeError as error:
        print(error, file=sys.stderr)
        return 1
    except (ValueError, OSError) as error:  # InputError is a ValueError
        # User errors: one line naming the file; the traceback only on request.
        if args.debug:
            traceback.print_exc()
        if isinstance(error, OSError) and error.filename:
            error = f"{error.filename}: {os_error_cause(error)}"
        print(f"error: {error}", file=sys.stderr)
        return 2


def _convert(source: Source, args: argparse.Namespace) -> int:
    given = Path(args.input)
    # Relative image paths resolve against --images, else against the input's own directory.
    images = args.images or (given if given.is_dir() else given.parent)
    if args.images is not None and not args.images.is_dir():
        cause = "no such folder" if not args.images.exists() else "not a folder"
        raise InputError(f"--images {args.images}: {cause}")
    allow_outside_root(args.allow_outside_root, absolute=args.images is None)
    trainable.configure(args, images)
    conversion = source.read(args, images)
    name = args.name or source.dataset
    task = args.task if len(source.tasks) > 1 else source.tasks[0]
    entries = pipeline.run(name=name, task=task, converter=source.command, items=conversion.items,
                           convert=conversion.convert(),
                           out=args.out, targets=TARGET_CHOICES[args.target], inputs=conversion.inputs,
                           options=_options(args, conversion.options), trainer_dependent=conversion.trainer_dependent,
                           strict=args.strict, workers=args.workers)
    return _report(entries, args, name)


def _report(entries: dict, args: argparse.Namespace, name: str) -> int:
    """Counts and skip reasons per split on stderr; 1 when a split (or the whole input) gave no sample, and
    then nothing was written (pipeline.run commits only a run where every split has a sample)."""
    manifest = args.out / "manifest.json"
    unchanged = f"nothing written, {args.out} is as it was"
    if not entries:
        wanted = f" of split {args.split!r}" if args.split else ""
        hint = (" (rows without a split field are train; --split-of-file puts a whole file in one split)"
                if "split_of_file" in vars(args) and args.split else "")
        print(f"error: {args.input}: no record{wanted} in the input{hint}; {unchanged}", file=sys.stderr)
        return 1
    empty = pipeline.empty_splits(entries)
    for key, entry in entries.items():
        if key in empty:
            print(f"error: {key}: no usable sample, all {entry['skipped_count']} record(s) of {args.input} "
                  "were skipped; top reasons:", file=sys.stderr)
        else:
            print(f"{key}: {entry['count']} samples, {entry['skipped_count']} skipped"
                  + (f", {len(entry['notes'])} noted" if entry["notes"] else ""), file=sys.stderr)
        for line in pipeline.skip_summary(entry):
            print(line, file=sys.stderr)
        if entry["skipped_count"] and not empty:
            print(f"  full list: {manifest}, datasets.{key}.skipped", file=sys.stderr)
    if empty:
        print(f"error: {', '.join(empty)}: no usable sample; {unchanged}", file=sys.stderr)
    return 1 if empty else 0


if __name__ == "__main__":
    sys.exit(main())
