"""Put a custom encoder + SimpleVisionMerger where Qwen3-VL expects its vision tower (`model.model.visual`).

Qwen3VLModel.get_image_features calls `visual(pixel_values, grid_thw=...)`, reads `pooler_output` (all images'
tokens concatenated, LM width) and `deepstack_features`, and splits per image by
`grid_thw.prod(-1) // visual.spatial_merge_size**2`. The adapter answers that interface with N encoder tokens
per image and no DeepStack features (deepstack_visual_indexes = []), so forward, generate and loss run unchanged.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers.models.qwen3_vl.modeling_qwen3_vl import BaseModelOutputWithDeepstackFeatures

from custom_modules.vision_encoder.encoders import Encoder, build_encoder, image_spec
from custom_modules.vision_encoder.merger import SimpleVisionMerger
from custom_modules.vision_encoder.settings import VisionEncoderSettings


class VisionEncoderAdapter(nn.Module):
    """`encoder` (frozen or LoRA) -> patch tokens -> `merger` -> LM embeddings, behind Qwen3-VL's visual API."""

    def __init__(self, encoder: Encoder, merger: SimpleVisionMerger, spatial_merge_size: int, tokens_per_image: int):
        super().__init__()
        self.encoder = encoder.module
        self.merger = merger
        self.spatial_merge_size = spatial_merge_size
        self.tokens_per_image = tokens_per_image
        self._tokens = encoder.tokens

    @property
    def dtype(self) -> torch.dtype:
        return next(self.encoder.parameters()).dtype

    def forward(self, hidden_states: torch.Tensor, grid_thw: torch.Tensor | None = None, **kwargs):
        tokens = self._tokens(self.encoder, hidden_states)
        if tokens.shape[1] != self.tokens_per_image:
            raise ValueError(f"the encoder returned {tokens.shape[1]} tokens per image, the processor announced "
                             f"{self.tokens_per_image}: image_size / patch_size / prefix_tokens disagree")
        if grid_thw is not None:
            announced = grid_thw.prod(-1) // self.spatial_merge_size**2
            if bool((announced != tokens.shape[1]).any()):
                raise ValueError(f"image_grid_thw announces {announced.tolist()} tokens per image but the encoder "
                                 f"gives {tokens.shape[1]}: the processor is not this encoder's")
        merged = self.merger(tokens.to(self.merger.norm.weight.dtype))
        return BaseModelOutputWithDeepstackFeatures(
            last_hidden_state=tokens, pooler_output=merged.flatten(0, 1), deepstack_features=[])


def qwen3_vl_core(model: nn.Module) -> nn.Module:
    """The Qwen3VLModel inside a Qwen3VLForConditionalGeneration (or the model itself)."""
    if getattr(model.config, "model_type", None) != "qwen3_vl":
        raise ValueError(f"the custom vision encoder supports Qwen3-VL only, got model_type "
                         f"{getattr(model.config, 'model_type', None)!r}")
    return model.model if hasattr(model, "lm_head") else model


def attach_vision_encoder(model: nn.Module, settings: VisionEncoderSettings,
                          pretrained: bool = True) -> VisionEncoderAdapter:
    """Replace the Qwen3-VL vision tower of `model` in place; the merger reads its sizes from the configs.
    `pretrained=False`: the encoder built from its config, without its weights (qvr-plan, on the meta device)."""
    core = qwen3_vl_core(model)
    dtype = core.language_model.embed_tokens.weight.dtype
    encoder = build_encoder(settings, dtype, pretrained)
    merger = SimpleVisionMerger(encoder.hidden_size, model.config.text_config.hidden_size, settings.merger,
                                settings.merger_hidden_size).to(dtype)
    adapter = VisionEncoderAdapter(encoder, merger, model.config.vision_config.spatial_merge_size,
                                   image_spec(settings).tokens_per_image)
    adapter.to(core.language_model.embed_tokens.weight.device)
    core.visual = adapter
    model.config.vision_config.deepstack_visual_indexes = []
    return adapter
