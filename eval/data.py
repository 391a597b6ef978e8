"""Read a converter output directory (sharegpt `<name>_<split>.json` + `manifest.json`) into eval samples."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from converters.images import check_decodes, reset_listings
from converters.schema import SkipRecord
from converters.targets import TARGETS
from qwenvl_recipes.io import InputError, read_json, read_jsonl

HELD_OUT_SPLITS = ("val", "test")  # the default, in this order; train only when asked
IMAGE_TOKEN = "<image>"


@dataclass
class EvalSample:
    id: str
    prompt: list[dict]          # sharegpt messages before the answer
    reference: str | list[str]  # the dataset's answer text (a list for captions pooled per image)
    images: list[str]           # resolved paths
    extra: dict = field(default_factory=dict)

    def image_size(self) -> list[int] | None:
        """[width, height] of the first image as stored (boxes are in its pixels)."""
        if not self.images:
            return None
        with reading_image(self.images[0]), Image.open(self.images[0]) as image:
            return list(image.size)


@contextlib.contextmanager
def reading_image(path: str | Path):
    """A failure to open or decode `path` (unknown format, truncated file, decompression bomb) as one
    InputError naming the file."""
    try:
        yield
    except (OSError, SyntaxError, Image.DecompressionBombError) as error:  # PIL's broken-PNG error is a SyntaxError
        raise InputError(f"{path}: cannot read the image ({error})") from error


def load_image(path: str | Path) -> Image.Image:
    """The image fully decoded, in RGB."""
    with reading_image(path), Image.open(path) as image:
        return image.convert("RGB")


def find_split_file(data: Path, split: str | None, suffix: str = ".json") -> Path:
    """`data` may be the split file itself (.json sharegpt or .jsonl swift rows) or a converter output dir
    holding `<name>_<split><suffix>`. Without `split`: val, else test; the training rows are scored only when
    asked for (`split="train"`), never as a fallback."""
    data = Path(data)
    if data.is_file():
        return data
    if not data.is_dir():
        raise FileNotFoundError(f"--data {data}: no such file or directory")
    for candidate in ([split] if split else HELD_OUT_SPLITS):
        files = sorted(data.glob(f"*_{candidate}{suffix}"))
        if len(files) > 1:
            raise ValueError(f"{data}: several {candidate} files ({', '.join(f.name for f in files)}); "
                             "pass one of them as --data")
        if files:
            return files[0]
    present = sorted(f.name for f in data.glob(f"*_*{suffix}") if f.name != "dataset_info.json")
    if not split and present and all(name.endswith(f"_train{suffix}") for name in present):
        raise ValueError(f"{data}: no val or test split, only the training rows ({', '.join(present)}); "
                         "pass --split train to score those")
    if not split and present:
        raise ValueError(f"{data}: no val or test split; it holds {', '.join(present)}: pass --split to choose one "
                         "(the training rows are scored only with --split train)")
    wanted = split or "/".join(HELD_OUT_SPLITS)
    raise FileNotFoundError(f"{data}: no <name>_{wanted}{suffix} split file")


def check_split(data_file: Path, entry: dict, split: str | None) -> None:
    """A split file given as --data is scored as the split its manifest entry names: the training rows only with
    --split train, and --split never contradicts the file."""
    written = entry.get("split")
    if written is None or written == split:
        return
    if split is not None:
        raise ValueError(f"--data {data_file} holds the {written} split (its manifest.json entry), not --split {split}")
    if written == "train":
        raise ValueError(f"--data {data_file} holds the training rows (its manifest.json entry); pass --split train "
                         "to score them")


# What each trainer leaves in its output folder (the adapter dir or a folder above it).
TRAINER_MARKERS = {"swift": "args.json", "llamafactory": "trainer_log.jsonl"}
TRAINER_NAMES = {"swift": "ms-swift", "llamafactory": "LLaMA-Factory"}


def adapter_trainer(given: Path, resolved: Path) -> tuple[str | None, Path | None]:
    """(trainer, marker file) of a LoRA dir: ms-swift writes args.json into its output dir and every
    checkpoint-N, LLaMA-Factory trainer_log.jsonl into its output_dir (above its checkpoint-N). Looked for
    in `resolved` and the folders up to `given` (and above it, when `given` is a checkpoint-N itself);
    (None, None) when neither or both are found."""
    given, folder = Path(given).resolve(), Path(resolved).resolve()
    top = given.parent if given.name.startswith("checkpoint-") else given
    found: dict[str, Path] = {}
    while True:
        for trainer, name in TRAINER_MARKERS.items():
            if trainer not in found and (folder / name).is_file():
                found[trainer] = folder / name
        if folder == top or folder == folder.parent or top not in folder.parents:
            break
        folder = folder.parent
    return next(iter(found.items())) if len(found) == 1 else (None, None)


def choose_data_file(data: Path, split: str | None, adapter: Path | None = None,
                     resolved_adapter: Path | None = None) -> Path:
    """The split file of the trainer that made the adapter: the converter renders Qwen2.5-VL boxes per
    trainer (`.json` LLaMA-Factory, `.jsonl` ms-swift), so scoring a swift adapter on the LLaMA-Factory
    boxes would judge it against another resize. Without an adapter: the LLaMA-Factory file (else the
    swift one). An adapter whose trainer cannot be told, with both files present, is refused."""
    data = Path(data)
    trainer, marker = adapter_trainer(adapter, resolved_adapter) if adapter is not None else (None, None)
    suffixes = {t: TARGETS[t][0] for t in TARGETS}
    if data.is_file():
        if trainer and data.suffix != suffixes[trainer]:
            right = data.with_suffix(suffixes[trainer])
            raise ValueError(f"--adapter {adapter} was trained with {TRAINER_NAMES[trainer]} ({marker.name} in "
                             f"{marker.parent}), but --data {data} is the file of the other trainer; pass --data "
                             f"{right}")
        return data
    if trainer:
        return find_split_file(data, split, suffixes[trainer])
    found = {}
    for target, suffix in suffixes.items():
        try:
            found[target] = find_split_file(data, split, suffix)
        except FileNotFoundError:
            continue
    if adapter is not None and len(found) > 1:
        raise ValueError(f"cannot tell which trainer wrote --adapter {adapter} (no ms-swift args.json and no "
                         f"LLaMA-Factory trainer_log.jsonl in it or above it): pass --data "
                         f"{found['llamafactory']} (LLaMA-Factory) or --data {found['swift']} (ms-swift)")
    if not found:
        return find_split_file(data, split)  # raises, naming the .json file
    return found.get("llamafactory") or found["swift"]


def read_manifest_entry(data_file: Path) -> dict:
    """The converter's manifest entry for this file (options: model family, pixel limits, words...);
    {} when the directory has no manifest.json."""
    manifest = data_file.parent / "manifest.json"
    if not manifest.exists():
        return {}
    for entry in read_json(manifest).get("datasets", {}).values():
        if data_file.name in entry.get("files", {}).values():
            return entry
    raise ValueError(f"{manifest}: no dataset entry lists {data_file.name}")


def trainer_resize_path(data_file: Path, entry: dict) -> str:
    """The resize path of the trainer this file was written for (converters.targets.TARGETS): how that
    trainer fed images in training and, for qwen2_5_vl, how the converter rendered its boxes."""
    for target, name in entry.get("files", {}).items():
        if name == data_file.name and target in TARGETS:
            return TARGETS[target][1]
    return "hf"


def _resolve_image(path: str, data_dir: Path, where: str) -> str:
    """The image's absolute path, once it decodes whole as the model will read it (converters.images)."""
    for candidate in (Path(path), data_dir / path):
        if candidate.is_file():
            resolved = str(candidate.resolve())
            try:
                check_decodes(resolved)
            except SkipRecord as skip:
                raise ValueError(f"{where}: {skip.reason}") from None
            return resolved
    raise FileNotFoundError(f"{where}: image {path!r} not found (absolute, or relative to {data_dir})")


