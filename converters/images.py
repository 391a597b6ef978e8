"""Images on disk for the converters: sizes from the headers, paths resolved against the data root (and kept
inside it, symlinks followed), folder listings read once, content-addressed, resized and 8-bit copies written
into the output being staged, and the checks that an image (or a forgery mask) reads the way the trainers will
read it."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import os
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, UnidentifiedImageError

from converters.schema import SkipRecord
from qwenvl_recipes.io import InputError, atomic_open

# PIL's guard against decompression bombs: a warning past Image.MAX_IMAGE_PIXELS, an error past twice that.
# Both trainers would still load a warned image whole (gigabytes of pixels to resize to a few hundred
# tokens), so either is a skip here.
_BOMB = (Image.DecompressionBombError, Image.DecompressionBombWarning)


@contextlib.contextmanager
def _open(source):
    """Image.open with PIL's decompression-bomb warning raised as an error (here only, not process-wide)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(source) as image:
            yield image


def _bomb_reason(path: str, error: Exception) -> str:
    return f"image {path} is too large to decode safely: {error}"


@contextlib.contextmanager
def _opened(path: str, field: str, read_from: str | None = None):
    """The image `path` (read from `read_from` when it is not there yet), opened lazily; a file that is missing,
    not an image or a decompression bomb is a SkipRecord naming `path`."""
    try:
        with _open(read_from or path) as image:
            yield image
    except FileNotFoundError:
        raise SkipRecord(f"missing image {path}", field) from None
    except _BOMB as error:
        raise SkipRecord(_bomb_reason(path, error), field) from None
    except (UnidentifiedImageError, OSError) as error:
        raise SkipRecord(f"unreadable image {path}: {error}", field) from None


def image_size(path: str, field: str = "image", expected: tuple[int, int] | None = None) -> tuple[int, int]:
    """(width, height) from the image header (PIL opens lazily; no pixels are decoded). Opening it is what
    proves the file is an image: a text file named .jpg is skipped here, and so is a header announcing more
    pixels than PIL's decompression-bomb limit. `expected` is the size the source claims (COCO/refer json);
    a file of another size is skipped, as its boxes would be misplaced."""
    with _opened(path, field) as image:
        size = image.size
    _check_expected(path, size, expected, field)
    return size


def _check_expected(path: str, size: tuple[int, int], expected: tuple[int, int] | None, field: str) -> None:
    if expected is not None and tuple(expected) != tuple(size):
        raise SkipRecord(f"image {path} is {size[0]}x{size[1]} but the source says {expected[0]}x{expected[1]}",
                         field)


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
    """Forget what this process learnt of the disk (directory listings, resolved folders, images decoded) and
    reload the log of images that decoded in earlier runs; called at the start of every conversion, before its
    workers start."""
    _listing.cache_clear()
    _real_folder.cache_clear()
    _DECODED.clear()
    _LOG.clear()
    _decoded_log()


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


def store_image_bytes(data: bytes, images_out: Path, field: str = "image") -> TrainerImage:
    """Write embedded image bytes once, named by content hash; the stored file as the trainers will read it
    (trainer_image)."""
    try:
        with _open(io.BytesIO(data)) as image:
            fmt = (image.format or "png").lower()
    except _BOMB as error:
        raise SkipRecord(_bomb_reason("(embedded)", error), field) from None
    except (UnidentifiedImageError, OSError) as error:
        raise SkipRecord(f"unreadable embedded image: {error}", field) from None
    ext = {"jpeg": "jpg"}.get(fmt, fmt)
    path = os.path.abspath(images_out / f"{hashlib.sha256(data).hexdigest()}.{ext}")
    written = _staged(path)
    if not written.exists():
        with atomic_open(written, "wb") as f:
            f.write(data)
    return trainer_image(path, field, read_from=str(written))


def _mirrored_stem(source: str, images_root: Path | str | None) -> str:
    """`source`'s path below `images_root` without its extension (a hashed name when it lies outside): where
    copies of it go under an output images folder."""
    root = os.path.abspath(images_root) if images_root else os.path.dirname(source)
    relative = os.path.relpath(source, root)
    if relative.startswith(".."):
        relative = hashlib.sha256(source.encode()).hexdigest()[:16] + "_" + os.path.basename(source)
    return os.path.splitext(relative)[0]


