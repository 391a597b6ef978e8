"""LoRA of a forgery mode: placed outside the trainers (our loop, the GPU benchmark) on the chosen ViT blocks and/or
the LM attention, exactly the modules the recipes name for LLaMA-Factory (lora_target) and ms-swift (target_regex);
and, inside the trainers, where their LoRA (the recipe's targets) disagrees with the mode."""
from __future__ import annotations

import re

import torch

from custom_modules.forgery.checkpoint import attach_for_training
from custom_modules.forgery.settings import ForgerySettings, resolve_blocks
from custom_modules.forgery.vit import find_visual, lora_targets
from custom_modules.recipe_keys import setting_key

VIT_BLOCK = re.compile(r"(?:^|\.)visual\.blocks\.(\d+)\.")
LANGUAGE_MODEL = re.compile(r"(?:^|\.)language_model\.")


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


def lora_module_names(model: torch.nn.Module) -> list[str]:
    """Names of the modules carrying LoRA (PEFT's lora_A), whichever trainer placed it."""
    return [name for name, module in model.named_modules()
            if isinstance(getattr(module, "lora_A", None), torch.nn.ModuleDict)]


def placement_warnings(model: torch.nn.Module, settings: ForgerySettings, where: str) -> list[str]:
    """One line per disagreement between the LoRA in `model` (the recipe's targets) and the mode: ViT blocks with
    LoRA other than the mode's (vit_lora_blocks, by default the blocks the head reads; none in a mode without ViT
    LoRA), LM LoRA in a mode that does not train the LM, or none in one that does. `where` names the settings."""
    spec, mode = settings.spec, settings.mode
    head, lora = resolve_blocks(settings, len(find_visual(model).blocks))
    names = lora_module_names(model)
    vit = sorted({int(match.group(1)) for name in names if (match := VIT_BLOCK.search(name))})
    lm = any(LANGUAGE_MODEL.search(name) for name in names)
    warnings = []
    if spec.vit_lora and vit != list(lora):
        warnings.append(f"forgery mode {mode}: LoRA sits on ViT blocks {vit}, but the head reads blocks {list(head)} "
                        f"({setting_key(where, 'head_blocks')}) and the mode expects LoRA on blocks {list(lora)} "
                        f"({setting_key(where, 'vit_lora_blocks')}, default: the head blocks): "
                        f"the recipe's LoRA targets and the settings disagree")
    elif not spec.vit_lora and vit:
        warnings.append(f"forgery mode {mode} trains no ViT LoRA, but the recipe's LoRA targets put LoRA on ViT "
                        f"blocks {vit}")
    if spec.lm_lora and not lm:
        warnings.append(f"forgery mode {mode} trains LoRA on the language model's attention, but the recipe's LoRA "
                        f"targets put none in the language model")
    elif lm and not spec.lm_lora:
        warnings.append(f"forgery mode {mode} does not train the language model"
                        f"{'' if spec.lm else ' (it does not run it)'}, but the recipe's LoRA targets put LoRA in it")
    return warnings
