"""Command-line pieces the converters' subcommands share (and eval's, for the same look of --help)."""
from __future__ import annotations

import argparse
from pathlib import Path

from converters.boxes import default_pixels
from converters.schema import IMAGE_TAG
from qwenvl_recipes.io import InputError, read_json


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


def size_wxh(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WxH like 280x280, got {text!r}") from None
    return width, height


def image_prompt(text: str) -> str:
    """--prompt: a user prompt for one image, as written; <image> first unless the text places it itself."""
    count = text.count(IMAGE_TAG)
    if count > 1:
        raise argparse.ArgumentTypeError(f"a prompt for one image holds at most one {IMAGE_TAG}, got {count}: {text!r}")
    return text if count else IMAGE_TAG + text


def prompt_template(field: str):
    """An argparse type: an image_prompt that must hold `{field}`, where each record's own value goes."""
    def parse(text: str) -> str:
        if "{" + field + "}" not in text:
            raise argparse.ArgumentTypeError(f"the prompt must hold {{{field}}}, where each record's {field} goes; "
                                             f"got {text!r}")
        return image_prompt(text)
    parse.__name__ = f"prompt with {{{field}}}"
    return parse


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {value} (it would convert nothing)")
    return value


# Where a checkpoint keeps its image processor's settings: the hub's layout, then the one transformers 5 saves
# (the image processor's settings nested under "image_processor").
PROCESSOR_CONFIG_FILES = ("preprocessor_config.json", "processor_config.json")


def read_processor_pixels(path: str | Path) -> tuple[int, int]:
    """(min, max) pixels of a checkpoint's image processor, from a config JSON or the directory holding one
    (PROCESSOR_CONFIG_FILES); an InputError naming the file when there is none or it has no limits."""
    config_path = Path(path)
    if config_path.is_dir():
        found = [config_path / name for name in PROCESSOR_CONFIG_FILES if (config_path / name).is_file()]
        if not found:
            raise InputError(f"{config_path}: no {' or '.join(PROCESSOR_CONFIG_FILES)}")
        config_path = found[0]
    config = read_json(config_path, dict, "a processor config")
    config = config.get("image_processor", config)
    size = config.get("size") or {}
    low, high = config.get("min_pixels", size.get("shortest_edge")), config.get("max_pixels", size.get("longest_edge"))
    if low is None or high is None:
        raise InputError(f"{config_path}: no min/max pixels (min_pixels/max_pixels or size)")
    return int(low), int(high)


def checkpoint_processor_pixels(model: str | Path) -> tuple[int, int] | None:
    """The image processor limits of a local checkpoint directory; None for a hub id (the published
    checkpoints' own limits are converters.geometry.PROCESSOR_PIXELS)."""
    return read_processor_pixels(model) if Path(model).is_dir() else None


def processor_pixels(path: str) -> tuple[int, int]:
    """--processor-config: (min, max) pixels from a checkpoint's processor config (or its directory)."""
    try:
        return read_processor_pixels(path)
    except InputError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a fraction between 0 and 1 (exclusive), got {value}")
    return value


def add_split_options(parser: argparse.ArgumentParser, seed_help: str = "which rows --val-fraction holds out") -> None:
    """--split-of-file, or --val-fraction with --seed: where the rows of an input that names no split go
    (converters.sources.tables.SplitRule); rows naming their own split keep it. One --seed serves every seeded
    choice of a source (`seed_help` says which)."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--split-of-file", metavar="SPLIT", default=None,
                       help="put every row of the input in this split (e.g. test for a file held out for "
                            "evaluation); a row whose own split field names another split is skipped "
                            "(default: each row's split field, train when it has none)")
    where.add_argument("--val-fraction", metavar="F", type=fraction, default=None,
                       help="hold out about this fraction (0 < F < 1) of the rows that name no split as val, "
                            "chosen by --seed and each row's images: the same rows whatever the order or --workers "
                            "(default: none held out)")
    parser.add_argument("--seed", type=int, default=0, help=seed_help)


def add_box_options(parser: argparse.ArgumentParser) -> None:
    """The pixel limits boxes are rendered under (Qwen2.5-VL: pixels of the resized image) and the clipping
    tolerance, for sources that write boxes."""
    parser.add_argument("--min-pixels", type=int, default=None,
                        help="default: the family's recipe value (converters.boxes)")
    parser.add_argument("--max-pixels", type=int, default=None,
                        help="must equal the recipe's (default: the family's recipe value)")
    parser.add_argument("--processor-config", dest="processor_pixels", metavar="DIR_OR_JSON",
                        type=processor_pixels, default=None,
                        help="checkpoint dir (its preprocessor_config.json or processor_config.json) or that "
                             "file, whose own pixel limits LLaMA-Factory's processor applies (default: the official "
                             "Qwen checkpoints')")
    parser.add_argument("--box-tolerance", type=float, default=2.0,
                        help="px a box may overshoot the image and still be clipped instead of skipped")


def box_pixels(args: argparse.Namespace) -> tuple[int, int]:
    """(min, max) pixels of --min-pixels/--max-pixels, the --model family's recipe values where not given."""
    low, high = default_pixels(args.model)
    return args.min_pixels or low, args.max_pixels or high
