"""A plain PyTorch loop for the forgery modes (a tool, not the product): the CPU learning proof and the GPU
benchmark of tools/ use it.

The trainers (LLaMA-Factory, ms-swift) run the same attached forward through custom_modules/integrations;
this loop adds nothing they lack: AdamW, amp_dtype, gradient accumulation,
evaluation per epoch and the checkpoint kept by best AUROC.
"""
from __future__ import annotations

import math
import os
import random
from pathlib import Path

import torch

from custom_modules.forgery.attach import ForgeryModules
from custom_modules.forgery.checkpoint import BEST_DIR, save_checkpoint
from custom_modules.forgery.data import Collator
from custom_modules.forgery.evaluate import autocast, evaluate


def train(model, modules: ForgeryModules, processor, train_rows: list[dict], *, epochs: int, lr: float,
          batch_size: int = 4, grad_accum: int = 1, amp_dtype: str = "fp32", eval_rows: list[dict] | None = None,
          out_dir: str | os.PathLike | None = None, seed: int = 0, log=print) -> list[dict]:
    """Train; after each epoch evaluate `eval_rows` and keep the best-AUROC checkpoint in out_dir/best_by_AUROC."""
    device = next(model.parameters()).device
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    steps = epochs * math.ceil(len(train_rows) / (batch_size * grad_accum))
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=max(steps, 1), pct_start=0.1)
    collate = Collator(processor, modules.settings.mask_size, with_answer=modules.spec.lm)
    rng = random.Random(seed)
    history, best = [], -1.0
    model.train()
    for epoch in range(epochs):
        order = list(train_rows)
        rng.shuffle(order)
        batches = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        losses = []
        for index, rows in enumerate(batches):
            batch = {k: v.to(device) for k, v in collate(rows).items()}
            with autocast(device, amp_dtype):
                loss = model(**batch).loss
            (loss / grad_accum).backward()
            losses.append(float(loss.detach()))
            if (index + 1) % grad_accum == 0 or index + 1 == len(batches):
                optimizer.step()
                scheduler.step() if scheduler.last_epoch < steps else None
                optimizer.zero_grad(set_to_none=True)
                modules.global_step += 1
        entry = {"epoch": epoch + 1, "loss": sum(losses) / len(losses), "step": modules.global_step}
        if eval_rows:
            metrics, _ = evaluate(model, modules, processor, eval_rows, batch_size=batch_size, amp_dtype=amp_dtype)
            entry.update(auroc=metrics["auroc"], metrics=metrics)
            if out_dir is not None and metrics["auroc"] is not None and metrics["auroc"] > best:
                best = metrics["auroc"]
                save_checkpoint(model, Path(out_dir) / BEST_DIR)
        log({k: v for k, v in entry.items() if k != "metrics"})
        history.append(entry)
    if out_dir is not None:
        save_checkpoint(model, out_dir)
    return history