def resized_copy(source: str, size: tuple[int, int], images_out: Path, images_root: Path | None) -> str:
    """A resized copy of `source` under `images_out`, mirroring its path below `images_root`; made once."""
    ext = os.path.splitext(source)[1]
    target = os.path.abspath(images_out / f"{_mirrored_stem(source, images_root)}_{size[0]}x{size[1]}{ext or '.png'}")
    written = _staged(target)
    if not written.exists():
        try:
            with _open(source) as image:
                resized = image.convert("RGB").resize(size, Image.BICUBIC)
        except _BOMB as error:
            raise SkipRecord(_bomb_reason(source, error), "image") from None
        except (UnidentifiedImageError, OSError) as error:
            raise SkipRecord(f"unreadable image {source}: {error}", "image") from None
        buffer = io.BytesIO()
        resized.save(buffer, format="PNG" if ext.lower() == ".png" else "JPEG", quality=95)
        with atomic_open(written, "wb") as f:
            f.write(buffer.getvalue())
    return target


# ---- images as the trainers read them: 8-bit RGB through PIL ----------------------------------------------
#
# Both trainers (and the Qwen processors) turn every image into RGB with PIL's convert("RGB"), which clips a
# 16-bit grayscale image (mode I;16, as microscopes write PNG and TIFF) at 255 -- a 12-bit frame turns almost
# white -- and truncates a float image (mode F) to 0/1. Such an image is converted here instead, once, to an
# 8-bit grayscale PNG scaled by the range its bits actually use (12-bit data in a 16-bit container by 4095),
# never by its own min/max, so two frames of one pair keep their relative brightness; the rows point at the
# copy and the manifest notes it. PIL reads a 16-bit colour PNG from the high byte of each sample only, and
# cannot give the low bytes: such an image is skipped, as is a float image whose values leave [0, 1].

HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
STANDARD_DEPTHS = (8, 10, 12, 14, 16)
_COPIES: dict = {"out": None, "root": None, "bit_depth": None}


def configure_copies(images_out: Path | None, images_root: Path | str | None, bit_depth: int | None = None) -> None:
    """Set once per conversion: where 8-bit copies go (`<out>/images`), the data root their names mirror, and
    the significant bits of every 16-bit image (--bit-depth; None: each image's own, see trainer_image)."""
    _COPIES.update(out=images_out, root=images_root, bit_depth=bit_depth)


def conversion_settings() -> dict:
    """What this conversion set in this process (allow_outside_root, writing_into, configure_copies, the log of
    decoded images): its worker processes start without it and take it over (adopt_conversion_settings)."""
    return {"outside_root": dict(_OUTSIDE_ROOT), "staged": dict(_STAGED), "copies": dict(_COPIES),
            "decoded_log": _decoded_log().path}


def adopt_conversion_settings(settings: dict) -> None:
    _OUTSIDE_ROOT.update(settings["outside_root"])
    _STAGED.clear()
    _STAGED.update(settings["staged"])
    _COPIES.update(settings["copies"])
    _LOG[:] = [_DecodedLog(settings["decoded_log"])]  # the conversion's log, wherever this process's env points


class TrainerImage(NamedTuple):
    path: str                  # the file the rows name: the image itself, or its 8-bit copy
    size: tuple[int, int]      # (width, height)
    depth: str = "8-bit"       # the range the pixels were read with: "8-bit", "12-bit" ..., "float"
    note: str | None = None    # for the manifest, when the rows name a copy


def _wide_colour(image: Image.Image) -> bool:
    """A colour image stored with 16 bits a sample (PIL decodes only the high byte of each)."""
    return image.mode not in HIGH_DEPTH_MODES and any(";16" in str(tile.args) for tile in image.tile)


