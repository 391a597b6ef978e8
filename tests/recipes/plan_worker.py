"""Runs INSIDE a trainer's venv: qvr-plan's plan of many recipe runs in one process (one import of the trainer).

stdin: JSON list of {"id", "recipe", "overrides": [the trainer command's words after the recipe], "env": {...},
"cwd"}. Each is planned as `qvr-plan RECIPE OVERRIDES` would plan it, with `env` added to the environment (ms-swift
recipes' QVR_* settings) and `cwd` as the working directory (ms-swift's relative paths). stdout (last line): JSON
{id: the plan's JSON | {"failure": "error text"}}.
"""
import json
import os
import sys

from custom_modules.integrations.plan_cli import make_plan
from custom_modules.plan import to_json


def main() -> None:
    results, base_env, base_cwd = {}, dict(os.environ), os.getcwd()
    for item in json.load(sys.stdin):
        # as in a fresh process: the recipe's ENV block and external_plugins are this recipe's own
        for name in [m for m in sys.modules if m.startswith("_swift_external_")]:
            del sys.modules[name]
        os.environ.update(item.get("env") or {})
        os.chdir(item.get("cwd") or base_cwd)
        try:
            results[item["id"]] = to_json(make_plan(item["recipe"], item["overrides"]))
        except (ValueError, OSError) as error:
            results[item["id"]] = {"failure": str(error)}
        finally:
            os.environ.clear()
            os.environ.update(base_env)
            os.chdir(base_cwd)
    print(json.dumps(results))


if __name__ == "__main__":
    main()
