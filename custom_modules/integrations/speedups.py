"""The speedups feature in both trainers: `qwenvl_recipes: {speedups: {...}}` in a recipe.

LLaMA-Factory (llamafactory_entry) takes the callback list; ms-swift (swift_plugin) gets the callback added to the
trainer it builds. The callback applies custom_modules.speedups when training begins.
"""
from __future__ import annotations

from custom_modules.speedups import SpeedupsCallback, parse_settings


def llamafactory_setup(block: dict | None) -> list:
    return [SpeedupsCallback(parse_settings(block))]


def swift_register(block: dict | None) -> None:
    settings = parse_settings(block)
    from swift.pipelines.train.sft import SwiftSft

    original_train = SwiftSft.train

    def train(self, trainer):
        trainer.add_callback(SpeedupsCallback(settings))
        return original_train(self, trainer)

    SwiftSft.train = train
