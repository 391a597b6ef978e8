"""Qwen3-VL's deepstack additions without a host-GPU synchronisation.

Qwen3-VL adds features of three ViT layers to the hidden states of the first three LM decoder layers, at the
image-token positions. transformers' `_deepstack_process` does it with boolean-mask indexing
(`hidden_states[mask, :] = hidden_states[mask, :] + visual_embeds`), and a boolean index makes the host wait for
the GPU to count the positions: three waits in every forward, each right after the host has queued one decoder
layer, so the GPU runs dry while the host queues the next. `masked_scatter` places the same rows without asking
the host for the count; adding the scattered rows (zero elsewhere) gives the same bf16 sums at the image
positions and the hidden states unchanged at the others, so outputs and gradients are bit-identical.
"""
from __future__ import annotations

import types

import torch


def add_visual_embeds(hidden_states, visual_pos_masks, visual_embeds):
    """`hidden_states` plus `visual_embeds` at the True positions of `visual_pos_masks` (row-major order)."""
    mask = visual_pos_masks.to(hidden_states.device).unsqueeze(-1)
    rows = visual_embeds.to(hidden_states.device, hidden_states.dtype)
    return hidden_states + torch.zeros_like(hidden_states).masked_scatter(mask, rows)


def _deepstack_process(self, hidden_states, visual_pos_masks, visual_embeds):
    return add_visual_embeds(hidden_states, visual_pos_masks, visual_embeds)


def use_scattered_deepstack(model) -> int:
    """Give every Qwen3-VL text model in `model` the synchronisation-free deepstack step; returns how many changed."""
    changed = 0
    for module in model.modules():
        if hasattr(module, "_deepstack_process") and not getattr(module, "scattered_deepstack", False):
            module._deepstack_process = types.MethodType(_deepstack_process, module)
            module.scattered_deepstack = True
            changed += 1
    return changed
