"""File I/O at the edges, for every part: atomic writes (files and folders), checksums, and JSON / JSONL
reading whose every failure is one InputError line naming the file (and line)."""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path


class InputError(ValueError):
    """A problem with a whole input file or folder (unreadable, truncated, wrong encoding, wrong type):
    nothing can be done with it. The message is one line: '<path>: <cause>'. A ValueError, so every
    command's user-error handling (one line, no traceback) takes it."""


# ---- writing: temp file next to the target + os.replace, so a reader never sees half a file ------------


@contextlib.contextmanager
def atomic_open(path: Path, mode: str = "w"):
    """Write to a temp file next to `path` and os.replace it in place only when the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else "utf-8", newline=None if "b" in mode else "\n") as f:
            yield f
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


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


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike):
    """Yield an empty staging folder beside `target`; on success it replaces `target`, on error it is removed."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        yield staging
        shutil.rmtree(target, ignore_errors=True)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ---- reading: every failure becomes one InputError line naming the file ---------------------------------


def os_error_cause(error: OSError) -> str:
    """One line saying why a path could not be read."""
    if isinstance(error, IsADirectoryError):
        return "is a directory, expected a file"
    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, PermissionError):
        return "permission denied"
    if error.errno == errno.ELOOP:
        return "symlink loop (too many levels of symbolic links)"
    return error.strerror or str(error)


def decode_cause(error: UnicodeDecodeError) -> str:
    return (f"not UTF-8 text (byte 0x{error.object[error.start]:02x} at offset {error.start}); "
            "save it as UTF-8")


def read_input_bytes(path: Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise InputError(f"{path}: {os_error_cause(error)}") from error


def read_input_text(path: Path) -> str:
    data = read_input_bytes(path)
    try:
        return data.decode("utf-8-sig")  # a BOM (Windows editors) is not part of the JSON
    except UnicodeDecodeError as error:
        raise InputError(f"{path}: {decode_cause(error)}") from error


def json_cause(error: json.JSONDecodeError, text: str) -> str:
    if not text.strip():
        return "empty file, expected JSON"
    where = f"line {error.lineno} column {error.colno}"
    if error.pos >= len(text.rstrip()):
        return f"truncated JSON (the text ends inside a value at {where})"
    return f"invalid JSON at {where}: {error.msg}"


def read_json(path: Path, expect: type | tuple[type, ...] | None = None, what: str = "JSON"):
    """The parsed content of a JSON file; `expect` is the top-level type it must have."""
    text = read_input_text(path)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise InputError(f"{path}: {json_cause(error, text)}") from error
    if expect is not None and not isinstance(data, expect):
        names = " or ".join(t.__name__ for t in (expect if isinstance(expect, tuple) else (expect,)))
        raise InputError(f"{path}: expected {what} with a top-level {names}, got {type(data).__name__}")
    return data


def read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSONL file (blank lines ignored); a bad line is an InputError naming file and line."""
    rows = []
    for number, line in enumerate(read_input_text(path).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{number}: not valid JSON ({e})") from e
        if not isinstance(row, dict):
            raise InputError(f"{path}:{number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows
