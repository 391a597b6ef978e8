"""Sample -> trainer rows, dataset_info.json entries, and streaming writers for both file kinds.

LLaMA-Factory reads `<name>_<split>.json` (sharegpt list) through dataset_info.json and only the
columns named there, so extra task keys (forgery `label`, `mask`) ride along untouched. ms-swift reads
`<name>_<split>.jsonl` rows with the same `messages`/`images` keys; it keeps only its standard keys
(`label` is one of them, `mask` is dropped unless a plugin preprocessor keeps it).
"""
from __future__ import annotations

import json
from pathlib import Path

from converters.schema import Sample
from qwenvl_recipes.io import atomic_open, named

# target -> (file suffix, resize path the trainer feeds the model through; see converters.geometry)
TARGETS = {"llamafactory": (".json", "llamafactory"), "swift": (".jsonl", "swift")}

SHAREGPT_TAGS = {"role_tag": "role", "content_tag": "content", "user_tag": "user",
                 "assistant_tag": "assistant", "system_tag": "system"}


def sample_row(sample: Sample) -> dict:
    """The row both trainers read: messages + images (+ task extras)."""
    row = {"messages": [{"role": t.role, "content": t.content} for t in sample.turns],
           "images": list(sample.images)}
    row.update(sample.extra)
    return row


_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)  # built once: json.dumps(**kw) rebuilds it


def encode_row(sample: Sample) -> str:
    return _ENCODER.encode(sample_row(sample))


def dataset_info_entry(file_name: str) -> dict:
    return {"file_name": file_name, "formatting": "sharegpt",
            "columns": {"messages": "messages", "images": "images"}, "tags": dict(SHAREGPT_TAGS)}


class RowWriter:
    """Streams encoded rows into one output file, atomically: a JSON list (.json) or JSON lines (.jsonl)."""

    def __init__(self, path: Path):
        self.path = path
        self.as_list = path.suffix == ".json"
        self._context = atomic_open(path)
        self._file = self._context.__enter__()
        self._separator = "[\n" if self.as_list else ""
        self._end = "" if self.as_list else "\n"
        self.count = 0

    def write(self, line: str) -> None:
        try:
            self._file.write(self._separator + line + self._end)
        except OSError as error:  # disk full: say which file
            raise named(error, self.path)
        if self.as_list:
            self._separator = ",\n"
        self.count += 1

    def commit(self) -> None:
        if self.as_list:
            try:
                self._file.write("[]\n" if self.count == 0 else "\n]\n")
            except OSError as error:
                raise named(error, self.path)
        self._context.__exit__(None, None, None)

    def abort(self) -> None:
        error = RuntimeError("conversion aborted")
        try:
            self._context.__exit__(RuntimeError, error, None)
        except RuntimeError:
            pass
