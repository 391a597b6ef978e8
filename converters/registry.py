"""The source registry: every dataset the converters read, and the one task vocabulary.

Each `converters/sources/<source>.py` ends with `register_source(Source(...))`: its subcommand, the tasks its
samples can train (of TASK_NAMES), its own command-line options, its reader, and the check its output rows
must pass. `python -m converters` and `python -m converters check` take everything per source from here, and
eval its task names, so a new dataset is one `to_sample` function plus one registry entry (converters/README.md).
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

from converters.schema import Sample

# The task names: the recipes' folders (recipes/<task>/), `eval --task`, and the manifest entries' "task".
TASK_NAMES = ("caption", "grounding", "microscopy", "forgery")


@dataclass(frozen=True)
class Conversion:
    """What a source's reader hands the pipeline for one run (converters.pipeline.run).

    items: (split, record dict with an "id" | Skip) pairs; to_sample(record, sample_options, resize_path) is
    the source's pure record -> Sample function (module level: worker processes receive it); inputs: the
    files whose sha256 the manifest records; options: manifest options the reader settled (e.g. defaults
    taken from the model family), over the command line's; trainer_dependent: the rows differ per trainer
    (each target's file is rendered through its own resize path)."""

    items: Iterable[tuple[str, object]]
    to_sample: Callable[[dict, Any, str], Sample]
    sample_options: Any
    inputs: list[Path]
    options: dict = field(default_factory=dict)
    trainer_dependent: bool = False

    def convert(self) -> Callable[[dict, str], Sample]:
        """to_sample with this run's options, as the pipeline's convert(record, resize_path); made of module-level
        functions and plain options, so worker processes receive it pickled (not of `__main__`, which a worker
        does not import)."""
        return partial(_apply_options, self.to_sample, self.sample_options)


def _apply_options(to_sample, sample_options, record: dict, resize_path: str) -> Sample:
    return to_sample(record, sample_options, resize_path)


# check_row(row, options, resize_path, image_sizes) -> problems: `row` is a written row with a messages list,
# `options` its manifest entry's options, `resize_path` the one its file was rendered with, `image_sizes` the
# (width, height) of each of its images (None when unreadable: the generic check reports those).
RowCheck = Callable[[dict, dict, str, list], list[str]]


@dataclass(frozen=True)
class Source:
    command: str        # the converters' subcommand, e.g. coco-caption
    tasks: tuple[str, ...]  # the tasks its samples can train (of TASK_NAMES); several: the subcommand takes --task
    dataset: str        # default --name: file names <dataset>_<split>.json and the dataset_info keys
    help: str           # one line for `python -m converters --help`
    description: str    # the subcommand's --help text
    input_help: str     # what --input may be
    images_help: str    # the data root's default, in words
    add_arguments: Callable[[argparse.ArgumentParser], None]  # the source's own options
    read: Callable[[argparse.Namespace, Path | None], Conversion]  # (args, data root) -> Conversion
    check_row: RowCheck | None = None


SOURCES: dict[str, Source] = {}


def register_source(source: Source) -> None:
    if source.command in SOURCES:
        raise ValueError(f"source {source.command!r} is already registered "
                         f"(by {SOURCES[source.command].read.__module__})")
    unknown = [task for task in source.tasks if task not in TASK_NAMES]
    if unknown or not source.tasks:
        raise ValueError(f"source {source.command!r}: tasks {source.tasks!r} must be some of {TASK_NAMES}")
    SOURCES[source.command] = source


def registered() -> dict[str, Source]:
    """Every source: each module of converters/sources registers its own when imported."""
    import converters.sources

    for module in pkgutil.iter_modules(converters.sources.__path__):
        importlib.import_module(f"converters.sources.{module.name}")
    return SOURCES
