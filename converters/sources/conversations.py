"""Conversation rows as people write them for Qwen-VL, read into one form: turns whose text holds an <image>
placeholder where each image stands, and the image names in that order (converters.sources.chat documents the
forms). The chat converter writes such rows as they are; the microscopy converter reads its seed's rows with
the same rules, then its own."""
from __future__ import annotations

import re
from dataclasses import dataclass

from converters.schema import IMAGE_TAG, SkipRecord

ROLE_NAMES = {"user": "user", "human": "user", "assistant": "assistant", "gpt": "assistant", "system": "system"}
TURN_KEYS = ("conversations", "messages")
ROW_IMAGE_KEYS = ("images", "image")
PART_IMAGE_KEYS = ("image", "path", "url")
# qwen-vl-utils' per-image resize settings: neither trainer reads them, so such an image would be seen otherwise.
PART_RESIZE_KEYS = ("resized_height", "resized_width", "min_pixels", "max_pixels")
INLINE_IMAGE = re.compile(r"<\|vision_start\|>(.*?)<\|vision_end\|>", re.S)


@dataclass(frozen=True)
class ChatRow:
    """A row's conversation as written, images in <image> placeholders; image_names in placeholder order, each
    with the field that names it."""

    key: str                                 # conversations | messages
    turns: tuple[tuple[str, str], ...]       # (role, text)
    image_names: tuple[str, ...]
    image_fields: tuple[str, ...]


def parse_row(row: dict) -> ChatRow:
    """Any of the row forms -> its turns and image names; a row breaking a rule is a SkipRecord naming the field.

    Rules: one turn list; roles user/human, assistant/gpt, system; an optional system turn first, then user and
    assistant turns in turn, the assistant's last and not empty; images only in user turns, given either by the
    row (`images` or `image`) or by the turns (typed parts, inline paths), never both; as many <image>
    placeholders as images; no video."""
    keys = [k for k in TURN_KEYS if k in row]
    if len(keys) != 1:
        raise SkipRecord(f"a row holds one of {list(TURN_KEYS)}, this one {keys or 'neither'}", "conversations")
    key = keys[0]
    for video in ("video", "videos"):
        if video in row:
            raise SkipRecord("video rows are not converted", video)
    turns = row[key]
    if not isinstance(turns, list) or not turns or not all(isinstance(t, dict) for t in turns):
        raise SkipRecord(f"{key} must be a non-empty list of turn objects, got {str(turns)[:80]}", key)
    parsed, names, fields = [], [], []
    for i, turn in enumerate(turns):
        where = f"{key}[{i}]"
        role_key = "role" if "role" in turn else "from"
        role = ROLE_NAMES.get(turn.get(role_key)) if isinstance(turn.get(role_key), str) else None
        if role is None:
            raise SkipRecord(f"role must be one of {sorted(ROLE_NAMES)}, got {turn.get(role_key)!r}",
                             f"{where}.{role_key}")
        text, given, given_fields = _turn_content(turn, where)
        if role != "user" and IMAGE_TAG in text:
            raise SkipRecord(f"an <image> in the {role} turn: images go in user turns", where)
        if "<video>" in text:
            raise SkipRecord("video rows are not converted", where)
        if role == "assistant" and not text.strip():
            raise SkipRecord("empty assistant answer", where)
        parsed.append((role, text))
        names += given
        fields += given_fields
    _check_order(key, [role for role, _ in parsed], [t.get("role", t.get("from")) for t in turns])
    row_key, row_names = _row_images(row)
    if row_key and names:
        raise SkipRecord(f"images given twice: in the turns and as the row's {row_key!r}", row_key)
    if row_key:
        names, fields = row_names, [f"{row_key}[{i}]" for i in range(len(row_names))]
    placeholders = sum(text.count(IMAGE_TAG) for _, text in parsed)
    if placeholders != len(names):
        raise SkipRecord(f"{placeholders} {IMAGE_TAG} placeholder(s) but {len(names)} image(s)", row_key or key)
    return ChatRow(key, tuple(parsed), tuple(names), tuple(fields))


def _turn_content(turn: dict, where: str) -> tuple[str, list, list[str]]:
    """(text with <image> placeholders, the image names the turn itself gives, their fields)."""
    content_key = "content" if "content" in turn else "value"
    content, where = turn.get(content_key), f"{where}.{content_key}"
    if isinstance(content, str):
        names = [match.group(1).strip() for match in INLINE_IMAGE.finditer(content)]
        if any(not name or "<|" in name for name in names):
            raise SkipRecord(f"<|vision_start|>...<|vision_end|> holds no image path: {content[:80]!r}", where)
        return INLINE_IMAGE.sub(IMAGE_TAG, content), names, [where] * len(names)
    if not isinstance(content, list):
        raise SkipRecord(f"content must be a string or a list of parts, got {type(content).__name__}", where)
    text, names, fields = "", [], []
    for j, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind == "text" and isinstance(part.get("text"), str):
            text += part["text"]
        elif kind == "image":
            resize = [k for k in PART_RESIZE_KEYS if k in part]
            if resize:
                raise SkipRecord(f"per-image resize settings {resize} are not passed to the trainers (they resize "
                                 "with the recipe's pixel limits)", f"{where}[{j}].{resize[0]}")
            found = next((k for k in PART_IMAGE_KEYS if k in part), "image")
            names.append(part.get(found))
            fields.append(f"{where}[{j}].{found}")
            text += IMAGE_TAG
        else:
            raise SkipRecord(f"content part must be {{'type': 'text', 'text': str}} or {{'type': 'image', "
                             f"'image': path}}, got {str(part)[:80]}", f"{where}[{j}]")
    return text, names, fields


def _check_order(key: str, roles: list[str], named: list) -> None:
    body = roles[1:] if roles[0] == "system" else roles
    if not body or len(body) % 2 or any(role != ("user", "assistant")[i % 2] for i, role in enumerate(body)):
        raise SkipRecord(f"expected an optional system turn, then user and assistant turns in turn ending with the "
                         f"assistant's, got roles {named}", key)


def _row_images(row: dict) -> tuple[str | None, list]:
    """(the row-level key naming its images, the names) — (None, []) when the row names none."""
    keys = [k for k in ROW_IMAGE_KEYS if row.get(k) not in (None, [])]
    if len(keys) > 1:
        raise SkipRecord(f"images given twice: as {keys[0]!r} and {keys[1]!r}", keys[1])
    if not keys:
        return None, []
    value = row[keys[0]]
    if isinstance(value, str):
        return keys[0], [value]
    if not isinstance(value, list):
        raise SkipRecord(f"{keys[0]} must be a path or a list of paths, got {type(value).__name__}", keys[0])
    return keys[0], value


def local_name(name: object, field: str) -> object:
    """An image name as a path: `file://` dropped; a URL or inline data is not a file both trainers read alike."""
    if isinstance(name, str) and name.startswith("file://"):
        return name[len("file://"):]
    if isinstance(name, str) and re.match(r"^(https?|data):", name):
        raise SkipRecord(f"image {name[:60]!r} is not a local file", field)
    return name
