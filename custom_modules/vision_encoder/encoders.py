"""Encoders that return (B, N, D_vis) patch tokens, one entry per kind (a registry is a dict).

For each kind, `image_spec` says what the encoder eats (square input side, patch size, mean / std) and how many
tokens it gives per image, from its config alone, so a trainer can build the image processor before the weights
load; `build` loads the module (or, `pretrained=False`, builds it from its config: what `qvr-plan` does on the meta
device) and says how to pull the tokens out of its output: the patch tokens, after the leading tokens (CLS) the
recipe keeps (`prefix_tokens` says how many it drops). Sizes a recipe leaves unset come from the encoder's own
config / preprocessor (RAD-DINO ships its own normalisation).
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from custom_modules.vision_encoder.settings import VisionEncoderSettings

logger = logging.getLogger(__name__)

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


@dataclass
class ImageSpec:
    image_size: int
    patch_size: int
    image_mean: list[float]
    image_std: list[float]
    leading_tokens: int = 0  # tokens before the patches that reach the merger (the CLS token kept)

    @property
    def tokens_per_image(self) -> int:
        return (self.image_size // self.patch_size) ** 2 + self.leading_tokens


@dataclass
class Encoder:
    module: nn.Module
    tokens: Callable[[nn.Module, torch.Tensor], torch.Tensor]  # (module, pixel_values) -> (B, N, D)
    hidden_size: int


def _preprocessor_dict(path: str) -> dict:
    """The encoder's own preprocessor_config.json, or {} when it has none."""
    from transformers.image_processing_base import ImageProcessingMixin

    try:
        return ImageProcessingMixin.get_image_processor_dict(path)[0]
    except OSError:
        logger.warning("%s has no preprocessor_config.json: ImageNet normalisation unless the recipe sets it", path)
        return {}


def _side(size) -> int | None:
    """A square side from a preprocessor `crop_size` / `size` entry (int or dict)."""
    if isinstance(size, dict):
        return size.get("height") or size.get("shortest_edge")
    return size


def _spec(settings: VisionEncoderSettings, image_size, patch_size, mean, std, leading_tokens: int = 0) -> ImageSpec:
    return ImageSpec(settings.image_size or image_size, settings.patch_size or patch_size,
                     list(settings.image_mean or mean), list(settings.image_std or std), leading_tokens)


def _prefix(settings: VisionEncoderSettings, default: int) -> int:
    return settings.prefix_tokens if settings.prefix_tokens is not None else default


DINOV2_LEADING = 1  # a Dinov2Model's output: the CLS token, then the patches


def _dinov2_config(settings: VisionEncoderSettings):
    from transformers import Dinov2Config

    try:
        return Dinov2Config.from_pretrained(settings.encoder_path)
    except OSError as error:
        raise OSError(f"vision_encoder encoder_path {settings.encoder_path!r} is neither a local folder with "
                      f"config.json nor reachable on the hub ({error}). Download it once (`hf download "
                      f"microsoft/rad-dino --local-dir DIR`) and set encoder_path to DIR: "
                      f"qwenvl_recipes.vision_encoder.encoder_path in a LLaMA-Factory recipe, "
                      f"QVR_VISION_ENCODER_ENCODER_PATH in an ms-swift recipe's ENV (or the shell)") from error


def dinov2_spec(settings: VisionEncoderSettings) -> ImageSpec:
    config = _dinov2_config(settings)
    dropped = _prefix(settings, DINOV2_LEADING)
    if dropped > DINOV2_LEADING:
        raise ValueError(f"vision_encoder prefix_tokens {dropped}: a dinov2 encoder gives {DINOV2_LEADING} token (CLS) "
                         f"before its patches; 1 drops it, 0 keeps it")
    preprocessor = _preprocessor_dict(settings.encoder_path)
    return _spec(settings, _side(preprocessor.get("crop_size")) or config.image_size, config.patch_size,
                 preprocessor.get("image_mean") or IMAGENET_MEAN, preprocessor.get("image_std") or IMAGENET_STD,
                 DINOV2_LEADING - dropped)


def build_dinov2(settings: VisionEncoderSettings, dtype: torch.dtype, pretrained: bool = True) -> Encoder:
    from transformers import Dinov2Model

    module = (Dinov2Model.from_pretrained(settings.encoder_path, dtype=dtype) if pretrained
              else Dinov2Model(_dinov2_config(settings)).to(dtype))
    prefix = _prefix(settings, DINOV2_LEADING)
    # pixels positionally: a PEFT modules_to_save wrapper (encoder_training full) forwards only `x` by position
    return Encoder(module, lambda m, pixels: m(pixels).last_hidden_state[:, prefix:], module.config.hidden_size)


def timm_spec(settings: VisionEncoderSettings) -> ImageSpec:
    import timm

    config = timm.get_pretrained_cfg(settings.encoder_path).to_dict()
    return _spec(settings, config["input_size"][-1], settings.patch_size, config["mean"], config["std"])


def build_timm(settings: VisionEncoderSettings, dtype: torch.dtype, pretrained: bool = True) -> Encoder:
    import timm

    module = timm.create_model(settings.encoder_path, pretrained=pretrained, num_classes=0).to(dtype)
    prefix = _prefix(settings, module.num_prefix_tokens)
    return Encoder(module, lambda m, pixels: m.forward_features(pixels)[:, prefix:], module.num_features)


def module_spec(settings: VisionEncoderSettings) -> ImageSpec:
    if settings.image_size is None or settings.patch_size is None:
        raise ValueError(f"encoder {settings.encoder_path!r}: a `module` encoder needs image_size and patch_size")
    return _spec(settings, None, None, IMAGENET_MEAN, IMAGENET_STD)


def _last_hidden_state(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]


def build_module(settings: VisionEncoderSettings, dtype: torch.dtype, pretrained: bool = True) -> Encoder:
    """encoder_path "package.module:factory": factory() returns a module mapping (B, 3, H, W) -> (B, N, D) (with
    its weights, whatever `pretrained` says: the factory decides)."""
    module_name, _, factory_name = settings.encoder_path.partition(":")
    if not factory_name:
        raise ValueError(f"encoder_path {settings.encoder_path!r}: expected 'package.module:factory'")
    module = getattr(importlib.import_module(module_name), factory_name)().to(dtype)
    hidden_size = next((getattr(module, name) for name in ("num_features", "embed_dim", "hidden_size")
                        if isinstance(getattr(module, name, None), int)), None)
    if hidden_size is None:
        raise ValueError(f"encoder {settings.encoder_path!r}: the module needs an int hidden_size / embed_dim / "
                         "num_features attribute (its token width)")
    prefix = _prefix(settings, 0)
    return Encoder(module, lambda m, pixels: _last_hidden_state(m(pixels))[:, prefix:], hidden_size)


ENCODERS = {
    "dinov2": (dinov2_spec, build_dinov2),
    "timm": (timm_spec, build_timm),
    "module": (module_spec, build_module),
}


def image_spec(settings: VisionEncoderSettings) -> ImageSpec:
    spec = ENCODERS[settings.encoder][0](settings)
    if not spec.patch_size or spec.image_size % spec.patch_size:
        raise ValueError(f"encoder {settings.encoder_path!r}: image_size {spec.image_size} is not a multiple of "
                         f"patch_size {spec.patch_size}")
    return spec


def build_encoder(settings: VisionEncoderSettings, dtype: torch.dtype = torch.float32,
                  pretrained: bool = True) -> Encoder:
    return ENCODERS[settings.encoder][1](settings, dtype, pretrained)
