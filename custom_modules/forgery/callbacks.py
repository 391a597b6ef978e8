"""transformers TrainerCallback for any HF-Trainer-based trainer (LLaMA-Factory, ms-swift): step counter for
the heatmap warm-up, head weights saved beside every adapter checkpoint and loaded back when the trainer resumes
from one, and (with `eval_file`) evaluation at each epoch end keeping the best-AUROC checkpoint in
<output_dir>/best_by_AUROC."""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Callable

from transformers import TrainerCallback

from custom_modules.checkpoints import save_trained_parts_only
from custom_modules.forgery.attach import find_modules, keep_forgery_forward
from custom_modules.forgery.checkpoint import BEST_DIR, load_head_weights, save_checkpoint, save_head
from custom_modules.forgery.data import read_rows
from custom_modules.forgery.evaluate import evaluate
from custom_modules.forgery.settings import ForgerySettings

EVAL_LOG = "forgery_eval.jsonl"
BEST_KEY = "forgery_best_auroc"  # the trainer's log_history entry of each new best, saved in every checkpoint
logger = logging.getLogger(__name__)


class ForgeryCallback(TrainerCallback):
    def __init__(self, settings: ForgerySettings, processor: Callable[[], object]):
        """settings: with its paths resolved and checked (settings.resolve_paths); processor: returns the trainer's
        processor (known only once the trainer has loaded it)."""
        self.settings, self.processor = settings, processor
        self.best_auroc = None

    def on_init_end(self, args, state, control, model=None, **kwargs):
        """The modules attached, before the optimizer exists: a resumed run takes them from its checkpoint (the
        trainer restores only its own adapters there; optimizer state follows, the parameter order unchanged); with
        nothing of the base training, checkpoints hold the modules alone."""
        modules = find_modules(model)
        if args.resume_from_checkpoint:
            load_head_weights(modules, args.resume_from_checkpoint)
        save_trained_parts_only(model, [modules], args)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        """The forgery forward in front of whatever the trainer bound to the model since it was attached (Liger's,
        under `use_liger_kernel`); the best AUROC so far, from the log a resumed run continues (so a worse epoch never
        replaces the best)."""
        if keep_forgery_forward(model):
            logger.warning("forgery: the trainer replaced the model's forward after the forgery modules were attached "
                           "(use_liger_kernel binds Liger's); the forgery forward now runs in front of it")
        self.best_auroc = max((entry[BEST_KEY] for entry in state.log_history if BEST_KEY in entry), default=None)

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        find_modules(model).global_step = state.global_step

    def on_save(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            save_head(find_modules(model), Path(args.output_dir) / f"checkpoint-{state.global_step}")

    def on_epoch_end(self, args, state, control, model=None, **kwargs):
        if not self.settings.eval_file or not state.is_world_process_zero:
            return
        modules = find_modules(model)
        rows = read_rows(self.settings.eval_file, self.settings.dataset_limit)
        metrics, _ = evaluate(model, modules, self.processor(), rows, batch_size=self.settings.eval_batch_size,
                              amp_dtype="bf16" if args.bf16 else "fp16" if args.fp16 else "fp32")
        metrics.update(epoch=state.epoch, step=state.global_step, maskless_fakes_skipped=int(modules.maskless_fakes))
        with open(Path(args.output_dir) / EVAL_LOG, "a", encoding="utf-8") as log:
            log.write(json.dumps(metrics) + "\n")
        auroc = metrics["auroc"]
        if auroc is not None and (self.best_auroc is None or auroc > self.best_auroc):
            self.best_auroc = auroc
            save_checkpoint(model, Path(args.output_dir) / BEST_DIR)
            state.log_history.append({BEST_KEY: auroc, "step": state.global_step})

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            os.makedirs(args.output_dir, exist_ok=True)
            save_head(find_modules(model), args.output_dir)
