"""Reading tabular inputs (JSON list, JSON lines, CSV) as dict rows, streamed where the format allows."""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

T = TypeVar("T")


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


def select_splits(items: Iterable[tuple[str, T]], only_split: str | None, limit: int | None) -> Iterator[tuple[str, T]]:
    """Keep items of `only_split` (all when None), at most `limit` per split."""
    per_split: dict[str, int] = {}
    for split, item in items:
        if (only_split is not None and split != only_split) or per_split.get(split, 0) == limit:
            continue
        per_split[split] = per_split.get(split, 0) + 1
        yield split, item


def split_rows(path: Path, only_split: str | None, limit: int | None) -> Iterator[tuple[str, tuple[int, dict]]]:
    """(split, (row number, row)) of a table whose rows may name their split (default "train")."""
    return select_splits(((str(row.get("split") or "train"), (number, row)) for number, row in read_rows(path)),
                         only_split, limit)
