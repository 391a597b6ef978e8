"""Our features' settings as an ms-swift recipe carries them: one variable of its `ENV:` block per setting.

    ENV:
      QVR_FORGERY_MODE: hybrid
      QVR_FORGERY_HEAD_BLOCKS: [7, 15, 23, 31]

swift exports the block before it starts a training process (a variable the shell already set wins, which is
how one run overrides a setting: `QVR_FORGERY_MASK_SIZE=32 swift sft recipe.yaml`); values are read back as
YAML. Every QVR_<FEATURE>_* variable must be a known setting, and so must every QVR_* key of the recipe's ENV
block (a misspelt feature): the error names the variable and the recipe.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Mapping

import yaml

from custom_modules.recipe_keys import ENV_PREFIX, env_where, setting_key

# feature -> the swift callback a recipe lists to switch it on (swift_plugin registers them under these names)
FEATURE_CALLBACKS = {"forgery": "forgery", "vision_encoder": "vision_encoder_save", "speedups": "speedups"}


def known_settings() -> dict[str, set[str]]:
    """feature -> its setting names."""
    from custom_modules.forgery.settings import ForgerySettings
    from custom_modules.speedups import DEFAULTS
    from custom_modules.vision_encoder.settings import VisionEncoderSettings

    return {"forgery": {f.name for f in dataclasses.fields(ForgerySettings)},
            "vision_encoder": {f.name for f in dataclasses.fields(VisionEncoderSettings)},
            "speedups": set(DEFAULTS)}


def _feature_of(name: str, known: dict[str, set[str]]) -> tuple[str, str] | None:
    for feature in known:
        prefix = f"{env_where(feature)}_"
        if name.startswith(prefix):
            return feature, name[len(prefix):].lower()
    return None


def setting_variables(environment: Mapping[str, object]) -> dict[str, object]:
    """The QVR_<FEATURE>_* variables of `environment` (known settings or not: read_settings checks them)."""
    known = known_settings()
    return {name: value for name, value in environment.items() if _feature_of(name, known)}


def read_settings(environment: Mapping[str, object], source: str, recipe_env: Mapping[str, object] = ()) -> dict:
    """{feature: {key: value}} from the QVR_<FEATURE>_<KEY> variables of `environment` (string values are parsed as
    YAML); `recipe_env`: the recipe's own ENV block, whose QVR_* keys must all be settings. `source` (the recipe)
    is named in errors."""
    known = known_settings()
    names = [*setting_variables(environment), *(n for n in recipe_env if n.startswith(ENV_PREFIX))]
    settings: dict[str, dict] = {}
    for name in names:
        match = _feature_of(name, known)
        if match is None:
            prefixes = [f"{env_where(f)}_*" for f in known]
            raise ValueError(f"{source}: ENV {name} is not one of our settings; they are {', '.join(prefixes)}")
        if match[1] not in known[match[0]]:
            keys = sorted(setting_key(env_where(match[0]), k) for k in known[match[0]])
            raise ValueError(f"{source}: ENV {name} is not a {match[0]} setting; known: {', '.join(keys)}")
        value = environment.get(name, recipe_env.get(name) if recipe_env else None)
        settings.setdefault(match[0], {})[match[1]] = (yaml_value(value, name, source) if isinstance(value, str)
                                                       else value)
    return settings


def yaml_value(text: str, name: str, source: str):
    """A variable's string read as YAML; a malformed one is a ValueError naming the variable and the recipe."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise ValueError(f"{source}: ENV {name}={text!r} is not a YAML value ({problem})") from None


def recipe_source() -> tuple[str, dict]:
    """(the recipe swift is running, its ENV block): swift sets SWIFT_CONFIG_FILE to the recipe's path."""
    path = os.environ.get("SWIFT_CONFIG_FILE")
    if not path or not os.path.isfile(path):
        return "the environment", {}
    with open(path, encoding="utf-8") as f:
        return path, (yaml.safe_load(f) or {}).get("ENV") or {}


def recipe_features(config: dict, source: str) -> dict | None:
    """{feature: settings} an ms-swift recipe's YAML switches on (its callbacks, its ENV settings); None without
    any. What the recipe checks read without starting swift."""
    settings = read_settings({}, source, config.get("ENV") or {})
    for feature, callback in FEATURE_CALLBACKS.items():
        if callback in (config.get("callbacks") or []):
            settings.setdefault(feature, {})
    return settings or None
