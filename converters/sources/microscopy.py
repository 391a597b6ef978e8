"""Microscope focusing: two consecutive images -> {"analysis", "direction" +|-, "distance" steps}.

Inputs: a pairs table (image1,image2,direction,distance[,analysis][,split][,id]; JSON list, JSONL or
CSV), or a z-stack table (stack_id,image,z,focus_z[,split]) from which consecutive pairs are drawn:
images of a stack sorted by z, each neighbour pair (z_a < z_b) shown in that order, the second image
being the current position. The target moves the motor from z_b to focus_z: direction "+" when
focus_z > z_b (else "-"), distance |focus_z - z_b| * steps_per_z, rounded to whole steps.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from converters.files import existing_image, image_size
from converters.schema import Sample, Skip, SkipRecord, Turn
from converters.sources.tables import read_rows, split_rows

DEFAULT_PROMPT = (
    "这两张图像是显微镜在相邻两个焦平面位置连续拍摄的（第一张为上一位置，第二张为当前位置）。"
    "请比较两张图像的清晰度、边缘锐利程度和细节变化，判断当前的对焦状态，并给出电机的调焦方向和步数。"
    '只输出 JSON：{"analysis": "简要分析", "direction": "+" 或 "-", "distance": 步数}。'
)
PAIR_COLUMNS = ("image1", "image2", "direction", "distance")
STACK_COLUMNS = ("stack_id", "image", "z", "focus_z")


@dataclass(frozen=True)
class MicroscopyOptions:
    prompt: str = DEFAULT_PROMPT


def default_analysis(direction: str, distance: int) -> str:
    if distance == 0:
        return "第二张图像已处于焦平面，清晰度最高，无需移动。"
    return f"第二张图像仍未清晰对焦，焦平面位于{'正' if direction == '+' else '负'}方向，需移动约{distance}步。"


def parse_direction(value: object) -> str:
    direction = str(value).strip()
    if direction not in ("+", "-"):
        raise SkipRecord(f"direction must be '+' or '-', got {value!r}", "direction")
    return direction


def parse_distance(value: object) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise SkipRecord(f"distance must be a number of steps, got {value!r}", "distance") from None
    if number < 0 or number != int(number):
        raise SkipRecord(f"distance must be a whole number of steps >= 0, got {value!r}", "distance")
    return int(number)


def to_sample(record: dict, opts: MicroscopyOptions, resize_path: str = "hf") -> Sample:
    """record: {"id", "images" (2 abs paths), "sizes", "direction", "distance"[, "analysis"]}."""
    direction = parse_direction(record["direction"])
    distance = parse_distance(record["distance"])
    analysis = " ".join(str(record.get("analysis") or "").split()) or default_analysis(direction, distance)
    answer = json.dumps({"analysis": analysis, "direction": direction, "distance": distance}, ensure_ascii=False)
    return Sample(id=record["id"], images=tuple(record["images"]),
                  turns=(Turn("user", "<image><image>" + opts.prompt), Turn("assistant", answer)),
                  image_sizes=tuple(tuple(s) for s in record["sizes"]))


def _with_images(record: dict, names: list[str], images_dir: Path | None) -> dict:
    paths, sizes = [], []
    for field, name in zip(("image1", "image2"), names):
        if not name:
            raise SkipRecord("empty image path", field)
        path = existing_image(images_dir, str(name), field)
        paths.append(path)
        sizes.append(image_size(path, field))
    return {**record, "images": paths, "sizes": sizes}


def is_stack_table(path: Path) -> bool:
    first = next(read_rows(path), None)
    return first is not None and all(c in first[1] for c in ("stack_id", "image", "z"))


def read_pairs(path: Path, images_dir: Path | None, only_split: str | None = None,
               limit: int | None = None) -> Iterator[tuple[str, object]]:
    for split, (number, row) in split_rows(path, only_split, limit):
        record_id = str(row.get("id") or f"pair{number}")
        source = f"{path.name}:{number}"
        missing = [c for c in PAIR_COLUMNS if row.get(c) in (None, "")]
        if missing:
            yield split, Skip(record_id, f"missing column(s) {missing}", source, missing[0])
            continue
        base = {"id": record_id, "source": source, "direction": row["direction"], "distance": row["distance"],
                "analysis": row.get("analysis")}
        try:
            yield split, _with_images(base, [row["image1"], row["image2"]], images_dir)
        except SkipRecord as skip:
            yield split, Skip(record_id, skip.reason, source, skip.field)


def read_stacks(path: Path, images_dir: Path | None, *, steps_per_z: float = 1.0, only_split: str | None = None,
                limit: int | None = None) -> Iterator[tuple[str, object]]:
    stacks: dict[str, list] = {}
    for number, row in read_rows(path):
        missing = [c for c in STACK_COLUMNS if row.get(c) in (None, "")]
        if missing:
            yield str(row.get("split") or "train"), Skip(f"row{number}", f"missing column(s) {missing}",
                                                          f"{path.name}:{number}", missing[0])
            continue
        stacks.setdefault(str(row["stack_id"]), []).append((number, row))
    per_split: dict[str, int] = {}
    for stack_id, rows in stacks.items():
        split = str(rows[0][1].get("split") or "train")
        if only_split is not None and split != only_split:
            continue
        try:
            slices = sorted((float(r["z"]), n, r["image"]) for n, r in rows)
            focus = {float(r["focus_z"]) for _, r in rows}
        except ValueError as error:
            yield split, Skip(stack_id, f"z or focus_z is not a number: {error}", path.name, "z")
            continue
        if len(focus) != 1:
            yield split, Skip(stack_id, f"stack has several focus_z values {sorted(focus)}", path.name, "focus_z")
            continue
        focus_z = focus.pop()
        for (z_a, n_a, image_a), (z_b, n_b, image_b) in zip(slices, slices[1:]):
            if per_split.get(split, 0) == limit:
                break
            per_split[split] = per_split.get(split, 0) + 1
            delta = (focus_z - z_b) * steps_per_z
            base = {"id": f"{stack_id}_z{z_a:g}_z{z_b:g}", "source": f"{path.name}:{n_a},{n_b}",
                    "direction": "+" if delta > 0 else "-", "distance": round(abs(delta))}
            try:
                yield split, _with_images(base, [image_a, image_b], images_dir)
            except SkipRecord as skip:
                yield split, Skip(base["id"], skip.reason, base["source"], skip.field)
