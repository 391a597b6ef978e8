"""Liger's fused LM head + cross-entropy over the labelled rows only, in one pass over the head's weight.

Both trainers' `use_liger_kernel` computes the loss with Liger's fused linear cross-entropy, which splits the rows
into chunks whose logits take no more memory than the hidden states: ceil(V / H) chunks, 38 for Qwen's
152k-entry vocabulary at hidden size 4096, however few the rows are. Each chunk reads the whole head weight
(1.2 GB for Qwen3-VL-8B) twice, for the logits and for the input gradient, and launches its own kernels just after
Liger has made the host wait for the GPU (it reads the labelled-row count back), so the GPU idles while the host
queues them. Rows without a label (the image and the prompt: most of a grounding sample) add nothing to the loss
or to any gradient, yet LLaMA-Factory sends them all (ms-swift already keeps only the suffix from the first label,
`logits_to_keep`). docs/performance.md has what it gave.

`labelled_rows(fused_loss)` wraps Liger's `fixed_fused_linear_cross_entropy`: it keeps the rows whose target is
not `ignore_index` and asks Liger for chunks as large as LOGITS_BUDGET allows (one chunk for a micro-batch of 16
grounding samples). The loss is the same sum over the same rows, divided by the same count; the dropped rows' input
gradient is zero either way. Liger already reads the labelled-row count back to the host in every call, so the
row selection adds no synchronisation of its own.
"""
from __future__ import annotations

import functools

LOGITS_BUDGET = 2 ** 29  # logits elements held at once (1 GiB in bf16); Liger may round a chunk up to 2x this


def chunk_mem_const(rows: int, hidden: int, vocab: int, budget: int = LOGITS_BUDGET) -> int:
    """Liger's chunk budget `C` (transient logits ~ C x rows x hidden elements) for `rows` labelled rows: as few
    chunks as `budget` allows, one (C = ceil(V / H)) when all their logits fit."""
    return max(1, min(-(-vocab // hidden), budget // max(1, rows * hidden)))


def labelled_rows(fused_loss):
    """`fused_loss` (Liger's `fixed_fused_linear_cross_entropy` signature) over the labelled rows only."""
    @functools.wraps(fused_loss)
    def loss_over_labelled_rows(hidden_states, lm_head_weight, target, num_items_in_batch=None, ignore_index=-100,
                                *args, **kwargs):
        keep = (target != ignore_index).nonzero().squeeze(1)
        # per-row outputs (predicted tokens) must keep every row; with no label there is nothing to drop
        if 0 < keep.numel() and not kwargs.get("return_predicted_tokens"):
            hidden_states, target = hidden_states.index_select(0, keep), target.index_select(0, keep)
            kwargs.setdefault("chunk_mem_const", chunk_mem_const(keep.numel(), lm_head_weight.shape[1],
                                                                 lm_head_weight.shape[0]))
        return fused_loss(hidden_states, lm_head_weight, target, num_items_in_batch, ignore_index, *args, **kwargs)

    loss_over_labelled_rows.labelled_rows = True
    return loss_over_labelled_rows


def use_labelled_rows(loss_utils=None) -> int:
    """Route Liger's causal-LM loss through `labelled_rows`; returns 1 if it changed, 0 if it already was or Liger
    is not installed. `loss_utils` defaults to liger_kernel.transformers.model.loss_utils, whose
    `LigerForCausalLMLoss` (every Qwen-VL forward Liger installs) looks the function up at each call."""
    if loss_utils is None:
        try:
            from liger_kernel.transformers.model import loss_utils
        except ImportError:
            return 0
    if getattr(loss_utils.fixed_fused_linear_cross_entropy, "labelled_rows", False):
        return 0
    loss_utils.fixed_fused_linear_cross_entropy = labelled_rows(loss_utils.fixed_fused_linear_cross_entropy)
    return 1
