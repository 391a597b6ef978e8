"""This project's ms-swift plugin: a recipe names it in `external_plugins` and runs as plain `swift sft recipe.yaml`.

swift imports it in every process it starts (each torchrun rank, each dataloader worker) before it resolves
model_type / template / callbacks, and it registers, for a recipe to select by name:

    model_type: qwen3_vl_vision_encoder   callbacks: [vision_encoder_save]   the custom vision encoder
    template: qwen2_5_vl_forgery          callbacks: [forgery]               the forgery head / fusion
    callbacks: [speedups]                                                    custom_modules.speedups

Settings are variables of the recipe's ENV block, QVR_<FEATURE>_<KEY> (env_settings); they are checked here on
import, so a misspelt one fails before any model loads, naming the variable and the recipe.

Every ms-swift recipe names this plugin, also without our features: it keeps in the run's args.json what swift
infer / deploy / export need to see images as training did (the pixel limits, our settings) and gives them back
when swift imports it from there (swift_serving).

Where the file is: swift's import_external_file takes a file path only, made absolute against the working
directory (no module names; not relative to the recipe). Recipes name it relative to the repository root, as
their dataset and output_dir are; from any other directory give swift the installed file,
    swift sft /path/to/recipe.yaml --external_plugins "$(python -m custom_modules.integrations.swift_plugin)"
(run as a module, this file prints its own path).
"""
from __future__ import annotations

import os
from pathlib import Path


def environment_settings(feature: str) -> dict:
    """The feature's settings from this process's environment (swift exported the recipe's ENV block)."""
    from custom_modules.integrations.env_settings import read_settings, recipe_source

    source, _ = recipe_source()
    return read_settings(os.environ, source).get(feature, {})


def check_settings() -> None:
    """Every QVR_* setting of the run checked; a bad one stops swift with one line naming it (SystemExit: swift
    imports this file while it parses its arguments, and would otherwise print the import's traceback)."""
    from custom_modules.forgery.settings import parse_settings as forgery_settings
    from custom_modules.integrations.env_settings import read_settings, recipe_source
    from custom_modules.recipe_keys import env_where
    from custom_modules.speedups import parse_settings as speedups_settings
    from custom_modules.vision_encoder.settings import parse_settings as vision_encoder_settings

    source, recipe_env = recipe_source()
    parsers = {"forgery": forgery_settings, "vision_encoder": vision_encoder_settings, "speedups": speedups_settings}
    try:
        for feature, settings in read_settings(os.environ, source, recipe_env).items():
            try:
                parsers[feature](settings, env_where(feature))
            except ValueError as error:
                raise ValueError(f"{source}: {error}") from None
    except ValueError as error:
        raise SystemExit(str(error)) from None


def name_refused_pickles(checkpoint: str) -> None:
    """A resumed checkpoint whose optimizer / scheduler / RNG state torch refuses to unpickle (weights-only) ends the
    run with one line naming the file and exit status 2, not swift's traceback (swift's sft has no hook around its
    resume: the process's last handler does it)."""
    import pickle
    import sys

    previous = sys.excepthook

    def hook(kind, error, traceback):
        if not isinstance(error, pickle.UnpicklingError):
            return previous(kind, error, traceback)
        from custom_modules.checkpoints import refused_pickle

        print(f"swift: {refused_pickle(checkpoint, error)}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(2)  # an excepthook cannot choose the exit status

    sys.excepthook = hook


def register() -> None:
    from custom_modules.integrations import swift_serving

    args = swift_serving.prepare(os.environ)  # before any setting is read: serving restores them
    check_settings()
    from swift.arguments import InferArguments, SftArguments

    if isinstance(args, SftArguments) and args.resume_from_checkpoint:
        name_refused_pickles(args.resume_from_checkpoint)

    from custom_modules.integrations import swift_forgery, swift_speedups, swift_vision_encoder

    if isinstance(args, InferArguments):  # swift infer / deploy / app / eval (None: not imported by swift's arguments)
        swift_forgery.check_servable(environment_settings("forgery"), f"{args.ckpt_dir or args.model}")
    swift_forgery.register(environment_settings)
    swift_vision_encoder.register(environment_settings)
    swift_speedups.register(environment_settings)


if __name__ == "__main__":
    print(Path(__file__).resolve())
else:
    register()
