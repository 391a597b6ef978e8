"""LoRA for a forgery mode outside the trainers (our loop, the GPU benchmark): the chosen ViT blocks and/or the
LM attention, exactly the modules the recipes name for LLaMA-Factory (lora_target) and ms-swift (target_regex)."""
from __future__ import annotations

import torch

from custom_modules.forgery.checkpoint import attach_for_training
from custom_modules.forgery.settings import ForgerySettings, resolve_blocks
from custom_modules.forgery.vit import find_visual, lora_targets


def prepare_model(model, settings: ForgerySettings, tokenizer=None, lora_rank: int = 8, lora_alpha: int = 16):
    """LoRA on the mode's parts (chosen ViT blocks and/or LM attention), then the forgery modules."""
    spec = settings.spec
    _, vit_blocks = resolve_blocks(settings, len(find_visual(model).blocks))
    targets = lora_targets(model.config.model_type, vit_blocks if spec.vit_lora else (), spec.lm_lora)
    if targets:
        from peft import LoraConfig, get_peft_model

        names = [name for name, module in model.named_modules()
                 if isinstance(module, torch.nn.Linear) and any(name.endswith("." + t) for t in targets)]
        model = get_peft_model(model, LoraConfig(r=lora_rank, lora_alpha=lora_alpha, lora_dropout=0.0,
                                                 target_modules=names))
    else:
        model.requires_grad_(False)
    return model, attach_for_training(model, settings, tokenizer)
