"""The `qwenvl_recipes: {vision_encoder: {...}}` section of a recipe, parsed into one checked dataclass."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path

from custom_modules.recipe_keys import setting_key
from qwenvl_recipes.settings import parse_dataclass

ENCODER_KINDS = ("dinov2", "timm", "module")
MERGER_KINDS = ("mlp", "linear")
ENCODER_TRAINING = ("frozen", "lora", "full")
STAGES = (1, 2)


@dataclass
class VisionEncoderSettings:
    """How the custom encoder is built and trained; sizes left as None are read from the encoder itself.

    encoder: `dinov2` (a Hugging Face Dinov2Model such as microsoft/rad-dino), `timm` (a timm model name) or
    `module` ("package.module:factory", a callable returning a torch module that maps (B, 3, H, W) to (B, N, D)).
    """

    encoder: str = field(metadata={"choices": ENCODER_KINDS})
    encoder_path: str
    stage: int = field(default=1, metadata={"choices": STAGES})
    # stage 2 only: `lora` trains the LoRA the trainer puts on the encoder, `full` the whole encoder (a PEFT
    # modules_to_save: `visual.encoder` in additional_target / modules_to_save), at encoder_lr (ms-swift: vit_lr)
    encoder_training: str = field(default="frozen", metadata={"choices": ENCODER_TRAINING})
    merger: str = field(default="mlp", metadata={"choices": MERGER_KINDS})
    merger_hidden_size: int | None = None  # mlp width; default: the LM hidden size
    merger_path: str | None = None  # a saved `vision_encoder/` folder (stage 1 output) that initialises the merger
    image_size: int | None = None  # square input side in pixels
    patch_size: int | None = None
    image_mean: list[float] | None = None
    image_std: list[float] | None = None
    # leading non-patch tokens (CLS, registers) dropped from the encoder output; dinov2: 1 (its CLS), 0 keeps the
    # CLS token for the merger (patches + 1 tokens per image)
    prefix_tokens: int | None = None
    merger_lr: float | None = None  # None: the trainer's learning_rate (LLaMA-Factory; swift uses aligner_lr)
    encoder_lr: float | None = None  # (swift: vit_lr)
    lm_lr: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def parse_settings(raw: dict, source: str = "qwenvl_recipes.vision_encoder") -> VisionEncoderSettings:
    """Check a settings dict from a recipe; errors name `source` and the offending setting."""
    settings = parse_dataclass(VisionEncoderSettings, raw, source, lambda key: setting_key(source, key))
    for required in ("encoder", "encoder_path"):
        if not getattr(settings, required):
            raise ValueError(f"{setting_key(source, required)} is required")
    if settings.stage == 1 and settings.encoder_training != "frozen":
        raise ValueError(f"{setting_key(source, 'encoder_training')}={settings.encoder_training!r}: "
                         f"stage 1 trains the merger only")
    for name in ("image_mean", "image_std"):
        value = getattr(settings, name)
        if value is not None and len(value) != 3:
            raise ValueError(f"{setting_key(source, name)}: expected a list of 3 numbers, got {value!r}")
    return settings


def resolve_paths(settings: VisionEncoderSettings, source: str, output_dir: str | None = None) -> VisionEncoderSettings:
    """The settings with merger_path following the run, checked; errors name the key that sets it.

    A relative merger_path is read in `output_dir` (stage 1 writes next to stage 2:
    ../<stage 1 recipe>/vision_encoder); without a directory (ms-swift, whose own paths are relative to the
    working directory) it is used as written."""
    path = settings.merger_path
    if path and output_dir and not Path(path).is_absolute():
        path = os.path.normpath(Path(output_dir) / path)  # `output_dir/../stage1` before output_dir exists
    if path and not (Path(path) / "merger.safetensors").is_file():
        raise FileNotFoundError(f"{setting_key(source, 'merger_path')}: no merger.safetensors in {path} (run stage 1 "
                                f"first, or point the key at its output_dir/vision_encoder)")
    return dataclasses.replace(settings, merger_path=path)
