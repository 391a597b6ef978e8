"""Per-part learning rates for a LLaMA-Factory recipe, ms-swift's `aligner_lr` / `vit_lr` where LLaMA-Factory has
none: `qwenvl_recipes: {learning_rates: {merger_lr: ..., vit_lr: ...}}` becomes the optimizer groups of
custom_modules.learning_rates (merger, vision tower, and the language model at learning_rate)."""
from __future__ import annotations

from custom_modules import learning_rates
from custom_modules.integrations.llamafactory_optimizer import install_param_groups
from custom_modules.recipe_keys import block_where


def setup(block: dict, args: dict) -> list:
    where = block_where("learning_rates")
    settings = learning_rates.parse_settings(block, where)
    rates = learning_rates.rates_of(settings)
    install_param_groups(lambda model, lr, weight_decay: learning_rates.param_groups(
        model, learning_rates.stock_part, rates, lr, weight_decay), True, where)
    return []
