"""Every recipe's header fits on a screen: at most five comment lines, each at most 160 characters. The header is
the block of `#` lines a recipe starts with; a `###` line opens the first section of the YAML (LLaMA-Factory's
style), not the header. Figures belong in docs/performance.md, not in headers. A header's bound on visual tokens
per image is what its trainer's resize gives at the recipe's pixel limits."""
import functools
import re
from pathlib import Path

import pytest

from converters.geometry import FACTORS, PROCESSOR_PIXELS, resized_size
from tools.recipes_table import REPO_ROOT, discover

MAX_LINES = 5
MAX_CHARS = 160


def header_lines(text: str) -> list[str]:
    lines = []
    for line in text.splitlines():
        if not line.startswith("#") or line.startswith("##"):
            break
        lines.append(line)
    return lines


def test_the_header_stops_at_the_first_section_or_setting():
    text = "# Trains: x\n# Run: y\n### model\n# not header\nmodel: m\n"
    assert header_lines(text) == ["# Trains: x", "# Run: y"]
    assert header_lines("model: m\n# comment\n") == []


@pytest.mark.parametrize("path", [r.path for r in discover()], ids=lambda p: Path(p).relative_to(REPO_ROOT).as_posix())
def test_recipe_header_is_at_most_five_short_lines(path):
    lines = header_lines(path.read_text(encoding="utf-8"))
    rel = path.relative_to(REPO_ROOT).as_posix()
    assert len(lines) <= MAX_LINES, f"{rel}: header of {len(lines)} lines (at most {MAX_LINES})"
    long = [f"line {number} ({len(line)} chars)" for number, line in enumerate(lines, 1) if len(line) > MAX_CHARS]
    assert not long, f"{rel}: header lines over {MAX_CHARS} characters: {', '.join(long)}"


# "<= N visual tokens per image" in a header is the most its trainer's own resize gives at the recipe's pixel limits:
# LLaMA-Factory scales under image_max_pixels and the processor then rounds each side to the nearest token, so a
# square image can come out one token row and column above max_pixels (converters/geometry.py). The sweep holds
# such squares for every family's limits.
TOKEN_BOUND = re.compile(r"<= (\d+) visual tokens per image")
SIDES = range(112, 4097, 24)
ASPECTS = (1.0, 0.75, 4 / 3, 9 / 16, 16 / 9, 0.5, 2.0)


def pixel_limits(recipe) -> tuple[int, int]:
    if recipe.trainer == "llamafactory":
        return recipe.config["image_min_pixels"], recipe.config["image_max_pixels"]
    return int(recipe.config["ENV"]["MIN_PIXELS"]), int(recipe.config["ENV"]["MAX_PIXELS"])


@functools.cache  # the recipes share a few (family, trainer, limits): each sweep runs once
def most_tokens(family: str, trainer: str, min_pixels: int, max_pixels: int) -> int:
    factor = FACTORS[family]
    sizes = {(side, max(28, round(side * aspect))) for side in SIDES for aspect in ASPECTS}
    return max((w // factor) * (h // factor) for w, h in (
        resized_size(width, height, family, trainer, min_pixels=min_pixels, max_pixels=max_pixels,
                     processor_pixels=PROCESSOR_PIXELS[family]) for width, height in sizes))


BOUNDED = [r for r in discover() if TOKEN_BOUND.search(r.header.get("GPUs", ""))]


def test_some_headers_bound_the_visual_tokens():
    assert {r.trainer for r in BOUNDED} == {"llamafactory", "swift"}


@pytest.mark.parametrize("recipe", BOUNDED, ids=lambda r: r.rel)
def test_header_token_bound_is_what_the_trainer_gives(recipe):
    stated = int(TOKEN_BOUND.search(recipe.header["GPUs"]).group(1))
    most = most_tokens(recipe.family, recipe.trainer, *pixel_limits(recipe))
    assert most == stated, f"{recipe.rel}: the header says <= {stated} visual tokens, {recipe.trainer} gives {most}"
