"""Checkpoints of a frozen base hold only what trains.

When every trainable parameter lies in a module this project adds (the forgery head, the custom vision merger),
the base is the recipe's own unchanged `model`, yet both trainers save a non-adapter model whole in every
checkpoint (transformers' `save_pretrained`: LLaMA-Factory's freeze / full tuning, ms-swift's `tuner_type: full`),
about 16 GB a save at 7B. `_keys_to_ignore_on_save` is the transformers model's own list of state-dict keys that
`save_pretrained` leaves out, and the Trainer's resume (`_load_from_checkpoint`) loads the saved file non-strictly
and takes exactly these keys as expected to be missing. So each checkpoint's `model.safetensors` holds the trained
parameters alone, and a resume restores them through the trainer's own code.
"""
from __future__ import annotations

from collections.abc import Iterable

from torch import nn


def transformers_model(model: nn.Module) -> nn.Module:
    """The transformers model under DDP / PEFT wrappers."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def save_trained_parts_only(model: nn.Module, parts: Iterable[nn.Module], args=None) -> bool:
    """Make the trainer's saves of `model` hold only its trainable parameters when all of them lie in `parts`;
    returns whether it did (not under an adapter, nor when anything of the base trains).

    `args`: the trainer's arguments. ms-swift's `resume_only_model` with a full tuner loads the whole model from
    the checkpoint, which then holds no base weights: refused, naming the checkpoint."""
    hf = transformers_model(model)
    parts = list(parts)
    prefixes = tuple(f"{name}." for name, module in hf.named_modules() if any(module is part for part in parts))
    trainable = {name for name, param in hf.named_parameters() if param.requires_grad}
    if not prefixes or not trainable or any(not name.startswith(prefixes) for name in trainable):
        return False
    checkpoint = getattr(args, "resume_from_checkpoint", None)
    if checkpoint and getattr(args, "resume_only_model", False):
        raise ValueError(f"resume_only_model: {checkpoint} holds only the trained parameters, not the base model it "
                         f"would load; resume with resume_from_checkpoint alone")
    hf._keys_to_ignore_on_save = [key for key in hf.state_dict() if key not in trainable]
    return True
