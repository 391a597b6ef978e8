"""File I/O at the edges: atomic writes (files and folders), checksums, image headers, content-addressed image
copies."""
from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import io
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from converters.schema import InputError, SkipRecord


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


# ---- reading input files: every failure becomes one InputError line naming the file ------------------


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


def load_json_file(path: Path, expect: type | tuple[type, ...] | None = None, what: str = "JSON"):
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


# ---- images -------------------------------------------------------------------------------------------


def image_size(path: str, field: str = "image", expected: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) from the image header (PIL opens lazily; no pixels are decoded). Opening it is what
    proves the file is an image: a text file named .jpg is skipped here. `expected` is the size the source
    claims (COCO/refer json); a file of another size is skipped, as its boxes would be misplaced."""
    try:
        with Image.open(path) as image:
            size = image.size
    except FileNotFoundError:
        raise SkipRecord(f"missing image {path}", field) from None
    except (UnidentifiedImageError, OSError) as error:
        raise SkipRecord(f"unreadable image {path}: {error}", field) from None
    if expected is not None and tuple(expected) != tuple(size):
        raise SkipRecord(f"image {path} is {size[0]}x{size[1]} but the source says {expected[0]}x{expected[1]}",
                         field)
    return size


def claimed_size(width: object, height: object) -> tuple[int, int] | None:
    """A (width, height) a source states, when both are positive integers (else None: read the header)."""
    if all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in (width, height)):
        return width, height
    return None


_OUTSIDE_ROOT = {"allowed": False, "absolute": False}


def allow_outside_root(allowed: bool, absolute: bool = False) -> None:
    """Set once per conversion: `allowed` (--allow-outside-root) accepts every record path that leaves the
    data root; `absolute` accepts absolute paths anywhere (when the root is only the default guess, the
    input's folder, an absolute path names its own place; relative paths must still stay inside)."""
    _OUTSIDE_ROOT["allowed"], _OUTSIDE_ROOT["absolute"] = allowed, absolute


def resolve_image(images_dir: Path | str | None, name: str, field: str = "image") -> str:
    """Absolute path of an image named relative to `images_dir` (or already absolute).

    Absolute paths because the trainers disagree on relative ones: LLaMA-Factory joins them to
    media_dir (default: dataset_dir), ms-swift to the working directory (or ROOT_IMAGE_DIR).
    A path that leaves `images_dir` (the data root: `../..`, or an absolute path elsewhere when the root
    was given) is skipped unless allowed (allow_outside_root): a list file must not make the output point
    anywhere on the disk by accident.
    String operations only: this runs once per record on inputs of 400k+ records.
    """
    if not isinstance(name, str) or not name:
        raise SkipRecord(f"image path must be a non-empty string, got {name!r}", field)
    if images_dir is None or (_OUTSIDE_ROOT["absolute"] and os.path.isabs(name)):
        return os.path.abspath(name)
    root = os.path.abspath(images_dir)
    path = os.path.abspath(os.path.join(root, name))
    if not _OUTSIDE_ROOT["allowed"] and not (path == root or path.startswith(root.rstrip(os.sep) + os.sep)):
        raise SkipRecord(f"path {name!r} resolves to {path}, outside the data root {root} "
                         "(pass --allow-outside-root to accept it)", field)
    return path


@functools.lru_cache(maxsize=256)
def _files_in(directory: str) -> frozenset[str] | None:
    """Names of the files in a directory, listed once: one readdir instead of a stat per image (a stat
    costs ~20 us on network/overlay filesystems, 80k of them dominate a COCO conversion). None when the
    directory does not exist."""
    try:
        with os.scandir(directory) as entries:
            return frozenset(entry.name for entry in entries if _is_file_entry(entry))
    except OSError:  # missing, not a directory, unreadable, a symlink loop: no image is found in it
        return None


def _is_file_entry(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symlink loop (ELOOP) in the folder: that one name is not a file
        return False


def reset_listings() -> None:
    """Forget directory listings; called at the start of every conversion."""
    _files_in.cache_clear()


def is_file(path: str) -> bool:
    directory, name = os.path.split(path)
    names = _files_in(directory)
    return names is not None and name in names


def existing_image(images_dir: Path | str | None, name: str, field: str = "image") -> str:
    path = resolve_image(images_dir, name, field)
    if not is_file(path):
        raise SkipRecord(f"missing image {path}", field)
    return path


_COCO_FOLDER = re.compile(r"COCO_([a-z]+\d{4})_")


def find_coco_image(images_dir: Path | str | None, name: str, field: str = "image") -> str:
    """<images>/<split folder the name implies>/<name> (COCO_train2014_... in train2014/) when that folder
    exists, else <images>/<name>."""
    if not isinstance(name, str) or not name:
        raise SkipRecord(f"image path must be a non-empty string, got {name!r}", field)
    folder = _COCO_FOLDER.match(os.path.basename(name)) if images_dir is not None else None
    if folder is not None:
        path = os.path.join(os.path.abspath(images_dir), folder.group(1), os.path.basename(name))
        if is_file(path):
            return path
    return existing_image(images_dir, name, field)


class ImageFolderProbe:
    """Turns "every image is missing" into one error naming the folder, instead of N skipped records.

    Layouts that keep images elsewhere (COCO json, refer, parquet without bytes) resolve names against
    --images, defaulting to the input's folder; when the first `first` look-ups (or all of them, for a
    smaller input) find nothing, the folder is wrong, not the records."""

    def __init__(self, source: Path | str, images_dir: Path | str | None, first: int = 20):
        self.source, self.images_dir, self.first = source, images_dir, first
        self.found = self.missed = 0
        self.example = ""

    def look(self, find, *args):
        """find(*args) -> its result; counts a missing-image skip, and fails the run as described."""
        try:
            result = find(*args)
        except SkipRecord as skip:
            if skip.reason.startswith("missing image"):
                self.missed += 1
                self.example = self.example or skip.reason[len("missing image "):]
                if self.missed >= self.first and not self.found:
                    self.fail()
            raise
        self.found += 1
        return result

    def finish(self) -> None:
        if self.missed and not self.found:
            self.fail()

    def fail(self):
        raise InputError(
            f"{self.source}: none of the first {self.missed} image(s) it names is in "
            f"{os.path.abspath(self.images_dir) if self.images_dir is not None else 'the paths it gives'} "
            f"(e.g. {self.example}); pass --images with the folder that holds them (for COCO file names, the "
            "folder holding them or holding their train2014/, val2014/ folder)")


def store_image_bytes(data: bytes, images_out: Path, field: str = "image") -> tuple[str, tuple[int, int]]:
    """Write embedded image bytes once, named by content hash; return (absolute path, (w, h))."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size, fmt = image.size, (image.format or "png").lower()
    except (UnidentifiedImageError, OSError) as error:
        raise SkipRecord(f"unreadable embedded image: {error}", field) from None
    ext = {"jpeg": "jpg"}.get(fmt, fmt)
    path = images_out / f"{hashlib.sha256(data).hexdigest()}.{ext}"
    if not path.exists():
        with atomic_open(path, "wb") as f:
            f.write(data)
    return os.path.abspath(path), size


def resized_copy(source: str, size: tuple[int, int], images_out: Path, images_root: Path | None) -> str:
    """A resized copy of `source` under `images_out`, mirroring its path below `images_root`; made once."""
    root = os.path.abspath(images_root) if images_root else os.path.dirname(source)
    relative = os.path.relpath(source, root)
    if relative.startswith(".."):
        relative = hashlib.sha256(source.encode()).hexdigest()[:16] + "_" + os.path.basename(source)
    stem, ext = os.path.splitext(relative)
    target = images_out / f"{stem}_{size[0]}x{size[1]}{ext or '.png'}"
    if not target.exists():
        try:
            with Image.open(source) as image:
                resized = image.convert("RGB").resize(size, Image.BICUBIC)
        except (UnidentifiedImageError, OSError) as error:
            raise SkipRecord(f"unreadable image {source}: {error}", "image") from None
        buffer = io.BytesIO()
        resized.save(buffer, format="PNG" if ext.lower() == ".png" else "JPEG", quality=95)
        with atomic_open(target, "wb") as f:
            f.write(buffer.getvalue())
    return os.path.abspath(target)