def trainer_image(path: str, field: str = "image", expected: tuple[int, int] | None = None,
                  read_from: str | None = None) -> TrainerImage:
    """The image the trainers should be given for `path`: itself when PIL reads it as 8-bit, else its 8-bit
    copy (module comment above). Size and bomb checks as image_size; the pixels of a 16-bit or float image
    are decoded here (the copy needs them), those of an 8-bit one in converters.trainable. `read_from`: where
    the file is now, when that is not yet `path` (a file of the output being staged)."""
    with _opened(path, field, read_from) as image:
        size, mode, wide = image.size, image.mode, _wide_colour(image)
        values = np.asarray(image) if mode in HIGH_DEPTH_MODES else None
    _check_expected(path, size, expected, field)
    if wide:
        raise SkipRecord(f"image {path} is a 16-bit colour image ({mode}): PIL, and so both trainers, read only "
                         "the high byte of each sample; save it as 8-bit colour or 16-bit grayscale", field)
    if values is None:
        return TrainerImage(path, size)
    eight_bit, depth, scale = _eight_bit(values, mode, path, field)
    copy = _write_copy(path, eight_bit, depth)
    return TrainerImage(copy, size, depth, f"image {path} is {mode} ({depth}): the rows name its 8-bit copy "
                                           f"{copy} (values x {scale})")


