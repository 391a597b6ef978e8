"""The forgery feature inside LLaMA-Factory's SFT workflow (llamafactory 0.9.5).

LLaMA-Factory keeps only the dataset_info columns (messages, images), so the forgery label and mask are
looked up by image path in the same dataset files; its collator still sees each sample's image paths.
`setup` patches three names of `llamafactory.train.sft.workflow` for this process:
- get_dataset: also reads the rows of the recipe's datasets (dataset_dir/dataset_info.json) and keeps
  the processor for evaluation;
- load_model: after LLaMA-Factory's own LoRA (the recipe's lora_target), attaches the head/fusion (recording
  image_min/max_pixels, which its plugin scales every image into, for scoring) and warns where that LoRA disagrees
  with the mode (ViT blocks other than the head's, LM LoRA);
- SFTDataCollatorWith4DAttentionMask: adds forgery_labels / forgery_masks / forgery_mask_valid and, in the fusion
  modes, the fusion placeholders (its own M-RoPE positions then count them).
"""
from __future__ import annotations

import json
from pathlib import Path

from custom_modules.forgery.attach import collator_fusion
from custom_modules.forgery.callbacks import ForgeryCallback
from custom_modules.forgery.checkpoint import attach_for_training
from custom_modules.forgery.data import RowIndex, TrainingImages, forgery_fields, read_rows
from custom_modules.forgery.lora import placement_warnings
from custom_modules.forgery.settings import parse_settings, resolve_paths
from custom_modules.recipe_keys import block_where


def dataset_rows(dataset_dir: str, names: list[str]) -> list[dict]:
    """The rows of the named dataset_info entries (local files only)."""
    info_path = Path(dataset_dir) / "dataset_info.json"
    info = json.loads(info_path.read_text(encoding="utf-8"))
    rows = []
    for name in names:
        if name not in info or "file_name" not in info[name]:
            raise ValueError(f"{info_path}: no local file entry {name!r} (forgery needs the converter's files)")
        rows.extend(read_rows(Path(dataset_dir) / info[name]["file_name"]))
    return rows


def setup(block: dict, args: dict) -> list:
    """`args`: the recipe's LLaMA-Factory arguments; eval_file is read in its dataset_dir, head_checkpoint in its
    output_dir."""
    where = block_where("forgery")
    settings = resolve_paths(parse_settings(block, where), where, data_dir=args.get("dataset_dir", "data"),
                             output_dir=args.get("output_dir"))
    import llamafactory.train.sft.workflow as workflow
    from llamafactory.extras import logging

    logger = logging.get_logger(__name__)

    state: dict = {}
    original_get_dataset, original_load_model = workflow.get_dataset, workflow.load_model

    def get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module):
        names = list(data_args.dataset or []) + list(data_args.eval_dataset or [])
        state["index"] = RowIndex(dataset_rows(data_args.dataset_dir, names))
        state["processor"] = tokenizer_module.get("processor")
        return original_get_dataset(template, model_args, data_args, training_args, stage, **tokenizer_module)

    def load_model(tokenizer, model_args, finetuning_args, is_trainable=False, add_valuehead=False):
        model = original_load_model(tokenizer, model_args, finetuning_args, is_trainable, add_valuehead)
        modules = attach_for_training(model, settings, tokenizer)
        modules.training_images = TrainingImages("llamafactory", model_args.image_min_pixels,
                                                 model_args.image_max_pixels)
        for warning in placement_warnings(model, settings, where):
            logger.warning_rank0(warning)
        return model

    class ForgeryCollator(workflow.SFTDataCollatorWith4DAttentionMask):
        def __call__(self, features):
            rows = [state["index"].lookup(feature["images"][0]) for feature in features]
            batch = collator_fusion(features, settings, self.model.config.vision_end_token_id, super().__call__)
            batch.update(forgery_fields(rows, settings.mask_size))
            return batch

    workflow.get_dataset, workflow.load_model = get_dataset, load_model
    workflow.SFTDataCollatorWith4DAttentionMask = ForgeryCollator
    return [ForgeryCallback(settings, lambda: state["processor"])]