def _to_sample(row, index: int, data_file: Path, stem: str) -> EvalSample:
    where = f"{data_file}, record {index}"
    if not isinstance(row, dict):
        raise ValueError(f"{where}: expected a JSON object (a sharegpt record), got {type(row).__name__}")
    messages = row.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: 'messages' must be a non-empty list")
    for number, message in enumerate(messages):
        if not (isinstance(message, dict) and isinstance(message.get("role"), str)
                and isinstance(message.get("content"), str)):
            raise ValueError(f"{where}: messages[{number}] must be an object with a 'role' and a 'content' text")
    if messages[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last message must be the assistant's answer")
    prompt = messages[:-1]
    images = row.get("images") or []
    if not isinstance(images, list) or not all(isinstance(p, str) for p in images):
        raise ValueError(f"{where}: 'images' must be a list of paths")
    placeholders = sum(m["content"].count(IMAGE_TOKEN) for m in prompt)
    if placeholders != len(images):
        raise ValueError(f"{where}: {placeholders} {IMAGE_TOKEN} placeholders but {len(images)} images")
    extra = {k: v for k, v in row.items() if k not in ("messages", "images", "id")}
    return EvalSample(id=str(row.get("id", f"{stem}-{index:06d}")), prompt=prompt,
                      reference=messages[-1]["content"],
                      images=[_resolve_image(p, data_file.parent, where) for p in images], extra=extra)


def pool_captions(samples: list[EvalSample]) -> list[EvalSample]:
    """One sample per (images, prompt) with every caption as a reference: a converter keeping all five
    COCO captions writes five rows for one image, which is one caption to generate."""
    pooled: dict[tuple, EvalSample] = {}
    for s in samples:
        key = (tuple(s.images), repr(s.prompt))
        if key in pooled:
            pooled[key].reference.append(s.reference)
        else:
            pooled[key] = EvalSample(s.id, s.prompt, [s.reference], s.images, s.extra)
    return list(pooled.values())


def load_samples(data_file: Path, task: str) -> list[EvalSample]:
    """The samples of a split file, each id once (an id is the key predictions are resumed and compared by)."""
    reset_listings()  # images are checked as they are now, not as an earlier load in this process saw them
    rows = read_jsonl(data_file) if data_file.suffix == ".jsonl" else read_json(data_file)
    if not isinstance(rows, list):
        raise ValueError(f"{data_file}: expected a JSON list of sharegpt records")
    samples = [_to_sample(row, i, data_file, data_file.stem) for i, row in enumerate(rows)]
    if task == "caption":
        samples = pool_captions(samples)
    seen = set()
    for sample in samples:
        if sample.id in seen:
            raise ValueError(f"{data_file}: two records have the id {sample.id!r}; ids must be unique (predictions "
                             "are resumed and compared by id)")
        seen.add(sample.id)
    return samples
