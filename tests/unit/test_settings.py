"""qwenvl_recipes.settings.parse_dataclass: the one validator of our features' settings blocks."""

from dataclasses import dataclass, field

import pytest

from qwenvl_recipes.settings import parse_dataclass


@dataclass(frozen=True)
class Example:
    kind: str = field(metadata={"choices": ("a", "b")})
    steps: int = 1
    rate: float | None = None
    blocks: tuple[int, ...] | None = None
    mean: list[float] | None = None
    on: bool = True


def key(name: str) -> str:
    return f"block.{name}"


def test_values_are_checked_and_coerced():
    settings = parse_dataclass(Example, {"kind": "b", "steps": 3, "rate": 2, "blocks": [3, 1], "mean": [0, 0.5, 1]},
                               "block", key)
    assert settings == Example(kind="b", steps=3, rate=2.0, blocks=(3, 1), mean=[0.0, 0.5, 1.0])
    assert isinstance(settings.rate, float) and isinstance(settings.blocks, tuple)
    assert parse_dataclass(Example, {"kind": "a", "rate": None}, "block", key) == Example(kind="a")


@pytest.mark.parametrize("raw, message", [
    ([1], r"^block: expected a mapping of settings, got list$"),
    ({"kind": "a", "step": 2}, r"^block: unknown setting\(s\) block\.step; known: block\.kind, block\.steps, "),
    ({}, r"^block\.kind is required$"),
    ({"kind": "c"}, r"^block\.kind='c'; expected one of \['a', 'b'\]$"),
    ({"kind": "a", "steps": 1.5}, r"^block\.steps must be int, got 1\.5 \(float\)$"),
    ({"kind": "a", "steps": True}, r"^block\.steps must be int, got True \(bool\)$"),
    ({"kind": "a", "on": "yes"}, r"^block\.on must be bool, got 'yes' \(str\)$"),
    ({"kind": "a", "rate": "fast"}, r"^block\.rate must be float, got 'fast' \(str\)$"),
    ({"kind": "a", "blocks": []}, r"^block\.blocks must be a non-empty list, got \[\]$"),
    ({"kind": "a", "blocks": [1, "2"]}, r"^block\.blocks must be int, got '2' \(str\)$"),
])
def test_every_error_names_the_setting(raw, message):
    with pytest.raises(ValueError, match=message):
        parse_dataclass(Example, raw, "block", key)
