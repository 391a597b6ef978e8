"""The speedups callback in ms-swift, registered by swift_plugin: `callbacks: [speedups]` in a recipe, its settings
in the ENV block as QVR_SPEEDUPS_<KEY> (QVR_SPEEDUPS_COMPILE_VISION: true)."""
from __future__ import annotations

from swift.callbacks import callbacks_map

from custom_modules.integrations.env_settings import FEATURE_CALLBACKS
from custom_modules.recipe_keys import env_where
from custom_modules.speedups import SpeedupsCallback, parse_settings

CALLBACK = FEATURE_CALLBACKS["speedups"]


def register(environment_settings) -> None:
    class SwiftSpeedupsCallback(SpeedupsCallback):
        def __init__(self, args, trainer):  # swift builds callbacks as cls(args, trainer)
            super().__init__(parse_settings(environment_settings("speedups"), env_where("speedups")))

    callbacks_map[CALLBACK] = SwiftSpeedupsCallback
