"""Every recipe's header fits on a screen: at most five comment lines, each at most 160 characters. The header is
the block of `#` lines a recipe starts with; a `###` line opens the first section of the YAML (LLaMA-Factory's
style), not the header. Figures belong in docs/performance.md, not in headers."""
from pathlib import Path

import pytest

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
