"""What a checkpoint of a forgery recipe holds at full size, computed on the meta device (nothing is allocated or
downloaded): the parameters that train, saved in float32 twice (the trainer's model.safetensors, which its resume
loads, and forgery_head.safetensors, which evaluation and T4/T5 load), AdamW's two float32 moments of them
(optimizer.pt), and the whole model in its dtype, which a full save would write instead.

    python -m tools.checkpoint_size --model qwen2_5_vl_7b \
        --recipe recipes/forgery/llamafactory/qwen2_5_vl_7b_head_pretrain.yaml
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch
import yaml

from custom_modules.forgery.attach import attach
from custom_modules.forgery.settings import ForgerySettings, parse_settings
from custom_modules.integrations.env_settings import recipe_features
from custom_modules.recipe_keys import BLOCK_KEY
from custom_modules.model_configs import full_size_config


def recipe_settings(recipe: str | Path) -> ForgerySettings:
    """The forgery settings of a recipe of either trainer."""
    config = yaml.safe_load(Path(recipe).read_text(encoding="utf-8"))
    block = config[BLOCK_KEY] if BLOCK_KEY in config else recipe_features(config, str(recipe))
    return parse_settings(block["forgery"])


def checkpoint_bytes(config, settings: ForgerySettings, dtype=torch.bfloat16) -> dict[str, int]:
    """{trained parameters, bytes of them in float32, bytes of AdamW's moments, bytes of the whole model in
    `dtype`} for a frozen base with the forgery modules of `settings` (a mode that trains no LoRA)."""
    from transformers import AutoModelForImageTextToText

    if settings.spec.vit_lora or settings.spec.lm_lora:
        raise ValueError(f"mode {settings.mode} trains LoRA: its checkpoints are adapters, not a frozen base")
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config, dtype=dtype)
    model.requires_grad_(False)
    modules = attach(model, settings)
    trained = sum(param.numel() for param in modules.parameters() if param.requires_grad)
    whole = sum(value.numel() * value.element_size() for name, value in model.state_dict().items()
                if not name.startswith("forgery."))
    return {"trained_parameters": trained, "trained_bytes": 4 * trained, "optimizer_bytes": 8 * trained,
            "whole_model_bytes": whole}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a tools.model_configs.FULL_SIZE id, e.g. qwen2_5_vl_7b")
    parser.add_argument("--recipe", required=True, help="a forgery recipe of either trainer (its forgery settings)")
    args = parser.parse_args(argv)
    sizes = checkpoint_bytes(full_size_config(args.model), recipe_settings(args.recipe))
    mb = 1e6
    print(f"trained parameters: {sizes['trained_parameters']:,}\n"
          f"model.safetensors and forgery_head.safetensors (float32): {sizes['trained_bytes'] / mb:.1f} MB each\n"
          f"optimizer.pt (AdamW's two moments): {sizes['optimizer_bytes'] / mb:.1f} MB\n"
          f"the whole model (bf16), which a full save writes: {sizes['whole_model_bytes'] / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
