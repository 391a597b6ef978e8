"""The forgery feature in ms-swift 4.6 (`swift sft`), registered by swift_plugin under names a recipe selects:

    template: qwen2_5_vl_forgery   callbacks: [forgery]   remove_unused_columns: false
    ENV: {QVR_FORGERY_MODE: hybrid, QVR_FORGERY_HEAD_BLOCKS: [7, 15, 23, 31], ...}   (one variable per setting)

- template `qwen2_5_vl_forgery`: swift's Qwen2.5-VL template whose samples also carry the row's `label` (one of
  swift's own row keys) and `mask` (an extra column, kept by `remove_unused_columns: false`); its collator turns
  them into forgery_labels / forgery_masks / forgery_mask_valid and, in the fusion modes, places the fusion
  placeholders before swift pads the rows and computes their M-RoPE positions. The model gets input_ids +
  pixel_values as the HF processor made them (swift's Qwen2/2.5-VL template would run the ViT in a pre-forward
  hook and pass inputs_embeds only), because the forgery forward needs them (fusion placement, the ViT-only modes).
- callback `forgery`: when the trainer is built (after swift's own tuner: the recipe's target_regex) it attaches
  the head/fusion (recording the pixel limits the template resizes images into, for scoring) and warns where that
  LoRA disagrees with the mode (ViT blocks other than the head's, LM LoRA), then steps the heatmap warm-up, saves
  the head beside every checkpoint and scores eval_file at each epoch end (best AUROC kept in
  <output_dir>/best_by_AUROC, with the run's args.json).
- serving (`swift infer` / `swift deploy` on a checkpoint): the template encodes plain prompts; a mode that scores
  with the head or fusion tokens is refused (check_servable), as swift would answer with the language model alone.
Paths (eval_file, head_checkpoint) are relative to the working directory, as swift's own dataset and
output_dir are; a missing one is an error naming its ENV variable.
"""
from __future__ import annotations

import functools
import shutil
from pathlib import Path

from swift.callbacks import TrainerCallback, callbacks_map
from swift.template import register_template
from swift.template.templates.qwen import Qwen2_5VLTemplate, QwenTemplateMeta
from swift.utils import get_logger

from custom_modules.forgery.attach import collator_fusion
from custom_modules.forgery.callbacks import ForgeryCallback
from custom_modules.forgery.checkpoint import BEST_DIR, attach_for_training
from custom_modules.forgery.data import TrainingImages, forgery_fields
from custom_modules.forgery.lora import placement_warnings
from custom_modules.forgery.settings import MODES, ForgerySettings, parse_settings, resolve_paths
from custom_modules.integrations.env_settings import FEATURE_CALLBACKS
from custom_modules.recipe_keys import env_where

TEMPLATE = "qwen2_5_vl_forgery"
CALLBACK = FEATURE_CALLBACKS["forgery"]
ROW_KEY = "forgery_row"
WHERE = env_where("forgery")
logger = get_logger()


def settings_from(environment_settings) -> ForgerySettings:
    """The recipe's QVR_FORGERY_* settings, checked, paths checked (`environment_settings`: swift_plugin's reader)."""
    return resolve_paths(parse_settings(environment_settings("forgery"), WHERE), WHERE)


def training_images(processor) -> TrainingImages:
    """How the template sizes training images: qwen-vl-utils' fetch_image, into the token limits swift set in it
    from MIN_PIXELS / MAX_PIXELS (or IMAGE_MIN/MAX_TOKEN_NUM, or its defaults) when it loaded `processor`."""
    from qwen_vl_utils import vision_process

    token = (processor.image_processor.patch_size * vision_process.SPATIAL_MERGE_SIZE) ** 2
    return TrainingImages("swift", vision_process.IMAGE_MIN_TOKEN_NUM * token,
                          vision_process.IMAGE_MAX_TOKEN_NUM * token)


