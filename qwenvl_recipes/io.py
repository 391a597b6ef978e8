"""File I/O at the edges, for every part: atomic writes (files and folders), checksums, and JSON / JSONL
reading whose every failure is one InputError line naming the file (and line)."""
from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import math
import os
import re
import shutil
import socket
import sys
import tempfile
from pathlib import Path


class InputError(ValueError):
    """A problem with a whole input file or folder (unreadable, truncated, wrong encoding, wrong type):
    nothing can be done with it. The message is one line: '<path>: <cause>'. A ValueError, so every
    command's user-error handling (one line, no traceback) takes it."""


# ---- writing: temp file next to the target + os.replace, so a reader never sees half a file ------------


def named(error: OSError, path: str | os.PathLike) -> OSError:
    """`error` naming `path` when it names no file: a failed write (disk full, quota) says only its cause."""
    if error.filename is None:
        error.filename = str(path)
    return error


# mkstemp's names for atomic_open's temp files: what a killed writer leaves behind
TEMP_FILE = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")


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
    except BaseException as error:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(error, OSError):
            named(error, path)
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


# ---- names that become paths ------------------------------------------------------------------------------

# A name that becomes one component of a path: no separator, not "." or "..", not hidden, not an option.
PLAIN_NAME = re.compile(r"\w[\w.+-]*")
MAX_NAME_BYTES = 100


def name_problem(name: object) -> str | None:
    """Why `name` (a dataset name, a split from the data) cannot be one component of a file name; None when it
    can. Such names are joined to an output folder, so a '../x' or 'a/b' would write elsewhere."""
    if not isinstance(name, str):
        return f"must be a string, got {type(name).__name__}"
    if not PLAIN_NAME.fullmatch(name):
        return "is not a plain name (letters, digits, _ . + -, starting with a letter, digit or _)"
    if len(name.encode()) > MAX_NAME_BYTES:
        return f"is longer than {MAX_NAME_BYTES} bytes"
    return None


# ---- folders replaced in one step ------------------------------------------------------------------------

_AT_FDCWD, _RENAME_EXCHANGE = -100, 2
_LIBC = ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> None:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); OSError where unsupported."""
    renameat2 = getattr(_LIBC, "renameat2", None)
    if renameat2 is None:
        raise OSError(errno.ENOSYS, "renameat2 is not available", str(a))
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), str(a), None, str(b))


def _link_or_copy(source: str, destination: str) -> None:
    """A hard link (no data copied); a copy where the filesystem or fs.protected_hardlinks refuses links."""
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)


def _temp_files(directory: str, names: list[str]) -> set[str]:
    return {name for name in names if TEMP_FILE.fullmatch(name)}


@contextlib.contextmanager
def held_lock(path: Path, guarded: str | os.PathLike, writer: str, *, wait: bool):
    """Hold an exclusive lock on the file `path` (created) for the block: one `writer` of `guarded` at a time.
    The lock is the kernel's (flock), so a writer that died, however it died, holds nothing and its leftover file
    is taken over. When another process holds it, `wait` waits (saying so once on stderr), else an InputError
    names the holder. The file holds the holder's process id and host, and is removed before release, so a
    writer that locked a removed file locks the new one instead."""
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "a process starting"
                if not wait:
                    raise InputError(f"{guarded}: another {writer} ({holder}) is writing into it (lock file "
                                     f"{path}); wait for it to end, or stop it") from None
                if not told:
                    print(f"{guarded}: another {writer} ({holder}) is writing into it; waiting until it is done "
                          f"(lock file {path})",
                          file=sys.stderr, flush=True)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                locked = os.path.samestat(os.stat(path), os.fstat(fd))
            except FileNotFoundError:
                locked = False
        except BaseException:
            os.close(fd)
            raise
        if locked:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


LOCK_FILE = ".lock"


def folder_lock(folder: str | os.PathLike, writer: str):
    """`held_lock` on `folder/.lock`, refusing a second writer: one run per output folder (eval run)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return held_lock(folder / LOCK_FILE, folder, writer, wait=False)


