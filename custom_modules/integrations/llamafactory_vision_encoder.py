"""LLaMA-Factory side of the custom vision encoder (`qwenvl_recipes: {vision_encoder: {...}}`).

LLaMA-Factory has no hook for replacing a vision tower, so `install` wraps three of its module-level names
before `run_exp` runs (they are looked up at call time, so this also holds under torchrun):
- `model.loader.patch_processor`: the processor gets the encoder's image processor, so the qwen3_vl mm_plugin
  expands `<|image_pad|>` to the encoder's token count;
- `model.loader.init_adapter`: the encoder + merger replace `model.visual` before LoRA is added, and the stage's
  trainable set is enforced after (stage 1: merger; stage 2: merger + LoRA, encoder LoRA if asked);
- `train.sft.trainer.create_custom_optimizer`: separate learning rates for merger, encoder and LM
  (llamafactory_optimizer).
It returns the callback that writes `vision_encoder/` next to each checkpoint.
"""

from __future__ import annotations

import importlib

from llamafactory.extras import logging

from custom_modules.integrations.llamafactory_optimizer import install_param_groups
from custom_modules.vision_encoder.processing import attach_image_processor
from custom_modules.recipe_keys import block_where
from custom_modules.vision_encoder.settings import parse_settings, resolve_paths
from custom_modules.vision_encoder.training import (SaveVisionEncoderCallback, apply_stage, param_groups,
                                                    prepare_model)

logger = logging.get_logger(__name__)


def install(section: dict, args: dict) -> list:
    """Patch LLaMA-Factory for the encoder described by `section`; returns the callbacks for run_exp.
    `args`: the recipe's LLaMA-Factory arguments (a relative merger_path is read in their output_dir)."""
    where = block_where("vision_encoder")
    settings = resolve_paths(parse_settings(section, where), where, output_dir=args.get("output_dir"))
    loader = importlib.import_module("llamafactory.model.loader")
    original_patch_processor = loader.patch_processor
    original_init_adapter = loader.init_adapter

    def patch_processor(processor, tokenizer, model_args):
        original_patch_processor(processor, tokenizer, model_args)
        attach_image_processor(processor, settings, processor.image_processor.merge_size)

    def init_adapter(config, model, model_args, finetuning_args, is_trainable):
        prepare_model(model, settings)
        model = original_init_adapter(config, model, model_args, finetuning_args, is_trainable)
        if is_trainable:
            counts = apply_stage(model, settings)
            logger.info_rank0(f"vision_encoder stage {settings.stage} trainable parameters: {counts}")
        return model

    loader.patch_processor = patch_processor
    loader.init_adapter = init_adapter
    install_param_groups(lambda model, lr, weight_decay: param_groups(model, settings, lr, weight_decay),
                         any((settings.merger_lr, settings.encoder_lr, settings.lm_lr)), where)
    return [SaveVisionEncoderCallback(settings)]