class ForgeryTemplate(Qwen2_5VLTemplate):
    settings: ForgerySettings | None = None  # set by the callback from the recipe's settings

    def _encode(self, inputs):
        encoded = super()._encode(inputs)
        if not self.is_training:  # swift infer / deploy: a plain Qwen2.5-VL prompt (check_servable: mode has no head)
            return encoded
        if "mask" not in inputs.extra_kwargs:
            raise ValueError(f"template {TEMPLATE}: a row reached the template without its `mask` column; the recipe "
                             "needs `remove_unused_columns: false` (rows from `python -m converters forgery`)")
        if inputs.label is None:
            raise ValueError(f"template {TEMPLATE}: a row has no `label` (rows from `python -m converters forgery`)")
        # popped here, so the column does not also reach the model as a keyword argument
        encoded[ROW_KEY] = {"label": inputs.label, "mask": inputs.extra_kwargs.pop("mask")}
        return encoded

    def _data_collator(self, batch, *, padding_to=None):
        if not self.is_training:
            return super()._data_collator(batch, padding_to=padding_to)
        if self.settings is None:
            raise ValueError(f"template: {TEMPLATE} needs `callbacks: [{CALLBACK}]` (it attaches the forgery head)")
        rows = [sample.pop(ROW_KEY) for sample in batch]
        pad = functools.partial(super()._data_collator, padding_to=padding_to)
        result = collator_fusion(batch, self.settings, self.config.vision_end_token_id, pad)
        result.update(forgery_fields(rows, self.settings.mask_size))
        return result

    def _post_encode(self, model, inputs):
        return inputs


def check_servable(settings: dict, where: str) -> None:
    """swift infer / deploy generate with the LM alone: a checkpoint whose mode scores with the head or feeds the LM
    its fusion tokens would answer without them, so it is refused, naming the command that scores it."""
    if not settings:
        return
    mode = parse_settings(settings, WHERE).mode
    spec = MODES[mode]
    if spec.head or spec.fusion:
        raise ValueError(f"{where}: forgery mode {mode} scores images with its head, which swift infer/deploy do not "
                         f"run (they would answer with the language model alone); score them with `qvr-eval predict "
                         f"--model <base model> --checkpoint <this checkpoint> --images <folder or list>` "
                         f"(docs/serving.md)")


def register(environment_settings) -> None:
    class SwiftForgeryCallback(TrainerCallback, ForgeryCallback):
        def __init__(self, args, trainer):  # swift builds callbacks as cls(args, trainer)
            if not isinstance(trainer.template, ForgeryTemplate):
                raise ValueError(f"callbacks: [{CALLBACK}] needs `template: {TEMPLATE}` "
                                 f"(got {type(trainer.template).__name__})")
            TrainerCallback.__init__(self, args, trainer)
            ForgeryCallback.__init__(self, settings_from(environment_settings), lambda: trainer.template.processor)
            trainer.template.settings = self.settings

        def on_init_end(self, args, state, control, model=None, **kwargs):
            modules = attach_for_training(model, self.settings, self.trainer.template.tokenizer)
            modules.training_images = training_images(self.trainer.template.processor)
            for warning in placement_warnings(model, self.settings, WHERE):
                logger.warning(warning)
            # swift's compute_sft_loss already scales the loss by this micro-batch's share of the accumulated
            # tokens (num_items_in_batch); the Trainer must not divide by the accumulation steps again
            self.trainer.model_accepts_loss_kwargs = True
            ForgeryCallback.on_init_end(self, args, state, control, model=model, **kwargs)

        def on_epoch_end(self, args, state, control, model=None, **kwargs):
            super().on_epoch_end(args, state, control, model=model, **kwargs)
            best, run_args = Path(args.output_dir) / BEST_DIR, Path(args.output_dir) / "args.json"
            if state.is_world_process_zero and best.is_dir() and run_args.is_file():
                # as in every checkpoint-N swift writes: what swift infer/export read back (model, template, plugin)
                shutil.copy(run_args, best / "args.json")

    register_template(QwenTemplateMeta(TEMPLATE, template_cls=ForgeryTemplate), exist_ok=True)
    callbacks_map[CALLBACK] = SwiftForgeryCallback