class FolderUpdate:
    """Replace the folder `target` in one step, or leave it as it was.

    Entering takes the folder's lock (`.<name>.lock` beside it: one writer at a time, the next one waits),
    finishes what a killed writer left beside it, and makes `staging`, a sibling folder holding the target's
    current files as hard links (keep=True; no data is copied) or nothing. The caller writes its files into
    staging; commit() then swaps staging and target in one rename (Linux renameat2 RENAME_EXCHANGE, so a
    reader sees the old folder or the new one, never a mix) and removes the old one. Where the exchange is
    not supported (other systems, some network filesystems) two renames do it, and a writer killed between
    them leaves the previous folder beside the target, which the next writer puts back. Leaving without
    commit() removes staging: the target is untouched. An OSError naming a file in staging is told by the
    file's place in the target (what the user knows)."""

    def __init__(self, target: str | os.PathLike, keep: bool = True):
        self.shown = Path(target)
        self.target = Path(os.path.realpath(target))  # a symlinked folder is updated where it lives
        self.keep = keep
        self.committed = False
        self.staging: Path | None = None
        self._lock_path = self.target.parent / f".{self.target.name}.lock"
        self._lock = None

    def __enter__(self) -> "FolderUpdate":
        if self.target.exists() and not self.target.is_dir():
            raise InputError(f"{self.shown}: not a folder")
        if os.path.ismount(self.target):
            raise InputError(f"{self.shown}: is a mount point, which cannot be replaced by a rename; use a folder "
                             "inside it")
        here = os.path.realpath(os.getcwd())
        if here == str(self.target) or here.startswith(str(self.target) + os.sep):
            raise InputError(f"{self.shown}: is the current folder or holds it; the folder is replaced as a whole, "
                             "which would leave this shell in a removed folder: run from outside it")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self._lock = held_lock(self._lock_path, self.shown, "converter run", wait=True)
        self._lock.__enter__()
        try:
            self._finish_interrupted()
            self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.staging-", dir=self.target.parent))
            if self.keep and self.target.is_dir():
                shutil.copytree(self.target, self.staging, symlinks=True, ignore=_temp_files,
                                copy_function=_link_or_copy, dirs_exist_ok=True)
            else:
                umask = os.umask(0)
                os.umask(umask)
                os.chmod(self.staging, 0o777 & ~umask)  # what mkdir makes (mkdtemp's is private)
        except BaseException as error:
            self.__exit__(type(error), error, None)
            raise
        return self

    def _leftovers(self) -> list[Path]:
        """What killed writers of this target left beside it: staging folders, previous folders."""
        pattern = re.compile(rf"\.{re.escape(self.target.name)}\.(staging|old)-[a-z0-9_]{{8}}")
        return sorted(self.target.parent / name for name in os.listdir(self.target.parent) if pattern.fullmatch(name))

    def _finish_interrupted(self) -> None:
        leftovers = self._leftovers()
        previous = [path for path in leftovers if ".old-" in path.name]
        if previous and not self.target.exists():  # cut between the two renames: the previous folder goes back
            os.rename(previous[0], self.target)
            leftovers.remove(previous[0])
        for path in leftovers:
            shutil.rmtree(path)

    def commit(self) -> None:
        """Put staging in the target's place (the caller has written everything into it)."""
        replaced = None
        if not self.target.exists():
            os.rename(self.staging, self.target)
        else:
            try:
                _exchange(self.staging, self.target)
                replaced = self.staging
            except OSError as error:
                if error.errno not in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):
                    raise
                replaced = self.staging.with_name(self.staging.name.replace(".staging-", ".old-", 1))
                os.rename(self.target, replaced)
                os.rename(self.staging, self.target)
        self.committed = True
        if replaced is not None:
            shutil.rmtree(replaced, ignore_errors=True)  # a leftover is removed by the next writer

    def __exit__(self, kind, error, traceback) -> bool:
        try:
            if self.staging is not None and not self.committed:
                shutil.rmtree(self.staging, ignore_errors=True)
        finally:
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None
        if isinstance(error, OSError) and self.staging is not None:
            self._name_in_target(error)
        return False

    def _name_in_target(self, error: OSError) -> None:
        staging = str(self.staging)
        for attribute in ("filename", "filename2"):
            name = getattr(error, attribute)
            if isinstance(name, str) and (name == staging or name.startswith(staging + os.sep)):
                setattr(error, attribute, str(self.shown) + name[len(staging):])


@contextlib.contextmanager
def staged_dir(target: str | os.PathLike):
    """Yield an empty staging folder beside `target`; on success it replaces `target` in one step
    (FolderUpdate), on error it is removed and `target` stays as it was."""
    with FolderUpdate(target, keep=False) as update:
        yield update.staging
        update.commit()


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
