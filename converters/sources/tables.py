"""Reading tabular inputs (JSON list, JSON lines, CSV) as dict rows, streamed where the format allows.

A file that cannot be read as a whole (missing, a directory, not UTF-8, truncated JSON, a top level
that is not a list) raises InputError naming it; one bad row (a JSONL line that is not JSON or not an
object) becomes a `Skip` naming its line, and the rest of the file is still read."""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from typing import Iterable, Iterator, TypeVar

from converters.schema import Skip
from qwenvl_recipes.io import InputError, decode_cause, os_error_cause, read_input_text, read_json

T = TypeVar("T")
DEFAULT_SPLIT = "train"


def hashable(value) -> bool:
    """Whether `value` can be an index key: an id that is a list or a dict names no record."""
    try:
        hash(value)
    except TypeError:
        return False
    return True


def row_source(path: Path, number: int) -> str:
    """How a row is named in skips: file:line for line-based files, file[index] for a JSON list."""
    return f"{path.name}:{number}" if path.suffix.lower() in (".csv", ".jsonl") else f"{path.name}[{number}]"


def read_rows(path: Path) -> Iterator[tuple[int, dict | Skip]]:
    """(row number, row or Skip): 1-based line for JSONL/CSV data rows, 0-based index for a JSON list."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".csv":
        text = read_input_text(path)
        yield from enumerate(csv.DictReader(io.StringIO(text, newline="")), start=2)
    elif suffix == ".jsonl":
        try:
            with open(path, encoding="utf-8") as f:
                for number, line in enumerate(f, start=1):
                    if line.strip():
                        yield number, _json_line(path, number, line)
        except UnicodeDecodeError as error:
            raise InputError(f"{path}: {decode_cause(error)}") from error
        except OSError as error:
            raise InputError(f"{path}: {os_error_cause(error)}") from error
    else:
        data = read_json(path, list, "a JSON list of rows")
        for index, row in enumerate(data):
            yield index, row if isinstance(row, dict) else _not_an_object(path, index, row)


def _json_line(path: Path, number: int, line: str) -> dict | Skip:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as error:
        return Skip(f"line{number}", f"invalid JSON line: {error.msg} at column {error.colno}",
                    row_source(path, number), "line")
    return row if isinstance(row, dict) else _not_an_object(path, number, row)


def _not_an_object(path: Path, number: int, row: object) -> Skip:
    return Skip(f"row{number}", f"row is a JSON {type(row).__name__}, expected an object",
                row_source(path, number), "row")


def row_split(row: dict, file_split: str | None = None) -> tuple[str, str | None]:
    """(split, problem): the row's own `split` (absent, null or an empty cell: train), or `file_split` for
    a whole file. A split that is not a string (a number, a list) is a problem, not a split named "5": the
    row is then skipped under the default split. With file_split set, a row naming another split is a
    problem too (the file says one thing, the row another)."""
    value = row.get("split")
    if value is None or value == "":
        return file_split or DEFAULT_SPLIT, None
    if not isinstance(value, str) or not value.strip():
        return file_split or DEFAULT_SPLIT, f"split must be a name, got {value!r}"
    if file_split and value != file_split:
        return file_split, f"row's split {value!r} differs from --split-of-file {file_split!r}"
    return value, None


def select_splits(items: Iterable[tuple[str, T]], only_split: str | None, limit: int | None) -> Iterator[tuple[str, T]]:
    """Keep items of `only_split` (all when None), at most `limit` per split."""
    per_split: dict[str, int] = {}
    for split, item in items:
        if (only_split is not None and split != only_split) or per_split.get(split, 0) == limit:
            continue
        per_split[split] = per_split.get(split, 0) + 1
        yield split, item


def split_rows(path: Path, only_split: str | None, limit: int | None,
               file_split: str | None = None) -> Iterator[tuple[str, tuple[int, dict | Skip]]]:
    """(split, (row number, row or Skip)) of a table whose rows may name their split (default "train");
    file_split puts the whole file in one split. A row with a bad split comes out as its Skip."""
    def rows():
        for number, row in read_rows(path):
            if isinstance(row, Skip):
                yield file_split or DEFAULT_SPLIT, (number, row)
                continue
            split, problem = row_split(row, file_split)
            if problem:
                record_id = str(row.get("id") or f"row{number}")
                row = Skip(record_id, problem, row_source(path, number), "split")
            yield split, (number, row)
    return select_splits(rows(), only_split, limit)
