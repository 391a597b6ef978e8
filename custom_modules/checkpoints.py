"""Checkpoints of a frozen base hold only what trains.

When every trainable parameter lies in a module this project adds (the forgery head, the custom vision merger),
the base is the recipe's own unchanged `model`, yet both trainers save a non-adapter model whole in every
checkpoint (transformers' `save_pretrained`: LLaMA-Factory's freeze / full tuning, ms-swift's `tuner_type: full`),
about 16 GB a save at 7B. `_keys_to_ignore_on_save` is the transformers model's own list of state-dict keys that
`save_pretrained` leaves out, and the Trainer's resume (`_load_from_checkpoint`) loads the saved file non-strictly
and takes exactly these keys as expected to be missing. So each checkpoint's `model.safetensors` holds the trained
parameters alone, and a resume restores them through the trainer's own code.

A pickled file that torch's weights-only loader refuses because it names a callable (an adapter_model.bin, a
resumed checkpoint's optimizer.pt) is an InputError naming the file (`refused_pickle`, `load_adapter`), not a
traceback.
"""
from __future__ import annotations

import os
import pickle
import re
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from qwenvl_recipes.io import InputError


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


def refused_pickle(folder: str | os.PathLike, error: pickle.UnpicklingError) -> InputError:
    """torch's weights-only refusal of a pickle in `folder` (a page of advice, one clause of which matters) as one
    line naming the file: the one whose refusal is `error`'s."""
    refused = Path(folder)
    for path in sorted(path for pattern in ("*.bin", "*.pt", "*.pth") for path in refused.glob(pattern)):
        try:
            torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as again:
            if str(again) == str(error):
                refused = path
                break
    named = re.search(r"GLOBAL (\S+)", str(error))
    reason = f"it names {named.group(1)}" if named else str(error).strip().splitlines()[0]
    return InputError(f"{refused}: refused to unpickle ({reason}; only tensors and plain data are loaded)")


def load_adapter(model: nn.Module, adapter_dir: str | os.PathLike) -> nn.Module:
    """PeftModel.from_pretrained(model, adapter_dir), a refused pickle an InputError naming the file."""
    from peft import PeftModel

    try:
        return PeftModel.from_pretrained(model, str(adapter_dir))
    except pickle.UnpicklingError as error:
        raise refused_pickle(adapter_dir, error) from error
