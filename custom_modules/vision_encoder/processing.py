"""The image processor of a custom encoder, shaped so Qwen3-VL's prompt expansion counts its tokens.

Every Qwen3-VL prompt expander (transformers' Qwen3VLProcessor, LLaMA-Factory's qwen3_vl plugin, ms-swift's
qwen3_vl template) writes `image_grid_thw.prod() // merge_size**2` `<|image_pad|>` tokens per image and builds
M-RoPE positions from the grid divided by merge_size. So for an encoder with a g x g patch grid this processor
reports `image_grid_thw = [1, g * merge_size, g * merge_size]`: exactly g*g placeholders, laid out g x g. With
leading tokens kept (the CLS token: g*g + 1 tokens, which the g x g layout cannot hold) it reports one row,
`[1, merge_size, (g*g + 1) * merge_size]`: the placeholders count right, M-RoPE numbers them in one line.
Pixels are the encoder's own input: resize shortest edge, centre crop to a square, its own mean / std.
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers.feature_extraction_utils import BatchFeature
from transformers.image_processing_utils import BaseImageProcessor

from custom_modules.vision_encoder.encoders import image_spec
from custom_modules.vision_encoder.settings import VisionEncoderSettings


class EncoderImageProcessor(BaseImageProcessor):
    model_input_names = ["pixel_values", "image_grid_thw"]

    def __init__(self, image_size: int = 518, patch_size: int = 14, merge_size: int = 2,
                 image_mean=(0.5, 0.5, 0.5), image_std=(0.5, 0.5, 0.5), temporal_patch_size: int = 2,
                 leading_tokens: int = 0, **kwargs):
        super().__init__(**kwargs)
        self.image_size = image_size
        self.patch_size = patch_size
        self.merge_size = merge_size
        self.leading_tokens = leading_tokens  # tokens the merger gets before the patches (the CLS token kept)
        self.temporal_patch_size = temporal_patch_size  # read by the trainers' video code paths only
        self.image_mean = list(image_mean)
        self.image_std = list(image_std)

    def _pixels(self, image) -> np.ndarray:
        """One image -> (3, S, S) float32: shortest edge to S, centre crop, scale to [0, 1], normalise."""
        image = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image))
        image = image.convert("RGB")
        side = self.image_size
        scale = side / min(image.size)
        width, height = max(side, round(image.width * scale)), max(side, round(image.height * scale))
        image = image.resize((width, height), Image.Resampling.BICUBIC)
        left, top = (width - side) // 2, (height - side) // 2
        image = image.crop((left, top, left + side, top + side))
        array = np.asarray(image, dtype=np.float32) / 255.0
        array = (array - np.asarray(self.image_mean, np.float32)) / np.asarray(self.image_std, np.float32)
        return array.transpose(2, 0, 1)

    def grid_thw(self) -> list[int]:
        """One image's [t, h, w]: h * w / merge_size**2 = the encoder's tokens, in the encoder's g x g layout
        (one row when leading tokens are kept)."""
        side = self.image_size // self.patch_size
        if self.leading_tokens:
            return [1, self.merge_size, (side * side + self.leading_tokens) * self.merge_size]
        return [1, side * self.merge_size, side * self.merge_size]

    def preprocess(self, images, return_tensors=None, **ignored) -> BatchFeature:
        # Trainers pass their own resize options (do_resize, min/max pixels): the encoder's fixed input wins.
        images = images if isinstance(images, (list, tuple)) else [images]
        images = [image for item in images for image in (item if isinstance(item, (list, tuple)) else [item])]
        data = {
            "pixel_values": np.stack([self._pixels(image) for image in images]),
            "image_grid_thw": np.asarray([self.grid_thw()] * len(images), dtype=np.int64),
        }
        return BatchFeature(data=data, tensor_type=return_tensors)


def encoder_image_processor(settings: VisionEncoderSettings, merge_size: int) -> EncoderImageProcessor:
    spec = image_spec(settings)
    return EncoderImageProcessor(image_size=spec.image_size, patch_size=spec.patch_size, merge_size=merge_size,
                                 image_mean=spec.image_mean, image_std=spec.image_std,
                                 leading_tokens=spec.leading_tokens)


def attach_image_processor(processor, settings: VisionEncoderSettings, merge_size: int):
    """Swap a Qwen3-VL processor's image processor for the encoder's (in place); returns the processor."""
    processor.image_processor = encoder_image_processor(settings, merge_size)
    return processor
