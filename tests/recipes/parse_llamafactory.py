"""Runs INSIDE .venv-llamafactory: parse recipes with LLaMA-Factory's own argument parser.

stdin: JSON list of {"path", "kind": "train"|"export", "config": {...}} (qwenvl_recipes already removed,
model swapped for a tiny one). stdout (last line): JSON {path: null | "error text"}.
One process parses every recipe so the suite pays LLaMA-Factory's import once.
"""
import json
import sys
import traceback

from llamafactory.hparams import get_infer_args, get_train_args

PARSERS = {"train": get_train_args, "export": get_infer_args}


def main() -> None:
    results = {}
    for item in json.load(sys.stdin):
        try:
            PARSERS[item["kind"]](item["config"])
            results[item["path"]] = None
        except (Exception, SystemExit) as exc:  # the parser reports bad recipes with ValueError or exit()
            results[item["path"]] = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
