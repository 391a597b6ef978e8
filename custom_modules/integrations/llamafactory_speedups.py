"""The speedups feature in LLaMA-Factory (`qwenvl_recipes: {speedups: {...}}`, added by qvr-llamafactory): the
callback applies custom_modules.speedups when training begins. ms-swift: swift_speedups."""
from __future__ import annotations

from custom_modules.recipe_keys import block_where
from custom_modules.speedups import SpeedupsCallback, parse_settings


def setup(block: dict | None, args: dict) -> list:
    return [SpeedupsCallback(parse_settings(block, block_where("speedups")))]
