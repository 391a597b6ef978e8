"""Stages, per-part learning rates, and the saved form of a trained custom encoder.

Stage 1 trains the merger only (encoder and LM frozen). Stage 2 trains the merger and the LM's LoRA, plus the
encoder's LoRA when `encoder_training: lora`, or the whole encoder when `full` (a PEFT modules_to_save, so the
adapter carries it). Whatever the trainer, a run's output folder holds `vision_encoder/` (settings.json: the
encoder choice, merger kind and token layout; merger.safetensors) next to the trainer's own files (its LoRA adapter
in stage 2), and `load_trained` rebuilds the same model from base model + that folder.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import TrainerCallback

from custom_modules import learning_rates
from custom_modules.checkpoints import load_adapter, save_trained_parts_only, transformers_model
from custom_modules.vision_encoder.adapter import attach_vision_encoder, qwen3_vl_core
from qwenvl_recipes.io import staged_dir
from custom_modules.vision_encoder.settings import VisionEncoderSettings, parse_settings

SAVED_FOLDER = "vision_encoder"
MERGER = "visual.merger."
ENCODER = "visual.encoder."
PEFT_COPY = "modules_to_save.default."  # PEFT trains a copy of a modules_to_save module under this name


def part_of(name: str) -> str:
    """Which part a parameter belongs to: merger, encoder or lm."""
    if MERGER in name:
        return "merger"
    if ENCODER in name:
        return "encoder"
    return "lm"


def prepare_model(model: nn.Module, settings: VisionEncoderSettings, pretrained: bool = True) -> nn.Module:
    """Attach the encoder + merger to a loaded Qwen3-VL, the merger initialised from `merger_path` if set
    (`pretrained=False`: neither weights read, for qvr-plan on the meta device)."""
    adapter = attach_vision_encoder(model, settings, pretrained)
    if pretrained and settings.merger_path:
        adapter.merger.load_state_dict(load_file(str(Path(settings.merger_path) / "merger.safetensors")))
    return model


def trains(name: str, settings: VisionEncoderSettings) -> bool:
    """Whether the stage trains the parameter `name` (the model after the trainer added its LoRA / copies)."""
    part = part_of(name)
    if part == "merger":
        return "original_module." not in name  # PEFT keeps an untrained original beside its copy
    if settings.stage == 1:
        return False
    if part == "encoder":
        return ("lora_" in name if settings.encoder_training == "lora"
                else PEFT_COPY in name if settings.encoder_training == "full" else False)
    return "lora_" in name


def apply_stage(model: nn.Module, settings: VisionEncoderSettings) -> dict[str, int]:
    """Set requires_grad for the stage (after the trainer has added its LoRA); returns trainable counts per part."""
    counts = {"merger": 0, "encoder": 0, "lm": 0}
    for name, param in model.named_parameters():
        train = trains(name, settings)
        param.requires_grad_(train)
        counts[part_of(name)] += param.numel() if train else 0
    if settings.stage == 2 and counts["lm"] == 0:
        raise ValueError("vision_encoder stage 2 trains the LM's LoRA, but the model has no LoRA parameters in the "
                         "LM: use LoRA fine-tuning (finetuning_type: lora / tuner_type: lora)")
    if settings.stage == 2 and settings.encoder_training == "lora" and counts["encoder"] == 0:
        raise ValueError("vision_encoder.encoder_training is lora, but no LoRA sits on the encoder: add its linear "
                         "layers (Dinov2: query, value) to the LoRA target modules")
    if settings.stage == 2 and settings.encoder_training == "full" and counts["encoder"] == 0:
        raise ValueError("vision_encoder.encoder_training is full, but the encoder is not trained whole: add "
                         "visual.encoder to additional_target (LLaMA-Factory) / modules_to_save (ms-swift), so PEFT "
                         "trains it and saves it with the adapter")
    return counts


def stage_warnings(model: nn.Module, settings: VisionEncoderSettings, where: str) -> list[str]:
    """One line per part (merger, encoder, LM) trained otherwise than the stage says: whole, with LoRA, or not at
    all (ms-swift's own flags decide what trains there; LLaMA-Factory runs apply_stage). `where` names the settings."""
    expected = {"merger": {"whole"}, "encoder": set(), "lm": set()}
    if settings.stage == 2:
        expected.update(lm={"lora"}, encoder={"frozen": set(), "lora": {"lora"}, "full": {"whole"}}[
            settings.encoder_training])
    actual: dict[str, set] = {part: set() for part in expected}
    for name, param in model.named_parameters():
        if param.requires_grad:
            actual[part_of(name)].add("lora" if "lora_" in name else "whole")

    def training(kinds: set, what: str) -> str:
        ways = " and ".join({"lora": "with LoRA", "whole": "whole"}[kind] for kind in sorted(kinds))
        return f"trains {what} {ways}" if kinds else f"freezes {what}"

    stage = f"{where} stage {settings.stage} (encoder_training {settings.encoder_training})"
    return [f"{stage} {training(expected[part], f'the {part}')}, but this run {training(actual[part], 'it')}"
            for part in expected if actual[part] != expected[part]]


def param_groups(model: nn.Module, settings: VisionEncoderSettings, learning_rate: float,
                 weight_decay: float = 0.0) -> list[dict]:
    """Optimizer groups with the merger / encoder / LM learning rates (unset ones: `learning_rate`)."""
    rates = {"merger": settings.merger_lr, "encoder": settings.encoder_lr, "lm": settings.lm_lr}
    return learning_rates.param_groups(model, part_of, rates, learning_rate, weight_decay)


def merger_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The merger weights the model runs with (PEFT's trained copy when the merger is a modules_to_save)."""
    state = {}
    for name, param in model.named_parameters():
        if MERGER in name and "original_module." not in name:
            state[name.split(MERGER, 1)[1].replace(PEFT_COPY, "")] = param.detach().cpu().contiguous()
    if not state:
        raise ValueError("the model has no custom vision merger (visual.merger): was prepare_model applied?")
    return state


def save_vision_encoder(model: nn.Module, settings: VisionEncoderSettings, output_dir: str | os.PathLike) -> Path:
    """Write `output_dir/vision_encoder/` (settings.json + merger.safetensors) atomically; returns its path."""
    target = Path(output_dir) / SAVED_FOLDER
    with staged_dir(target) as staging:
        save_file(merger_state(model), str(staging / "merger.safetensors"))
        (staging / "settings.json").write_text(json.dumps(settings.to_dict(), indent=2, sort_keys=True) + "\n")
    return target


def has_saved_encoder(output_dir: str | os.PathLike) -> bool:
    """Whether `output_dir` holds a custom encoder's saved `vision_encoder/` (what load_trained reads)."""
    return (Path(output_dir) / SAVED_FOLDER / "settings.json").is_file()


def saved_settings(output_dir: str | os.PathLike) -> VisionEncoderSettings:
    path = Path(output_dir) / SAVED_FOLDER / "settings.json"
    if not has_saved_encoder(output_dir):
        raise FileNotFoundError(f"{path}: not a custom vision encoder output (no {SAVED_FOLDER}/settings.json)")
    return parse_settings(json.loads(path.read_text()), source=str(path))


def load_trained(base_model: str | os.PathLike, output_dir: str | os.PathLike, dtype=torch.float32):
    """(model, processor) of a trained run: base Qwen3-VL + saved encoder/merger + the LoRA adapter if any."""
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from custom_modules.vision_encoder.processing import attach_image_processor

    output_dir = Path(output_dir)
    settings = saved_settings(output_dir)
    settings.merger_path = str(output_dir / SAVED_FOLDER)
    model = Qwen3VLForConditionalGeneration.from_pretrained(base_model, dtype=dtype)
    prepare_model(model, settings)
    if (output_dir / "adapter_config.json").exists():
        model = load_adapter(model, output_dir)
    processor = AutoProcessor.from_pretrained(base_model)
    adapter = qwen3_vl_core(transformers_model(model)).visual
    attach_image_processor(processor, settings, adapter.spatial_merge_size)
    return model.eval(), processor


class SaveVisionEncoderCallback(TrainerCallback):
    """Writes `vision_encoder/` into every checkpoint and into the output folder at the end of training; when only
    the merger trains (stage 1), the trainer's own checkpoints hold the merger alone."""

    def __init__(self, settings: VisionEncoderSettings):
        self.settings = settings

    def on_init_end(self, args, state, control, model=None, **kwargs):
        save_trained_parts_only(model, [qwen3_vl_core(transformers_model(model)).visual.merger], args)

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            save_vision_encoder(model, self.settings, Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            save_vision_encoder(model, self.settings, args.output_dir)
