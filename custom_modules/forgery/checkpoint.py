"""A forgery checkpoint is one directory: PEFT adapters (when any) + forgery_head.safetensors + forgery_settings.json
(the settings, and how training sized the images: scoring feeds them the same way)."""
from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save

from custom_modules.checkpoints import load_adapter
from qwenvl_recipes.io import atomic_open, read_json, write_text_atomic
from custom_modules.forgery.attach import ForgeryModules, attach, find_modules
from custom_modules.forgery.data import parse_training_images
from custom_modules.forgery.settings import ForgerySettings, parse_settings

HEAD_FILE = "forgery_head.safetensors"
SETTINGS_FILE = "forgery_settings.json"
TRAINING_IMAGES = "training_images"  # SETTINGS_FILE's key beside the settings: data.TrainingImages, or null
BEST_DIR = "best_by_AUROC"  # the checkpoint kept by best validation AUROC, under the output dir
logger = logging.getLogger(__name__)


def save_head(modules: ForgeryModules, out_dir: str | os.PathLike) -> None:
    """Head/fusion weights, the settings that built them and how training sized images (what T4/T5 and
    evaluation load)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in modules.state_dict().items()}
    with atomic_open(out_dir / HEAD_FILE, "wb") as f:
        f.write(save(state))
    images = modules.training_images
    saved = {**dataclasses.asdict(modules.settings), TRAINING_IMAGES: dataclasses.asdict(images) if images else None}
    write_text_atomic(out_dir / SETTINGS_FILE, json.dumps(saved, indent=1) + "\n")


def save_checkpoint(model: torch.nn.Module, out_dir: str | os.PathLike) -> None:
    """Adapters (PEFT models) and head weights into the same directory."""
    model = getattr(model, "module", model)
    if hasattr(model, "peft_config"):
        model.save_pretrained(str(out_dir))
    save_head(find_modules(model), out_dir)


def load_head_weights(modules: ForgeryModules, ckpt_dir: str | os.PathLike, only_head: bool = False) -> None:
    """Load saved forgery weights (only the detection head's when `only_head`: T4/T5 take a pretrained head)."""
    path = Path(ckpt_dir) / HEAD_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no forgery head weights (not a checkpoint of a forgery run)")
    state = load_file(str(path))
    if only_head:
        state = {k[len("head."):]: v for k, v in state.items() if k.startswith("head.")}
        missing, unexpected = modules.head.load_state_dict(state, strict=False)
    else:
        missing, unexpected = modules.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not fit this head (missing {missing[:4]}, unexpected "
                         f"{unexpected[:4]}); head_blocks/head_dim must match the checkpoint's {SETTINGS_FILE}")


def attach_for_training(model: torch.nn.Module, settings: ForgerySettings, tokenizer=None) -> ForgeryModules:
    """attach + the pretrained head of frozen modes."""
    modules = attach(model, settings, tokenizer)
    if settings.spec.head and not settings.spec.train_head:
        load_head_weights(modules, settings.head_checkpoint, only_head=True)
    return modules


def load_checkpoint(model: torch.nn.Module, ckpt_dir: str | os.PathLike, tokenizer=None):
    """Base model + checkpoint dir -> (model with adapters and head, modules) ready for evaluation."""
    ckpt_dir = Path(ckpt_dir)
    path = ckpt_dir / SETTINGS_FILE
    saved = read_json(path, dict, "a forgery checkpoint's settings")
    if TRAINING_IMAGES not in saved:
        logger.warning(f"{path} records no {TRAINING_IMAGES} (saved before checkpoints recorded how training sized "
                       "images): scoring assumes the processor's own pixel limits, no resize before it; for training's "
                       f'grid add "{TRAINING_IMAGES}": {{"resize": "llamafactory" or "swift", "min_pixels": N, '
                       '"max_pixels": N} with the recipe\'s limits')
    training_images = parse_training_images(saved.pop(TRAINING_IMAGES, None), f"{path}: {TRAINING_IMAGES}")
    settings = parse_settings(saved, where=str(path))
    if (ckpt_dir / "adapter_config.json").is_file():
        model = load_adapter(model, ckpt_dir)
    modules = attach(model, settings, tokenizer)
    modules.training_images = training_images
    load_head_weights(modules, ckpt_dir)
    return model, modules
