"""Reading tabular inputs (JSON list, JSON lines, CSV) as dict rows, streamed where the format allows."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator


def read_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """(row number, row) pairs: 1-based line for JSONL/CSV data rows, 0-based index for a JSON list."""
    suffix = path.suffix.lower()
    if suffix == ".csv":
        with open(path, encoding="utf-8", newline="") as f:
            yield from enumerate(csv.DictReader(f), start=2)
    elif suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, start=1):
                if line.strip():
                    try:
                        yield number, json.loads(line)
                    except json.JSONDecodeError as error:
                        raise ValueError(f"{path}:{number}: invalid JSON line: {error}") from None
    else:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError(f"{path}: expected a JSON list of rows, got {type(data).__name__}")
        yield from enumerate(data)
