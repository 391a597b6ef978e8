"""Runs INSIDE .venv-swift: parse recipes with ms-swift's own YAML reader and argument classes.

stdin: JSON list of {"path", "kind": "train"|"export", "config": {...}, "overrides": [flags]}. Each config is
expanded to argv by swift's `parse_yaml_args` (the code behind `swift sft recipe.yaml`, including its ENV block,
which carries our plugin's settings), the override flags follow, and the argv is parsed like `swift sft` /
`swift export` do: the recipe's external_plugins are imported (our plugin checks its settings) and unknown flags
are errors. stdout (last line): JSON {path: null | error}.
"""
import json
import os
import sys
import tempfile
import traceback

import yaml
from swift.arguments import ExportArguments, SftArguments
from swift.cli.main import parse_yaml_args
from swift.utils import parse_args

CLASSES = {"train": SftArguments, "export": ExportArguments}


def parse_one(item: dict) -> None:
    # as in a fresh `swift sft` process, --external_plugins files are imported under THIS recipe's environment
    for name in [m for m in sys.modules if m.startswith("_swift_external_")]:
        del sys.modules[name]
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        yaml.safe_dump(item["config"], f)
    argv = [f.name]
    parse_yaml_args(argv)
    os.unlink(f.name)
    args, remaining = parse_args(CLASSES[item["kind"]], argv + item["overrides"])
    if remaining:
        raise ValueError(f"unknown arguments: {remaining}")


def main() -> None:
    results = {}
    base_env = dict(os.environ)
    for item in json.load(sys.stdin):
        try:
            parse_one(item)
            results[item["path"]] = None
        except (Exception, SystemExit) as exc:
            results[item["path"]] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        finally:  # a recipe's ENV block must not leak into the next one
            os.environ.clear()
            os.environ.update(base_env)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
