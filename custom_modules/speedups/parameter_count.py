"""The model's parameter count taken once instead of at every micro-step.

transformers' Trainer adds an estimate of each micro-step's FLOPs to its `total_flos` (`floating_point_ops`),
and for it calls `model.num_parameters(exclude_embeddings=True)`, which walks every module and every parameter
in Python, thousands of modules for a LoRA-wrapped 8B model. It runs after the backward pass has been queued, so
the GPU finishes that and then waits for the host (docs/performance.md measures the gap). The total cannot change
while the architecture stays the same, so it is counted once; counts of trainable parameters (which depend on
`requires_grad`) are still counted at each call.
"""
from __future__ import annotations


def count_parameters_once(model) -> int:
    """Memoise `model.num_parameters` for total counts; returns 1 if changed, 0 if absent or done before."""
    count = getattr(model, "num_parameters", None)
    if count is None or getattr(count, "counted_once", False):
        return 0
    totals: dict[bool, int] = {}

    def num_parameters(only_trainable: bool = False, exclude_embeddings: bool = False) -> int:
        if only_trainable:
            return count(only_trainable=True, exclude_embeddings=exclude_embeddings)
        if exclude_embeddings not in totals:
            totals[exclude_embeddings] = count(exclude_embeddings=exclude_embeddings)
        return totals[exclude_embeddings]

    num_parameters.counted_once = True
    model.num_parameters = num_parameters
    return 1
