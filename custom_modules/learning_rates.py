"""A learning rate per part of a Qwen-VL model: the merger, the rest of the vision tower, the language model.

ms-swift has its own (`aligner_lr`, `vit_lr`, `learning_rate`); LLaMA-Factory has none, so a LLaMA-Factory recipe
sets them in its `qwenvl_recipes: {learning_rates: {merger_lr: ..., vit_lr: ...}}` block and qvr-llamafactory
builds these optimizer groups. The parts are ms-swift's for Qwen-VL: the merger is `visual.merger` plus Qwen3-VL's
deepstack mergers (its aligner), the vision tower every other `visual.` parameter, the language model the rest (its
rate is the recipe's learning_rate). The custom vision encoder's merger / encoder / LM rates (vision_encoder
settings) use the same groups over its own parts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from torch import nn

from qwenvl_recipes.settings import parse_dataclass

MERGER = re.compile(r"(^|\.)visual\.(merger|deepstack_merger_list)\.")
VISION = re.compile(r"(^|\.)visual\.")


@dataclass(frozen=True)
class LearningRates:
    merger_lr: float | None = None  # visual.merger and Qwen3-VL's deepstack mergers (ms-swift: aligner_lr)
    vit_lr: float | None = None     # the rest of the vision tower (ms-swift: vit_lr)


def parse_settings(block: dict, where: str = "qwenvl_recipes.learning_rates") -> LearningRates:
    settings = parse_dataclass(LearningRates, block, where, lambda key: f"{where}.{key}")
    if settings.merger_lr is None and settings.vit_lr is None:
        raise ValueError(f"{where}: set merger_lr and/or vit_lr (the language model's rate is learning_rate)")
    return settings


def stock_part(name: str) -> str:
    """merger, vit or lm: which rate a parameter of a Qwen-VL model with its own ViT trains at."""
    if MERGER.search(name):
        return "merger"
    return "vit" if VISION.search(name) else "lm"


def rates_of(settings: LearningRates) -> dict[str, float | None]:
    return {"merger": settings.merger_lr, "vit": settings.vit_lr, "lm": None}


def param_groups(model: nn.Module, part_of: Callable[[str], str], rates: dict[str, float | None],
                 learning_rate: float, weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups of the trainable parameters, one per part of `rates`, each at its rate (unset: learning_rate);
    every group has the same weight decay."""
    groups: dict[str, list] = {part: [] for part in rates}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups[part_of(name)].append(param)
    return [{"params": params, "lr": rates[part] or learning_rate, "weight_decay": weight_decay, "name": part}
            for part, params in groups.items() if params]


validate_config = parse_settings  # the recipe tests' hook (tests/recipes/test_recipes_parse.py)
