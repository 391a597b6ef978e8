"""The forgery feature in ms-swift 4.6 (`swift sft`), registered by swift_plugin under names a recipe selects:

    template: qwen2_5_vl_forgery   callbacks: [forgery]   remove_unused_columns: false
    ENV: {QVR_FORGERY_MODE: hybrid, QVR_FORGERY_HEAD_BLOCKS: [7, 15, 23, 31], ...}   (one variable per setting)

- template `qwen2_5_vl_forgery`: swift's Qwen2.5-VL template whose samples also carry the row's `label` (one of
  swift's own row keys) and `mask` (an extra column, kept by `remove_unused_columns: false`); its collator turns
  them into forgery_labels / forgery_masks / forgery_mask_valid. The model gets input_ids + pixel_values as the
  HF processor made them (swift's Qwen2/2.5-VL template would run the ViT in a pre-forward hook and pass
  inputs_embeds only), because the forgery forward needs them (fusion placement, the ViT-only modes).
- callback `forgery`: when the trainer is built (after swift's own tuner: the recipe's target_regex) it attaches
  the head/fusion, then steps the heatmap warm-up, saves the head beside every checkpoint and scores eval_file
  at each epoch end (best AUROC kept in <output_dir>/best_by_AUROC).
Paths (eval_file, head_checkpoint) are relative to the working directory, as swift's own dataset and
output_dir are; a missing one is an error naming its ENV variable.
"""
from __future__ import annotations

from swift.callbacks import TrainerCallback, callbacks_map
from swift.template import register_template
from swift.template.templates.qwen import Qwen2_5VLTemplate, QwenTemplateMeta

from custom_modules.forgery.callbacks import ForgeryCallback
from custom_modules.forgery.checkpoint import attach_for_training
from custom_modules.forgery.data import forgery_fields
from custom_modules.forgery.settings import ForgerySettings, parse_settings, resolve_paths
from custom_modules.integrations.env_settings import FEATURE_CALLBACKS
from custom_modules.recipe_keys import env_where

TEMPLATE = "qwen2_5_vl_forgery"
CALLBACK = FEATURE_CALLBACKS["forgery"]
ROW_KEY = "forgery_row"
WHERE = env_where("forgery")


def settings_from(environment_settings) -> ForgerySettings:
    """The recipe's QVR_FORGERY_* settings, checked, paths checked (`environment_settings`: swift_plugin's reader)."""
    return resolve_paths(parse_settings(environment_settings("forgery"), WHERE), WHERE)


class ForgeryTemplate(Qwen2_5VLTemplate):
    mask_size: int | None = None  # set by the callback from the recipe's settings

    def _encode(self, inputs):
        encoded = super()._encode(inputs)
        if "mask" not in inputs.extra_kwargs:
            raise ValueError(f"template {TEMPLATE}: a row reached the template without its `mask` column; the recipe "
                             "needs `remove_unused_columns: false` (rows from `python -m converters forgery`)")
        if inputs.label is None:
            raise ValueError(f"template {TEMPLATE}: a row has no `label` (rows from `python -m converters forgery`)")
        # popped here, so the column does not also reach the model as a keyword argument
        encoded[ROW_KEY] = {"label": inputs.label, "mask": inputs.extra_kwargs.pop("mask")}
        return encoded

    def _data_collator(self, batch, *, padding_to=None):
        if self.mask_size is None:
            raise ValueError(f"template: {TEMPLATE} needs `callbacks: [{CALLBACK}]` (it attaches the forgery head)")
        rows = [sample.pop(ROW_KEY) for sample in batch]
        result = super()._data_collator(batch, padding_to=padding_to)
        result.update(forgery_fields(rows, self.mask_size))
        return result

    def _post_encode(self, model, inputs):
        return inputs


def register(environment_settings) -> None:
    class SwiftForgeryCallback(TrainerCallback, ForgeryCallback):
        def __init__(self, args, trainer):  # swift builds callbacks as cls(args, trainer)
            if not isinstance(trainer.template, ForgeryTemplate):
                raise ValueError(f"callbacks: [{CALLBACK}] needs `template: {TEMPLATE}` "
                                 f"(got {type(trainer.template).__name__})")
            TrainerCallback.__init__(self, args, trainer)
            ForgeryCallback.__init__(self, settings_from(environment_settings), lambda: trainer.template.processor)
            trainer.template.mask_size = self.settings.mask_size

        def on_init_end(self, args, state, control, model=None, **kwargs):
            attach_for_training(model, self.settings, self.trainer.template.tokenizer)
            # swift's compute_sft_loss already scales the loss by this micro-batch's share of the accumulated
            # tokens (num_items_in_batch); the Trainer must not divide by the accumulation steps again
            self.trainer.model_accepts_loss_kwargs = True

    register_template(QwenTemplateMeta(TEMPLATE, template_cls=ForgeryTemplate), exist_ok=True)
    callbacks_map[CALLBACK] = SwiftForgeryCallback
