"""The `forgery` settings block of a recipe (`qwenvl_recipes: {forgery: {...}}`) and the six modes.

Modes (the seed study's T1-T5, plus the head warm-up that writes the checkpoint T4/T5 load):
  vit_lora_head       T1  ViT LoRA + detection head, trained jointly (no LM pass)
  lm_supervised       T2  LM LoRA only; P(positive word) at the answer position is the classifier
  hybrid              T3  ViT LoRA + head + fusion tokens into the LM + LM LoRA; score mixes head and LM
  frozen_head         T4  pretrained head loaded and frozen, ViT LoRA trained through it
  frozen_head_hybrid  T5  frozen pretrained head + fusion tokens + LM LoRA (+ ViT LoRA)
  head_pretrain           ViT frozen; classification only for `heatmap_start_step` steps, then + heatmap
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from custom_modules.recipe_keys import setting_key
from qwenvl_recipes.settings import parse_dataclass


@dataclass(frozen=True)
class ModeSpec:
    head: bool          # the detection head runs
    train_head: bool    # its weights train (False: loaded from head_checkpoint and frozen)
    fusion: bool        # head features enter the LM as extra tokens
    lm: bool            # the language model runs (answer loss, answer-word score)
    vit_lora: bool      # LoRA on the chosen ViT blocks
    lm_lora: bool       # LoRA on the LM attention projections


MODES = {
    "vit_lora_head": ModeSpec(head=True, train_head=True, fusion=False, lm=False, vit_lora=True, lm_lora=False),
    "lm_supervised": ModeSpec(head=False, train_head=False, fusion=False, lm=True, vit_lora=False, lm_lora=True),
    "hybrid": ModeSpec(head=True, train_head=True, fusion=True, lm=True, vit_lora=True, lm_lora=True),
    "frozen_head": ModeSpec(head=True, train_head=False, fusion=False, lm=False, vit_lora=True, lm_lora=False),
    "frozen_head_hybrid": ModeSpec(head=True, train_head=False, fusion=True, lm=True, vit_lora=True, lm_lora=True),
    "head_pretrain": ModeSpec(head=True, train_head=True, fusion=False, lm=False, vit_lora=False, lm_lora=False),
}
SEED_TASKS = {"T1": "vit_lora_head", "T2": "lm_supervised", "T3": "hybrid", "T4": "frozen_head",
              "T5": "frozen_head_hybrid"}


@dataclass(frozen=True)
class ForgerySettings:
    mode: str = field(metadata={"choices": tuple(MODES)})  # or T1-T5 (SEED_TASKS)
    head_blocks: tuple[int, ...] | None = None       # None: last block of each quarter (7B: 7, 15, 23, 31)
    vit_lora_blocks: tuple[int, ...] | None = None   # None: the head blocks
    head_dim: int = 256
    fusion_tokens: int = 4
    fusion_hidden_dropout: float = 0.1
    fusion_token_id: int = 151662                    # <|fim_pad|>: never in forgery prompts; its embedding is replaced
    cls_weight: float = 1.0
    heatmap_weight: float = 1.0
    lm_weight: float = 1.0
    heatmap_start_step: int = 0                      # classification-only warm-up steps (head pretraining)
    positive_response: str = "fake"
    negative_response: str = "real"
    score_mix: float = 0.5                           # hybrid score = mix * head + (1 - mix) * LM
    head_checkpoint: str | None = None               # dir holding forgery_head.safetensors (frozen modes)
    mask_size: int = 64                              # masks and heatmaps compared at mask_size x mask_size
    threshold: float = 0.5                           # image-level decision threshold for F1/accuracy
    eval_file: str | None = None                     # rows scored by the callback; best AUROC checkpoint kept
    eval_batch_size: int = 4
    dataset_limit: int | None = None                 # first N eval rows only

    @property
    def spec(self) -> ModeSpec:
        return MODES[self.mode]


def parse_settings(block: dict, where: str = "qwenvl_recipes.forgery") -> ForgerySettings:
    """Validate a recipe's forgery block; every error names the key as the recipe spells it."""
    values = dict(block) if isinstance(block, dict) else block
    if isinstance(values, dict) and "mode" in values:
        values["mode"] = SEED_TASKS.get(values["mode"], values["mode"])
    settings = parse_dataclass(ForgerySettings, values, where, lambda key: setting_key(where, key))
    mode = settings.mode
    settings = replace(settings, **{key: tuple(sorted(set(getattr(settings, key))))
                                    for key in ("head_blocks", "vit_lora_blocks") if getattr(settings, key) is not None})
    if not 0.0 <= settings.fusion_hidden_dropout < 1.0:
        raise ValueError(f"{setting_key(where, 'fusion_hidden_dropout')} must be in [0, 1), "
                         f"got {settings.fusion_hidden_dropout}")
    if not 0.0 <= settings.score_mix <= 1.0:
        raise ValueError(f"{setting_key(where, 'score_mix')} must be in [0, 1], got {settings.score_mix}")
    if settings.spec.fusion and settings.fusion_tokens < 1:
        raise ValueError(f"{setting_key(where, 'fusion_tokens')} must be >= 1 in mode {mode}")
    if settings.spec.head and not settings.spec.train_head and not settings.head_checkpoint:
        raise ValueError(f"{setting_key(where, 'head_checkpoint')} is required in mode {mode} "
                         f"(a head_pretrain output dir)")
    if settings.positive_response == settings.negative_response:
        raise ValueError(f"{where}: positive_response and negative_response must differ")
    return settings


