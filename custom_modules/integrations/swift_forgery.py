"""The forgery feature inside ms-swift 4.6 (`swift sft`), registered by swift_plugin.

ms-swift keeps a row's `label` but drops `mask`, so the forgery label and mask are looked up by image path
in the recipe's dataset files (rows written by `python -m converters forgery`). `register` patches:
- SwiftSft.prepare_model: after swift's own tuner (the recipe's target_regex), attach the head/fusion and
  read the rows of args.dataset / args.val_dataset;
- Template.encode: each encoded sample also carries its image path (`forgery_image`);
- Template.data_collator: turns those paths into forgery_labels / forgery_masks / forgery_mask_valid;
- SwiftSft.train: the model receives input_ids + pixel_values (no template-side ViT pass), and the forgery
  callback is added (heatmap warm-up step, head saving, best-AUROC evaluation).
"""
from __future__ import annotations

from swift.pipelines.train.sft import SwiftSft
from swift.template.base import Template

from custom_modules.forgery.attach import base_model
from custom_modules.forgery.callbacks import ForgeryCallback
from custom_modules.forgery.checkpoint import attach_for_training
from custom_modules.forgery.data import RowIndex, forgery_fields, read_rows
from custom_modules.forgery.settings import parse_settings

IMAGE_KEY = "forgery_image"


def image_path(image) -> str:
    return image.get("path") if isinstance(image, dict) else image


def register(block: dict) -> None:
    settings = parse_settings(block)
    state: dict = {}
    original_prepare_model = SwiftSft.prepare_model.__func__
    original_train, original_encode, original_collator = SwiftSft.train, Template.encode, Template.data_collator

    def prepare_model(cls, args, model, **kwargs):
        model = original_prepare_model(cls, args, model, **kwargs)
        files = list(args.dataset or []) + list(getattr(args, "val_dataset", None) or [])
        state["index"] = RowIndex([row for f in files for row in read_rows(f.split("#")[0])])
        attach_for_training(model, settings, kwargs["template"].tokenizer)
        # swift's compute_sft_loss already scales the loss by this micro-batch's share of the accumulated
        # tokens (num_items_in_batch); the Trainer must not divide by the accumulation steps again
        base_model(model).accepts_loss_kwargs = True
        return model

    def encode(self, inputs, *args, **kwargs):
        images = inputs.get("images") if isinstance(inputs, dict) else getattr(inputs.chosen, "images", None)
        encoded = original_encode(self, inputs, *args, **kwargs)
        if images and isinstance(encoded, dict) and isinstance(image_path(images[0]), str):
            encoded[IMAGE_KEY] = image_path(images[0])
        return encoded

    def data_collator(self, batch, *args, **kwargs):
        paths = [row.pop(IMAGE_KEY, None) for row in batch]
        result = original_collator(self, batch, *args, **kwargs)
        if all(paths) and "index" in state:
            result.update(forgery_fields([state["index"].lookup(p) for p in paths], settings.mask_size))
        return result

    def train(self, trainer):
        # swift's Qwen2/2.5-VL templates run the ViT in a pre-forward hook and hand the model inputs_embeds
        # only; the forgery forward needs input_ids + pixel_values (fusion placement, the ViT-only modes),
        # so the model gets the batch as the HF processor made it (what swift already does for Qwen3-VL)
        trainer.template._post_encode = lambda model, inputs: inputs
        trainer.add_callback(ForgeryCallback(settings, lambda: trainer.template.processor))
        return original_train(self, trainer)

    SwiftSft.prepare_model = classmethod(prepare_model)
    SwiftSft.train, Template.encode, Template.data_collator = train, encode, data_collator
