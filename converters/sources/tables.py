"""Reading tabular inputs (JSON list, JSON lines, CSV) as dict rows, streamed where the format allows.

A file that cannot be read as a whole (missing, a directory, not UTF-8, truncated JSON, a top level
that is not a list) raises InputError naming it; one bad row (a JSONL line that is not JSON or not an
object) becomes a `Skip` naming its line, and the rest of the file is still read."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, TypeVar

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


def is_text_table(path: Path) -> bool:
    """Whether every cell of the table is text (CSV, numbers included); JSON and JSONL rows carry typed values."""
    return Path(path).suffix.lower() == ".csv"


def number_cell(value: object, text_table: bool) -> object:
    """A number written in a CSV cell, as that number; any other value as it is, so that a JSON string where a
    number belongs ("3") stays a string and the field's own parser refuses it (numbers are strictly typed)."""
    if not (text_table and isinstance(value, str)):
        return value
    for number_type in (int, float):
        try:
            return number_type(value)
        except ValueError:
            continue
    return value


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


# Split names a file's own name may carry (refcoco parquet files, a user's test.jsonl), and those held out for
# testing: records of a test split must not become training data.
SPLIT_NAMES = ("train", "validation", "val", "testA", "testB", "test")
TEST_SPLITS = ("test", "testA", "testB")


def split_named_by(path: Path) -> str | None:
    """The split a file's name names as a whole word (`validation` read as `val`), or None."""
    for name in SPLIT_NAMES:
        if re.search(rf"(^|[^a-zA-Z]){name}([^a-zA-Z]|$)", Path(path).stem):
            return "val" if name == "validation" else name
    return None


@dataclass(frozen=True)
class SplitRule:
    """Where the records whose input names no split go: all to `file_split` (--split-of-file), or a seeded
    `val_fraction` of them to val and the rest to train (--val-fraction, --seed), else all to train.

    A record's place depends only on the seed and its key (what the reader groups by, e.g. its images, so that
    rows sharing them share a split), never on the order of the input or on --workers; records naming their own
    split keep it."""

    file_split: str | None = None
    val_fraction: float = 0.0
    seed: int = 0

    @classmethod
    def of(cls, args) -> "SplitRule":
        """The rule the command line asks for (converters.options.add_split_options)."""
        return cls(args.split_of_file, args.val_fraction or 0.0, args.seed)

    def split_for(self, key: str) -> str:
        if self.file_split:
            return self.file_split
        if self.val_fraction:
            digest = hashlib.sha256(f"{self.seed}\0{key}".encode()).digest()
            if int.from_bytes(digest[:8], "big") / 2 ** 64 < self.val_fraction:
                return "val"
        return DEFAULT_SPLIT


def row_split(row: dict, rule: SplitRule = SplitRule(),
              key: Callable[[dict], str] | None = None) -> tuple[str, str | None]:
    """(split, problem): the row's own `split`, or where `rule` puts a row without one (absent, null or an empty
    cell). A split that is not a string (a number, a list) is a problem, not a split named "5": the row is then
    skipped under the rule's split. With --split-of-file, a row naming another split is a problem too (the file
    says one thing, the row another): in particular, rows marked test never become training data that way."""
    value = row.get("split")
    if value is None or value == "":
        return rule.split_for((key or row_content)(row) if rule.val_fraction else ""), None
    if not isinstance(value, str) or not value.strip():
        return rule.file_split or DEFAULT_SPLIT, f"split must be a name, got {value!r}"
    if rule.file_split and value != rule.file_split:
        return rule.file_split, f"row's split {value!r} differs from --split-of-file {rule.file_split!r}"
    return value, None


def warn_test_file_trains(path: Path) -> None:
    """One warning for a file named like a test split whose rows, naming no split, are written as training
    data (test.jsonl converted without --split-of-file test)."""
    named = split_named_by(path)
    if named in TEST_SPLITS:
        print(f"warning: {path}: its name says {named!r} but its rows name no split, so they are written as "
              f"training data; pass --split-of-file {named} to convert it for evaluation", file=sys.stderr)


def select_splits(items: Iterable[tuple[str, T]], only_split: str | None, limit: int | None) -> Iterator[tuple[str, T]]:
    """Keep items of `only_split` (all when None), at most `limit` per split."""
    per_split: dict[str, int] = {}
    for split, item in items:
        if (only_split is not None and split != only_split) or per_split.get(split, 0) == limit:
            continue
        per_split[split] = per_split.get(split, 0) + 1
        yield split, item


def row_content(row: dict) -> str:
    """A row's whole content as one string: the split key of rows with nothing better to group by."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False, default=str)


def rows_with_splits(path: Path, rule: SplitRule = SplitRule(), key: Callable[[dict], str] | None = None,
                     warn: bool = True) -> Iterator[tuple[str, tuple[int, dict | Skip]]]:
    """(split, (row number, row or Skip)) of every row of a table whose rows may name their split; `rule` places
    those that name none, by `key(row)` (default: the row's content). A row with a bad split comes out as its
    Skip. `warn`: when rows are written to train, warn once if the file's name says it is a test split."""
    warned = rule.file_split is not None or not warn
    for number, row in read_rows(path):
        if isinstance(row, Skip):
            yield rule.file_split or DEFAULT_SPLIT, (number, row)
            continue
        split, problem = row_split(row, rule, key)
        if not warned and split == DEFAULT_SPLIT and row.get("split") in (None, ""):
            warned = True
            warn_test_file_trains(path)
        if problem:
            record_id = str(row.get("id") or f"row{number}")
            row = Skip(record_id, problem, row_source(path, number), "split")
        yield split, (number, row)


def split_rows(path: Path, only_split: str | None, limit: int | None, rule: SplitRule = SplitRule(),
               key: Callable[[dict], str] | None = None) -> Iterator[tuple[str, tuple[int, dict | Skip]]]:
    """rows_with_splits of `only_split` (all when None), at most `limit` per split."""
    rows = rows_with_splits(path, rule, key, warn=only_split in (None, DEFAULT_SPLIT))
    return select_splits(rows, only_split, limit)
