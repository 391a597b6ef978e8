"""A custom vision encoder (any (B, N, D) encoder, e.g. RAD-DINO) + SimpleVisionMerger inside Qwen3-VL.

settings.py   the recipe section `qwenvl_recipes: {vision_encoder: {...}}`
encoders.py   encoder kinds (dinov2, timm, module): image spec + loader
merger.py     SimpleVisionMerger (LayerNorm + MLP/Linear, one token per token)
adapter.py    the module that replaces `model.model.visual`, DeepStack off
processing.py the image processor whose image_grid_thw makes the prompt carry N placeholders
training.py   stages, per-part learning rates, save / reload, the save callback
"""

from custom_modules.vision_encoder.settings import parse_settings as validate_config  # the recipe tests' hook

__all__ = ["validate_config"]