def _eight_bit(values: np.ndarray, mode: str, path: str, field: str) -> tuple[np.ndarray, str, str]:
    """(8-bit pixels, the depth they were read with, the scale applied) of a 16-bit or float image."""
    if mode == "F":
        low, high = (float(values.min()), float(values.max())) if np.isfinite(values).all() else (np.nan, np.nan)
        if not 0 <= low <= high <= 1:
            raise SkipRecord(f"image {path} is a float image with values outside [0, 1] (min {low:g}, max "
                             f"{high:g}): its range is unknown; save it as 8- or 16-bit integers", field)
        return np.floor(values.astype(np.float64) * 255 + 0.5).astype(np.uint8), "float", "255"
    values = values.astype(np.int64)
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 2 ** 16 - 1:
        raise SkipRecord(f"image {path} ({mode}) holds values outside 0..65535 (min {low}, max {high}); save "
                         "it as 16-bit grayscale", field)
    bits = _COPIES["bit_depth"] or next(d for d in STANDARD_DEPTHS if high < 2 ** d)
    top = 2 ** bits - 1
    if high > top:
        raise SkipRecord(f"image {path} holds {high}, over the {bits}-bit range of --bit-depth {bits}", field)
    return ((values * 255 + top // 2) // top).astype(np.uint8), f"{bits}-bit", f"255/{top}"


def _write_copy(source: str, pixels: np.ndarray, depth: str) -> str:
    """`pixels` as an 8-bit grayscale PNG under the configured images folder (rewritten only when they differ,
    so a rerun leaves the file as it was)."""
    if _COPIES["out"] is None:
        raise RuntimeError("converters.images.configure_copies was not called for this conversion")
    target = os.path.abspath(Path(_COPIES["out"]) / f"{_mirrored_stem(source, _COPIES['root'])}_8bit_from_{depth}.png")
    written = _staged(target)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "L").save(buffer, format="PNG")
    data = buffer.getvalue()
    if not written.is_file() or written.read_bytes() != data:
        with atomic_open(written, "wb") as f:
            f.write(data)
    return target


# ---- full decoding, remembered ----------------------------------------------------------------------------
#
# A truncated JPEG or PNG opens (the header is whole) and fails only when its pixels are read: in training
# or in eval. Every image a row names is therefore decoded once (JPEGs at 1/8 scale: every byte of the
# compressed data is still read, only the inverse transform is smaller), from the pipeline's workers. Files
# that decoded whole are remembered by identity (device, inode, size, mtime, ctime: a file rewritten in place
# or replaced is another) within the conversion and across runs, in the user's cache folder, so a rerun
# decodes only what is new. Failures are remembered within the conversion only.

_DECODED: dict[str, str | None] = {}  # path -> why it does not decode (None: it does), this conversion
DECODED_LOG_NAME = "decoded-images-v1.txt"  # the version names what a remembered verdict proves
_DECODED_LOG_MAX_BYTES = 64 << 20


def _decoded_log_path() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "qwenvl-recipes" / DECODED_LOG_NAME


class _DecodedLog:
    """The identities of files that decoded whole, one line each, appended with a single write (O_APPEND:
    lines from parallel workers never interleave). An unwritable cache folder only costs the reruns' time."""

    def __init__(self, path: Path):
        self.path, self.keys = path, set()
        try:
            if path.stat().st_size > _DECODED_LOG_MAX_BYTES:
                path.unlink()  # started over rather than grown without end
            else:
                self.keys = set(path.read_text(encoding="ascii").split())
        except (OSError, UnicodeDecodeError):
            pass

    def add(self, key: str) -> None:
        self.keys.add(key)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            try:
                os.write(fd, f"{key}\n".encode("ascii"))
            finally:
                os.close(fd)
        except OSError:
            pass


_LOG: list[_DecodedLog] = []  # the loaded log of this process (reset_listings reloads it)


def _decoded_log() -> _DecodedLog:
    if not _LOG:
        _LOG.append(_DecodedLog(_decoded_log_path()))
    return _LOG[0]


def _identity(path: str) -> str | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"


def decode_problem(path: str) -> str | None:
    """What keeps the trainers from reading `path` as the image it claims to be, completing "image <path> ...",
    or None: missing, not an image, a decompression bomb, truncated or damaged pixel data, or a 16-bit / float
    image that their convert("RGB") would clip (trainer_image makes the copy they should read)."""
    try:
        with _open(path) as image:
            if image.mode in HIGH_DEPTH_MODES or _wide_colour(image):
                return (f"is {image.mode}{' with 16-bit samples' if _wide_colour(image) else ''}: the trainers "
                        "clip it to 8 bits (the converters train on an 8-bit copy)")
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except FileNotFoundError:
        return "is missing"
    except _BOMB as error:
        return f"is too large to decode safely: {error}"
    except Exception as error:  # PIL reports damaged data as OSError, SyntaxError, ValueError, struct.error...
        return f"does not decode ({type(error).__name__}: {error})"
    return None


def check_decodes(path: str, field: str = "image") -> None:
    """A SkipRecord naming `path` and decode_problem's reason unless it decodes whole (remembered, see above)."""
    if path not in _DECODED:
        found = str(_staged(path))  # a file of the output being staged is there until the run commits
        key = _identity(found)
        log = _decoded_log()
        if key is None:
            _DECODED[path] = f"missing image {path}"
        elif key not in log.keys:
            problem = decode_problem(found)
            _DECODED[path] = problem and f"image {path} {problem}"
            if problem is None:
                log.add(key)
        else:
            _DECODED[path] = None
    if _DECODED[path]:
        raise SkipRecord(_DECODED[path], field)


# ---- forgery masks: the one reader, the converter's and the detection head's -------------------------------


def read_mask(path: str) -> np.ndarray:
    """A forgery mask as a (height, width) bool array, True where the image was manipulated.

    Masks come as 0/255 grayscale, {0, 1} (what numpy-written masks hold), palette PNGs, or one colour on
    black (red-on-black RGB): a pixel is True when its brightest colour channel is above half the format's
    range (127 for 8 bits, 32767 for 16), or above 0 when the whole mask holds nothing above 1 ({0, 1}); a
    fully transparent pixel is False. PIL's errors (missing, unreadable, truncated) pass through."""
    with _open(path) as image:
        image.load()
        if image.mode in ("P", "PA"):
            image = image.convert("RGBA")
        elif image.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
            image = image.convert("RGB")
        values = np.asarray(image)
        has_alpha = image.mode in ("RGBA", "LA", "RGBa", "La")
    if values.dtype == bool:
        return values
    opaque = values[..., -1] > 0 if has_alpha else True
    if values.ndim == 3:
        values = values[..., :-1] if has_alpha else values
        values = values.max(axis=-1)
    top = values.max()
    threshold = 0.5 if top <= 1 else 127.5 if values.dtype == np.uint8 or values.dtype.kind == "f" else 32767.5
    return (values > threshold) & opaque
