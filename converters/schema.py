"""The one internal form every source produces and every target renders.

Boxes are xyxy in absolute pixels of the ORIGINAL image; each target converts them to the
model family's convention (see converters.boxes), never the sources.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

ROLES = ("system", "user", "assistant")
IMAGE_TAG = "<image>"  # where each image of a Sample stands in its turns, one per image, in order


@dataclass(frozen=True)
class Box:
    x1: float
    y1: float
    x2: float
    y2: float

    def as_list(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]


@dataclass(frozen=True)
class Turn:
    role: str
    content: str

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"Turn.role must be one of {ROLES}, got {self.role!r}")


@dataclass(frozen=True)
class Sample:
    """One training conversation.

    images: paths as the trainers should read them; image_sizes: (width, height) of each image as stored
    on disk; objects: (phrase, Box) pairs the conversation talks about (grounding); extra: task columns
    carried next to `messages`/`images` in both outputs (e.g. forgery `label`, `mask`). `extra` takes no
    part in hashing (a dict is not hashable) but does in equality.
    """

    id: str
    images: tuple[str, ...]
    turns: tuple[Turn, ...]
    image_sizes: tuple[tuple[int, int], ...] = ()
    objects: tuple[tuple[str, Box], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, hash=False)


@dataclass(frozen=True)
class Skip:
    """A record left out of the output, with where it came from and why."""

    id: str
    reason: str
    source: str = ""
    field: str = ""


class SkipRecord(Exception):
    """Raised by a `record -> Sample` function for bad input; the pipeline turns it into a `Skip`."""

    def __init__(self, reason: str, field: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.field = field

