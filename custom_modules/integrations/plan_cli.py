"""qvr-plan: what a recipe will train, worked out by its own trainer's code before any weight loads.

    qvr-plan [--json FILE] [--debug] RECIPE [OVERRIDE ...]

RECIPE is a LLaMA-Factory or an ms-swift recipe; OVERRIDEs are what its command takes after it: `key=value` for
LLaMA-Factory (as `llamafactory-cli train` / `qvr-llamafactory train`), `--key value` for ms-swift (as `swift sft`;
QVR_* settings come from the recipe's ENV block and the shell, as there). The model is built on the meta device
from its config (a published architecture, or a local folder's config.json; no weights, a few seconds on a CPU),
the trainer's own code places LoRA and freezes parts, our modules are attached as training attaches them, and the
plan is printed: each target pattern with the modules it reached, every part of the model (LM, ViT blocks, merger,
deepstack mergers, embeddings, lm_head, our forgery head / fusion / vision encoder) trained fully, with LoRA or
frozen, with parameter counts and learning rates, and warnings (forgery head blocks vs LoRA blocks, a vision encoder
stage the flags do not train as set, a later stage's input not there yet).

Run it in the recipe's trainer environment, where that code is (installed in both: .venv-llamafactory/bin/qvr-plan,
.venv-swift/bin/qvr-plan). Exit status 2, one line on stderr, for a target pattern that reaches nothing (naming the
pattern, the recipe and, when a setting took its matches out, that setting), an unknown model, a recipe the trainer
refuses, or the wrong environment; --json FILE also writes the plan (with the trainable parameters by name).
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import sys
from pathlib import Path

import yaml

# recipe key -> trainer: a LLaMA-Factory recipe names its model model_name_or_path, an ms-swift one model
TRAINER_KEYS = {"model_name_or_path": "llamafactory", "finetuning_type": "llamafactory",
                "model": "swift", "tuner_type": "swift"}
TRAINERS = {"llamafactory": ("llamafactory", "LLaMA-Factory", ".venv-llamafactory",
                             "custom_modules.integrations.llamafactory_plan"),
            "swift": ("swift", "ms-swift", ".venv-swift", "custom_modules.integrations.swift_plan")}
QUIET = {"LLAMAFACTORY_VERBOSITY": "WARN", "LOG_LEVEL": "WARNING", "TRANSFORMERS_VERBOSITY": "error"}


def trainer_of(recipe: str) -> str:
    path = Path(recipe)
    if not path.is_file():
        raise ValueError(f"{recipe}: no such recipe file")
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ValueError(f"{recipe}: not a readable YAML/JSON recipe ({' '.join(str(error).split())})") from error
    found = {TRAINER_KEYS[key] for key in (config if isinstance(config, dict) else {}) if key in TRAINER_KEYS}
    if len(found) != 1:
        raise ValueError(f"{recipe}: neither a LLaMA-Factory recipe (model_name_or_path) nor an ms-swift recipe "
                         f"(model)")
    return found.pop()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qvr-plan", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", metavar="FILE", help="also write the plan as JSON (trainable parameters by name)")
    parser.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    parser.add_argument("recipe", help="a LLaMA-Factory or ms-swift recipe (.yaml)")
    parser.add_argument("overrides", nargs=argparse.REMAINDER,
                        help="the trainer's overrides: key=value (LLaMA-Factory), --key value (ms-swift)")
    return parser


def make_plan(recipe: str, overrides: list[str]):
    trainer = trainer_of(recipe)
    package, name, venv, module = TRAINERS[trainer]
    if importlib.util.find_spec(package) is None:
        raise ValueError(f"{recipe} is a{'n' if name[0] in 'ms' else ''} {name} recipe: run qvr-plan in {name}'s "
                         f"environment ({venv}/bin/qvr-plan), whose code decides what trains")
    for key, value in QUIET.items():
        os.environ.setdefault(key, value)
    return importlib.import_module(module).plan(recipe, overrides)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = make_plan(args.recipe, args.overrides)
        from custom_modules.plan import render, to_json
        from qwenvl_recipes.io import write_json_atomic

        print(render(plan))
        if args.json:
            write_json_atomic(Path(args.json), to_json(plan))
    except (ValueError, OSError) as error:  # user errors: one line, the traceback only on request
        if args.debug:
            raise
        print(f"qvr-plan: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    for error in plan.errors:
        print(f"qvr-plan: {error}", file=sys.stderr)
    return 2 if plan.errors else 0


if __name__ == "__main__":
    sys.exit(main())
