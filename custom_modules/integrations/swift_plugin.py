"""ms-swift with our custom modules: the recipe's `qwenvl_recipes:` block switches features on.

    python -m custom_modules.integrations.swift_plugin sft [--config] recipe.yaml [--flag value ...]
        (--qwenvl_recipes.<feature>.<key> <YAML value> overrides one setting of the block)

ms-swift turns every YAML key into a command-line flag and rejects unknown ones, so this launcher pops the
`qwenvl_recipes` block, passes it to the swift processes as JSON in the environment variable
QVR_RECIPE_FEATURES, writes the rest of the recipe to a temporary YAML and runs ms-swift's own CLI on it
with `--external_plugins <this file>` (NPROC_PER_NODE etc. launch torchrun exactly as `swift sft` does;
without them the command runs in this process, as swift's CLI would in a child).
Equivalent by hand: QVR_RECIPE_FEATURES='{"forgery": {...}}' swift sft plain.yaml \
    --external_plugins custom_modules/integrations/swift_plugin.py

Imported as a plugin inside each swift process, this file calls FEATURES[key](settings) for every feature of
the block; the feature registers models, callbacks or patches with ms-swift. A feature plugs in with one
line in FEATURES: "key": "module:function" (imported only when used).
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os
import runpy
import sys
import tempfile
from pathlib import Path

# swift imports plugin files by path: make the project importable from its repository root
REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

RECIPE_KEY = "qwenvl_recipes"
ENV_KEY = "QVR_RECIPE_FEATURES"
FEATURES = {
    "forgery": "custom_modules.integrations.swift_forgery:register",
    "vision_encoder": "custom_modules.integrations.swift_vision_encoder:register",
    "speedups": "custom_modules.integrations.speedups:swift_register",
}


def register_features(block: dict, features: dict[str, str] = FEATURES) -> None:
    for key, settings in block.items():
        if key not in features:
            raise ValueError(f"{RECIPE_KEY}.{key}: unknown feature; known: {sorted(features)}")
        module, function = features[key].split(":")
        getattr(importlib.import_module(module), function)(settings)


def split_recipe(path: str) -> tuple[dict, dict]:
    """(swift config, qwenvl_recipes block) of a recipe YAML."""
    import yaml

    config = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    block = config.pop(RECIPE_KEY, None) or {}
    if not isinstance(block, dict):
        raise ValueError(f"{path}: {RECIPE_KEY} must be a mapping of feature -> settings")
    return config, block


def pop_block_overrides(block: dict, flags: list[str]) -> list[str]:
    """Apply `--qwenvl_recipes.<feature>.<key> value` flags to the block; return the other flags."""
    import yaml

    rest, i = [], 0
    while i < len(flags):
        name = flags[i]
        if name.startswith(f"--{RECIPE_KEY}.") and i + 1 < len(flags):
            feature, _, key = name[len(RECIPE_KEY) + 3:].partition(".")
            block.setdefault(feature, {})[key] = yaml.safe_load(flags[i + 1])
            i += 2
        else:
            rest.append(name)
            i += 1
    return rest


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if len(argv) > 1 and argv[1] == "--config":
        del argv[1]
    if len(argv) < 2 or not argv[1].endswith((".yaml", ".yml")):
        print(__doc__)
        raise SystemExit(0 if argv[:1] in (["-h"], ["--help"]) else 2)
    command, recipe, flags = argv[0], argv[1], argv[2:]
    config, block = split_recipe(recipe)
    flags = pop_block_overrides(block, flags)
    import yaml
    from swift.cli.main import ROUTE_MAPPING, cli_main, parse_yaml_args, use_torchrun

    with tempfile.TemporaryDirectory(prefix="qvr_swift_") as tmp:
        plain = Path(tmp) / Path(recipe).name
        plain.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
        os.environ[ENV_KEY] = json.dumps(block)
        args = [str(plain), "--external_plugins", str(Path(__file__).resolve()), *flags]
        if use_torchrun():  # swift's CLI starts the torchrun workers
            sys.argv = ["swift", command, *args]
            cli_main()
            return
        # one process: what swift's CLI would run in a child interpreter, run here (saves an import of swift)
        parse_yaml_args(args)
        script = importlib.util.find_spec(ROUTE_MAPPING[command]).origin
        sys.argv = [script, *args]
        runpy.run_path(script, run_name="__main__")


if __name__ == "__main__":
    main()
elif os.environ.get(ENV_KEY):
    register_features(json.loads(os.environ[ENV_KEY]))
