"""No autograd graph through a frozen vision tower.

Under gradient checkpointing, peft and LLaMA-Factory call `model.enable_input_require_grads()`. In transformers 5
that hooks the input embedding of every PreTrainedModel inside the model, and for Qwen2-VL and Qwen2.5-VL the
vision tower is one: its patch embedding's output is marked as requiring a gradient. A tower whose weights are all
frozen then records its whole forward (every block's activations are kept until the backward pass) and the
backward pass runs back through every block to a gradient nothing reads. ms-swift removes that hook when the tower
is not checkpointed; LLaMA-Factory keeps it. The hook only matters when something in the tower before the merger
trains (ViT LoRA, a tuned tower), so only then is it kept: every trainable parameter's gradient is unchanged,
including the merger's, whose weight gradients do not need the input's.
"""
from __future__ import annotations

from custom_modules.speedups.parts import vision_towers

# transformers' hook (PreTrainedModel.enable_input_require_grads) and peft's fallback for models without it
HOOK_NAMES = ("make_inputs_require_grads", "make_inputs_require_grad")


def upstream_of_merger(tower) -> list:
    """The tower's modules whose outputs reach the merger: patch (and position) embedding and the blocks."""
    return [m for m in (getattr(tower, "patch_embed", None), getattr(tower, "pos_embed", None)) if m is not None] + \
        list(tower.blocks)


def drop_frozen_vision_graph(model) -> int:
    """Remove the require-grad hooks from the patch embedding of every vision tower with nothing trainable before
    its merger; returns how many hooks were removed."""
    removed = 0
    for tower in vision_towers(model):
        if any(p.requires_grad for module in upstream_of_merger(tower) for p in module.parameters()):
            continue
        hooks = tower.patch_embed._forward_hooks
        for key in [k for k, hook in hooks.items() if getattr(hook, "__name__", None) in HOOK_NAMES]:
            del hooks[key]
            removed += 1
    return removed
