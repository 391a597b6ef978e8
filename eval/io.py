"""Atomic writes (converters.files does the temp file + os.replace) and JSON/JSONL reading with errors
that name file and line."""
from __future__ import annotations

import json
import math
from pathlib import Path

from converters.files import load_json_file, read_input_text, write_text_atomic


def finite_or_null(value):
    """`value` with every NaN/inf float replaced by None: JSON has no NaN, and a metric that could not be
    computed is null, which every JSON reader accepts (Python's NaN output is not JSON)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_or_null(v) for v in value]
    return value


def write_json_atomic(path: Path, value) -> None:
    write_text_atomic(path, json.dumps(finite_or_null(value), indent=2, ensure_ascii=False, sort_keys=True,
                                       allow_nan=False) + "\n")


def write_jsonl_atomic(path: Path, rows: list[dict]) -> None:
    write_text_atomic(path, "".join(json.dumps(finite_or_null(r), ensure_ascii=False, allow_nan=False) + "\n"
                                    for r in rows))


def read_json(path: Path):
    """The parsed file; an unreadable, non-UTF-8, empty or truncated file is a ValueError naming it."""
    return load_json_file(path)


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file; a bad line is a ValueError naming file and line."""
    rows = []
    for number, line in enumerate(read_input_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{number}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise ValueError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
