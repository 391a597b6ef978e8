"""Command-line pieces the converters' subcommands share (and eval's, for the same look of --help)."""
from __future__ import annotations

import argparse
from pathlib import Path

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


def add_split_of_file(parser: argparse.ArgumentParser) -> None:
    """--split-of-file, for sources whose rows may name their split (converters.sources.tables.row_split)."""
    parser.add_argument("--split-of-file", metavar="SPLIT", default=None,
                        help="put every row of the input in this split (e.g. val for a file that holds only "
                             "validation rows); a row whose own split field names another split is skipped "
                             "(default: each row's split field, train when it has none)")
