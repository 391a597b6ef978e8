"""Images on disk for the converters: sizes from the headers, paths resolved against the data root (and kept
inside it, symlinks followed), folder listings read once, content-addressed and resized copies written into
the output being staged."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from converters.schema import SkipRecord
from qwenvl_recipes.io import InputError, atomic_open


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
    A path that leaves `images_dir` (the data root: `../..`, an absolute path elsewhere when the root
    was given, or a symlink in the root that points elsewhere) is skipped unless allowed
    (allow_outside_root): a list file must not make the output point anywhere on the disk by accident.
    The path is returned as named (symlinks kept); only the check follows them.
    String operations and cached folder listings only: this runs once per record on inputs of 400k+ records.
    """
    if not isinstance(name, str) or not name:
        raise SkipRecord(f"image path must be a non-empty string, got {name!r}", field)
    if images_dir is None or (_OUTSIDE_ROOT["absolute"] and os.path.isabs(name)):
        return os.path.abspath(name)
    root = os.path.abspath(images_dir)
    path = os.path.abspath(os.path.join(root, name))
    if not _OUTSIDE_ROOT["allowed"] and not _inside(path, root):
        raise SkipRecord(f"path {name!r} resolves to {path}, outside the data root {root} "
                         "(pass --allow-outside-root to accept it)", field)
    inside_root(root, path, field)
    return path


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def inside_root(root: str, path: str, field: str) -> None:
    """Skip `path` (under `root` as written) when a symlink on the way takes it out of the root, as `../` would."""
    if _OUTSIDE_ROOT["allowed"]:
        return
    real, real_root = _real_path(path), _real_folder(root)
    if not _inside(real, real_root):
        raise SkipRecord(f"path {path} leads through a symlink to {real}, outside the data root {real_root} "
                         "(pass --allow-outside-root to accept it)", field)


@functools.lru_cache(maxsize=256)
def _real_folder(directory: str) -> str:
    return os.path.realpath(directory)


def _real_path(path: str) -> str:
    """os.path.realpath(path), with the folder's resolved once and the file itself only when it is a symlink."""
    directory, name = os.path.split(path)
    listing = _listing(directory)
    if listing is not None and name in listing[1]:
        return os.path.realpath(path)
    return os.path.join(_real_folder(directory), name)


@functools.lru_cache(maxsize=256)
def _listing(directory: str) -> tuple[frozenset[str], frozenset[str]] | None:
    """(names of the files, names of the symlinks) in a directory, listed once: one readdir instead of a stat
    per image (a stat costs ~20 us on network/overlay filesystems, 80k of them dominate a COCO conversion).
    None when the directory does not exist."""
    try:
        with os.scandir(directory) as entries:
            entries = list(entries)
    except OSError:  # missing, not a directory, unreadable, a symlink loop: no image is found in it
        return None
    return (frozenset(entry.name for entry in entries if _is_file_entry(entry)),
            frozenset(entry.name for entry in entries if entry.is_symlink()))


def _is_file_entry(entry: os.DirEntry) -> bool:
    try:
        return entry.is_file()
    except OSError:  # a symlink loop (ELOOP) in the folder: that one name is not a file
        return False


def reset_listings() -> None:
    """Forget directory listings and resolved folders; called at the start of every conversion."""
    _listing.cache_clear()
    _real_folder.cache_clear()


def is_file(path: str) -> bool:
    directory, name = os.path.split(path)
    listing = _listing(directory)
    return listing is not None and name in listing[0]


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
        root = os.path.abspath(images_dir)
        path = os.path.join(root, folder.group(1), os.path.basename(name))
        if is_file(path):
            inside_root(root, path, field)
            return path
    return existing_image(images_dir, name, field)


COCO_FOLDERS_HINT = " (for COCO file names, the folder holding them or holding their train2014/, val2014/ folder)"


