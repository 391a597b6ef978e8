"""LLaMA-Factory with our custom modules: the recipe's `qwenvl_recipes:` block switches features on.

    python -m custom_modules.integrations.llamafactory_entry recipe.yaml [key=value ...]
    torchrun --nproc_per_node N -m custom_modules.integrations.llamafactory_entry recipe.yaml

LLaMA-Factory has no plugin flag, so this entry reads the YAML (overrides as `llamafactory-cli train`
takes them), pops the `qwenvl_recipes` block and, for each key in it, calls FEATURES[key](settings),
which may patch LLaMA-Factory's SFT workflow and returns TrainerCallbacks; then it runs
`llamafactory.train.tuner.run_exp(args, callbacks=...)`. Every other key goes to LLaMA-Factory's own parser.
A feature plugs in with one line in FEATURES: "key": "module:function" (imported only when used).
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

RECIPE_KEY = "qwenvl_recipes"
FEATURES = {
    "forgery": "custom_modules.integrations.llamafactory_forgery:setup",
    "vision_encoder": "custom_modules.integrations.llamafactory_vision_encoder:install",
    "speedups": "custom_modules.integrations.speedups:llamafactory_setup",
}


def load_recipe(path: str, overrides: list[str]) -> tuple[dict, dict]:
    """(trainer args, qwenvl_recipes block) from the YAML plus `key=value` overrides (dotted keys reach
    into the block, e.g. qwenvl_recipes.forgery.head_dim=64)."""
    from omegaconf import OmegaConf

    config = OmegaConf.merge(OmegaConf.load(Path(path).absolute()), OmegaConf.from_cli(overrides))
    args = OmegaConf.to_container(config)
    block = args.pop(RECIPE_KEY, None) or {}
    if not isinstance(block, dict):
        raise ValueError(f"{path}: {RECIPE_KEY} must be a mapping of feature -> settings")
    return args, block


def feature_callbacks(block: dict, features: dict[str, str] = FEATURES) -> list:
    callbacks = []
    for key, settings in block.items():
        if key not in features:
            raise ValueError(f"{RECIPE_KEY}.{key}: unknown feature; known: {sorted(features)}")
        module, function = features[key].split(":")
        callbacks.extend(getattr(importlib.import_module(module), function)(settings))
    return callbacks


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or not argv[0].endswith((".yaml", ".yml")):
        print(__doc__)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    args, block = load_recipe(argv[0], argv[1:])
    callbacks = feature_callbacks(block)
    from llamafactory.train.tuner import run_exp

    run_exp(args, callbacks=callbacks)


if __name__ == "__main__":
    main()