def default_head_blocks(depth: int) -> tuple[int, ...]:
    """The last block of each quarter of the ViT: (7, 15, 23, 31) for the 32-block Qwen2.5-VL-7B ViT."""
    return tuple(sorted({max(0, depth * q // 4 - 1) for q in (1, 2, 3, 4)}))


def resolve_blocks(settings: ForgerySettings, depth: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(head blocks, ViT LoRA blocks) for a ViT of `depth` blocks; out-of-range indexes are an error."""
    head = settings.head_blocks or default_head_blocks(depth)
    lora = settings.vit_lora_blocks or head
    for key, blocks in (("head_blocks", head), ("vit_lora_blocks", lora)):
        bad = [b for b in blocks if not 0 <= b < depth]
        if bad:
            raise ValueError(f"qwenvl_recipes.forgery.{key} {list(blocks)}: {bad} outside the model's "
                             f"ViT depth {depth} (valid 0..{depth - 1})")
    return head, lora


def resolve_paths(settings: ForgerySettings, where: str, data_dir: str | None = None,
                  output_dir: str | None = None) -> ForgerySettings:
    """The settings with their paths following the run, each checked; errors name the key that sets it.

    A relative eval_file is read in `data_dir` (the recipe's dataset_dir: converter output sits together), a
    relative head_checkpoint in `output_dir` (a previous stage writes next to this one:
    ../<head_pretrain recipe>/best_by_AUROC). Without a directory (ms-swift, whose own paths are relative to
    the working directory) a path is used as written."""
    def place(path: str | None, base: str | None) -> str | None:
        # normpath: `output_dir/../stage` must resolve before output_dir exists
        return os.path.normpath(Path(base) / path) if path and base and not Path(path).is_absolute() else path

    settings = replace(settings, eval_file=place(settings.eval_file, data_dir),
                       head_checkpoint=place(settings.head_checkpoint, output_dir))
    if settings.eval_file and not Path(settings.eval_file).is_file():
        raise FileNotFoundError(f"{setting_key(where, 'eval_file')}: {settings.eval_file} is not a file (the "
                                f"converter's rows scored at each epoch end; set the key to one, or remove it)")
    if settings.spec.head and not settings.spec.train_head and not Path(settings.head_checkpoint).is_dir():
        raise FileNotFoundError(f"{setting_key(where, 'head_checkpoint')}: {settings.head_checkpoint} does not "
                                f"exist (run the head_pretrain recipe first, or point the key at its "
                                f"output_dir/best_by_AUROC)")
    return settings
