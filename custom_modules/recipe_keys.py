"""How a recipe names one of our settings, in each trainer.

LLaMA-Factory recipes (run by `qvr-llamafactory train`) carry a `qwenvl_recipes:` block:
`qwenvl_recipes.<feature>.<key>`.
ms-swift recipes (`swift sft`) cannot (swift turns every top-level key into a flag and rejects unknown ones), so each
setting is one variable of the recipe's `ENV:` block, which swift exports before it starts: `QVR_<FEATURE>_<KEY>`.
Errors name a setting the way its recipe spells it.
"""
from __future__ import annotations

BLOCK_KEY = "qwenvl_recipes"
ENV_PREFIX = "QVR_"


def block_where(feature: str) -> str:
    return f"{BLOCK_KEY}.{feature}"


def env_where(feature: str) -> str:
    return f"{ENV_PREFIX}{feature.upper()}"


def setting_key(where: str, key: str) -> str:
    """`qwenvl_recipes.forgery` + `mode` -> `qwenvl_recipes.forgery.mode`;
    `QVR_FORGERY` + `mode` -> `QVR_FORGERY_MODE`."""
    return f"{where}_{key.upper()}" if where.startswith(ENV_PREFIX) else f"{where}.{key}"
