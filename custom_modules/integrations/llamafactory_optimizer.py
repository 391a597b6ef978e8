"""Per-part learning rates inside LLaMA-Factory 0.9.5, which has none of its own: its SFT trainer asks
`create_custom_optimizer` (llamafactory.train.sft.trainer) for an optimizer before falling back to the HF Trainer's;
`install_param_groups` wraps that name, for this process, to return the HF Trainer's optimizer class and arguments
over our parameter groups."""
from __future__ import annotations

import importlib
from typing import Callable

from transformers import Trainer


def install_param_groups(groups: Callable[[object, float, float], list[dict]], rates_set: bool, where: str) -> None:
    """`groups(model, learning_rate, weight_decay)`: the optimizer's parameter groups. LLaMA-Factory's own custom
    optimizers (GaLore, APOLLO, BAdam, LoRA+, ...) keep theirs, and refuse to run with rates set (`rates_set`)."""
    sft_trainer = importlib.import_module("llamafactory.train.sft.trainer")
    original_create_optimizer = sft_trainer.create_custom_optimizer
    owner = getattr(original_create_optimizer, "param_groups_of", None)
    if owner is not None:
        raise ValueError(f"{where}: {owner} already sets the learning rates per part; keep one of the two")

    def create_custom_optimizer(model, training_args, finetuning_args):
        optimizer = original_create_optimizer(model, training_args, finetuning_args)
        if optimizer is not None:  # GaLore, BAdam, LoRA+ ... own the parameter groups
            if rates_set:
                raise ValueError(f"{where}: per-part learning rates cannot combine with LLaMA-Factory's custom "
                                 f"optimizers (GaLore, APOLLO, BAdam, LoRA+, ...)")
            return optimizer
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(training_args, model)
        return optimizer_cls(groups(model, training_args.learning_rate, training_args.weight_decay),
                             **optimizer_kwargs)

    create_custom_optimizer.param_groups_of = where
    sft_trainer.create_custom_optimizer = create_custom_optimizer
