"""The parts of a Qwen-VL model (peft-wrapped or not) the speed-ups act on, found by their sub-config's
model_type: the vision towers and the language models (decoder stacks)."""
from __future__ import annotations

VISION_CONFIGS = ("qwen2_vl_vision", "qwen2_5_vl_vision", "qwen3_vl_vision")
LANGUAGE_CONFIGS = ("qwen2_vl_text", "qwen2_5_vl_text", "qwen3_vl_text")


def _parts(model, model_types: tuple[str, ...], attribute: str) -> list:
    return [m for m in model.modules()
            if getattr(getattr(m, "config", None), "model_type", None) in model_types and hasattr(m, attribute)]


def vision_towers(model) -> list:
    return _parts(model, VISION_CONFIGS, "blocks")


def vision_blocks(model) -> list:
    return [block for tower in vision_towers(model) for block in tower.blocks]


def decoder_layers(model) -> list:
    return [layer for lm in _parts(model, LANGUAGE_CONFIGS, "layers") for layer in lm.layers]
