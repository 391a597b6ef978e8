"""Speed-ups for LoRA training of Qwen-VL models that leave what is learned unchanged, and one opt-in that does not.

    vision_attention   the vision towers' windowed/per-image attention as one call per layer (PyTorch's varlen flash
                       kernel on CUDA in half precision, else one sdpa call per distinct segment length)
    vision_positions   Qwen3-VL's vision position tables from a cache per image size (no per-image host loops)
    vision_mlp         Qwen2.5-VL's vision MLP (width 3420) run over weights padded to a multiple of 128
    lora_input         no fp32 copy of LoRA inputs under bf16 autocast
    lora_addmm         LoRA's scaled update added to the base output in the lora_B matmul (one in-place addmm), not
                       in two more passes over the layer's output and one over its gradient
    frozen_vision      no autograd graph through a frozen vision tower (transformers 5 marks its patch embedding's
                       output as requiring a gradient whenever input gradients are enabled for checkpointing)
    deepstack          Qwen3-VL's deepstack additions by masked_scatter instead of boolean indexing (no host sync)
    lm_head_loss       Liger's fused LM head + cross-entropy over the labelled rows only, in one chunk (a process-wide
                       change to Liger's loss function, which any Liger model then uses)
    parameter_count    the model's parameter count taken once, not at every micro-step (transformers' Trainer counts
                       them for its FLOP estimate)
    skip_cudnn_attention  sdpa without its cuDNN backend, which builds a host-side plan for every new input shape
                       (a process-wide switch, like lm_head_loss)
    compile_vision     torch.compile of each vision block around its attention, which stays eager (off by default:
                       compile time). Needs vision_attention: the per-batch segment plan of the attention is host
                       data (Python ints and index tensors of each batch's image grids), so traced it recompiled for
                       every new mix of image sizes; outside the graph, the compiled pieces see only the token count,
                       which after the first change of size they compile for as a dynamic shape
    compile_language   torch.compile of each language-model decoder layer, LoRA inside (off by default: compile
                       time; after the first change of sequence length it compiles for dynamic shapes)
    fp8_base           the LM's frozen base weights in FP8 matmuls, forward and input gradient (off by default: it
                       rounds those matmuls' operands to e4m3, so it changes numerics; Ada/Hopper GPUs)

`apply_speedups(model, settings, autocast)` applies the switched-on ones to a loaded model (peft-wrapped or not);
`SpeedupsCallback` does it when a transformers Trainer begins training, after the trainer has loaded, frozen
and wrapped the model. LLaMA-Factory recipes switch it on with `qwenvl_recipes: {speedups: {}}`, ms-swift recipes with
`callbacks: [speedups]` (custom_modules/integrations).
docs/performance.md has what each one gave (H100, H200).
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

from transformers import TrainerCallback

from custom_modules.recipe_keys import setting_key
from qwenvl_recipes.settings import parse_dataclass

@dataclass(frozen=True)
class SpeedupSettings:
    """Which speed-ups a recipe switches on (the list above)."""

    vision_attention: bool = True
    vision_positions: bool = True
    vision_mlp: bool = True
    lora_input: bool = True
    lora_addmm: bool = True
    frozen_vision: bool = True
    deepstack: bool = True
    lm_head_loss: bool = True
    parameter_count: bool = True
    skip_cudnn_attention: bool = True
    compile_vision: bool = False
    compile_language: bool = False
    fp8_base: bool = False


DEFAULTS = asdict(SpeedupSettings())
logger = logging.getLogger(__name__)


def parse_settings(block: dict | None, where: str = "qwenvl_recipes.speedups") -> dict:
    """{speed-up: on} from the recipe's `speedups` settings over DEFAULTS; errors name the key as the recipe spells
    it (`where`: see custom_modules.recipe_keys)."""
    settings = asdict(parse_dataclass(SpeedupSettings, block, where, lambda key: setting_key(where, key)))
    if settings["compile_vision"] and not settings["vision_attention"]:
        raise ValueError(f"{setting_key(where, 'compile_vision')} needs {setting_key(where, 'vision_attention')} "
                         "(transformers' own vision attention splits each batch by its image sizes, and every new "
                         "mix of sizes recompiles)")
    if settings["fp8_base"] and settings["compile_language"]:
        raise ValueError(f"{setting_key(where, 'fp8_base')} and {setting_key(where, 'compile_language')} cannot both "
                         "be on: the FP8 layers reuse the quantised input across calls, which a compiled graph "
                         "does not see")
    return settings


def validate_config(block: dict) -> None:
    parse_settings(block)


def apply_speedups(model, settings: dict, autocast: bool) -> dict:
    """Apply the switched-on speed-ups to `model`; returns {name: how many modules changed}."""
    from custom_modules.speedups.attention_backend import skip_cudnn_attention
    from custom_modules.speedups.deepstack import use_scattered_deepstack
    from custom_modules.speedups.fp8_base import use_fp8_frozen_base
    from custom_modules.speedups.frozen_vision import drop_frozen_vision_graph
    from custom_modules.speedups.lm_head_loss import use_labelled_rows
    from custom_modules.speedups.lora_addmm import use_addmm_lora
    from custom_modules.speedups.lora_input import keep_lora_input_dtype
    from custom_modules.speedups.parameter_count import count_parameters_once
    from custom_modules.speedups.parts import decoder_layers, vision_blocks
    from custom_modules.speedups.vision_attention import use_segment_attention
    from custom_modules.speedups.vision_mlp import align_vision_mlps
    from custom_modules.speedups.vision_positions import use_cached_vision_positions

    changed = {}
    if settings["vision_attention"]:
        changed["vision_attention"] = use_segment_attention(model)
    if settings["vision_positions"]:
        changed["vision_positions"] = use_cached_vision_positions(model)
    if settings["vision_mlp"]:
        changed["vision_mlp"] = align_vision_mlps(model)
    if settings["lora_input"] and autocast:
        changed["lora_input"] = keep_lora_input_dtype(model)
    if settings["lora_addmm"]:
        changed["lora_addmm"] = use_addmm_lora(model)
    if settings["frozen_vision"]:
        changed["frozen_vision"] = drop_frozen_vision_graph(model)
    if settings["deepstack"]:
        changed["deepstack"] = use_scattered_deepstack(model)
    if settings["lm_head_loss"]:
        changed["lm_head_loss"] = use_labelled_rows()
    if settings["parameter_count"]:
        changed["parameter_count"] = count_parameters_once(model)
    if settings["skip_cudnn_attention"]:
        changed["skip_cudnn_attention"] = skip_cudnn_attention()
    if settings["fp8_base"]:
        changed["fp8_base"] = use_fp8_frozen_base(model)
    if settings["compile_vision"]:
        changed["compile_vision"] = compile_each(vision_blocks(model))
    if settings["compile_language"]:
        changed["compile_language"] = compile_each(decoder_layers(model))
    return changed


def compile_each(modules: list) -> int:
    for module in modules:
        module.compile()
    return len(modules)


class SpeedupsCallback(TrainerCallback):
    def __init__(self, settings: dict):
        self.settings = settings

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        autocast = bool(getattr(args, "bf16", False) or getattr(args, "fp16", False))
        logger.warning("speedups applied: %s", apply_speedups(model, self.settings, autocast))