class ImageFolderProbe:
    """Turns "every image is missing" into one error naming the folder, instead of N skipped records.

    Layouts that keep images elsewhere (COCO json, refer, parquet without bytes, list files) resolve names against
    --images, defaulting to the input's folder; when the first `first` look-ups (or all of them, for a
    smaller input) find nothing, the folder is wrong, not the records. `hint` ends the advice (where such a
    layout keeps its images)."""

    def __init__(self, source: Path | str, images_dir: Path | str | None, first: int = 20,
                 hint: str = COCO_FOLDERS_HINT):
        self.source, self.images_dir, self.first, self.hint = source, images_dir, first, hint
        self.found = self.missed = 0
        self.example = self.example_name = ""

    def look(self, find, images_dir, name, *rest):
        """find(images_dir, name, *rest) -> its result; counts a missing-image skip, and fails the run as
        described."""
        try:
            result = find(images_dir, name, *rest)
        except SkipRecord as skip:
            if skip.reason.startswith("missing image"):
                self.missed += 1
                if not self.example:
                    self.example, self.example_name = skip.reason[len("missing image "):], name
                if self.missed >= self.first and not self.found:
                    self.fail()
            raise
        self.found += 1
        return result

    def finish(self) -> None:
        if self.missed and not self.found:
            self.fail()

    def fail(self):
        root = os.path.abspath(self.images_dir) if self.images_dir is not None else None
        holder = _folder_above_holding(root, self.example_name) if root else None
        advice = (f"pass --images {holder}, from which the names resolve" if holder
                  else f"pass --images with the folder that holds them{self.hint}")
        raise InputError(
            f"{self.source}: none of the first {self.missed} image(s) it names is in "
            f"{root or 'the paths it gives'} (e.g. {self.example}); {advice}")


def _folder_above_holding(root: str, name: str, levels: int = 3) -> str | None:
    """The nearest folder above `root` (up to `levels`) holding the relative path `name`: a list file kept
    inside the folder its paths already start with (trainingset2/list.json naming trainingset2/a.jpg)."""
    if not isinstance(name, str) or not name or os.path.isabs(name):
        return None
    for folder in list(Path(root).parents)[:levels]:
        if os.path.isfile(os.path.join(folder, name)):
            return str(folder)
    return None


# While a conversion runs, the files it makes under its output folder go into the staging folder that takes
# the output's place when the run commits (qwenvl_recipes.io.FolderUpdate).
_STAGED: dict[str, str] = {}


@contextlib.contextmanager
def writing_into(out: Path, staging: Path):
    """Files store_image_bytes and resized_copy make under `out` are written into `staging` meanwhile; the rows
    name them by their place in `out`, where they are once the run commits."""
    _STAGED.update(out=os.path.abspath(out), staging=str(staging))
    try:
        yield
    finally:
        _STAGED.clear()


def _staged(path: str) -> Path:
    """Where a file of the output named `path` is written (and looked for) now."""
    out = _STAGED.get("out")
    if out is not None and _inside(path, out):
        return Path(_STAGED["staging"] + path[len(out):])
    return Path(path)


def store_image_bytes(data: bytes, images_out: Path, field: str = "image") -> tuple[str, tuple[int, int]]:
    """Write embedded image bytes once, named by content hash; return (absolute path, (w, h))."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            size, fmt = image.size, (image.format or "png").lower()
    except (UnidentifiedImageError, OSError) as error:
        raise SkipRecord(f"unreadable embedded image: {error}", field) from None
    ext = {"jpeg": "jpg"}.get(fmt, fmt)
    path = os.path.abspath(images_out / f"{hashlib.sha256(data).hexdigest()}.{ext}")
    written = _staged(path)
    if not written.exists():
        with atomic_open(written, "wb") as f:
            f.write(data)
    return path, size


def resized_copy(source: str, size: tuple[int, int], images_out: Path, images_root: Path | None) -> str:
    """A resized copy of `source` under `images_out`, mirroring its path below `images_root`; made once."""
    root = os.path.abspath(images_root) if images_root else os.path.dirname(source)
    relative = os.path.relpath(source, root)
    if relative.startswith(".."):
        relative = hashlib.sha256(source.encode()).hexdigest()[:16] + "_" + os.path.basename(source)
    stem, ext = os.path.splitext(relative)
    target = os.path.abspath(images_out / f"{stem}_{size[0]}x{size[1]}{ext or '.png'}")
    written = _staged(target)
    if not written.exists():
        try:
            with Image.open(source) as image:
                resized = image.convert("RGB").resize(size, Image.BICUBIC)
        except (UnidentifiedImageError, OSError) as error:
            raise SkipRecord(f"unreadable image {source}: {error}", "image") from None
        buffer = io.BytesIO()
        resized.save(buffer, format="PNG" if ext.lower() == ".png" else "JPEG", quality=95)
        with atomic_open(written, "wb") as f:
            f.write(buffer.getvalue())
    return target
