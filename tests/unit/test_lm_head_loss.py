from types import SimpleNamespace

import pytest
import torch

from custom_modules.speedups.lm_head_loss import LOGITS_BUDGET, chunk_mem_const, labelled_rows, use_labelled_rows


def reference_fused_loss(calls):
    """Liger's `fixed_fused_linear_cross_entropy` contract in plain torch (its Triton kernels need a GPU): the sum of
    the labelled rows' cross-entropy over `num_items_in_batch`, or their mean; records what it was given."""
    def fused_loss(hidden_states, lm_head_weight, target, num_items_in_batch=None, ignore_index=-100, **kwargs):
        calls.append({"rows": hidden_states.shape[0], "target": target.clone(), **kwargs})
        logits = (hidden_states @ lm_head_weight.t()).float()
        reduction = "sum" if num_items_in_batch is not None else "mean"
        loss = torch.nn.functional.cross_entropy(logits, target, ignore_index=ignore_index, reduction=reduction)
        return loss / num_items_in_batch if num_items_in_batch is not None else loss
    return fused_loss


@pytest.mark.parametrize("num_items_in_batch", [None, 7])
def test_labelled_rows_give_the_same_loss_and_gradients(num_items_in_batch):
    torch.manual_seed(0)
    rows, hidden, vocab = 12, 16, 40
    target = torch.full((rows,), -100)
    target[[3, 4, 9]] = torch.tensor([5, 0, 39])
    weight = torch.randn(vocab, hidden)

    def loss_and_grad(fn):
        hidden_states = torch.randn(rows, hidden, generator=torch.Generator().manual_seed(1), requires_grad=True)
        loss = fn(hidden_states, weight, target, num_items_in_batch)
        loss.backward()
        return loss.detach(), hidden_states.grad

    full_calls, kept_calls = [], []
    expected_loss, expected_grad = loss_and_grad(reference_fused_loss(full_calls))
    loss, grad = loss_and_grad(labelled_rows(reference_fused_loss(kept_calls)))

    torch.testing.assert_close(loss, expected_loss)
    torch.testing.assert_close(grad, expected_grad)
    assert grad[target == -100].abs().sum() == 0
    # the head saw the 3 labelled rows, in order, in one chunk (C = ceil(40 / 16) = 3)
    assert kept_calls[0]["rows"] == 3 and kept_calls[0]["target"].tolist() == [5, 0, 39]
    assert kept_calls[0]["chunk_mem_const"] == 3 and "chunk_mem_const" not in full_calls[0]


def test_unlabelled_batches_and_per_row_outputs_keep_every_row():
    calls = []
    fused_loss = labelled_rows(reference_fused_loss(calls))
    hidden_states, weight = torch.randn(4, 8), torch.randn(10, 8)
    fused_loss(hidden_states, weight, torch.full((4,), -100), None)
    fused_loss(hidden_states, weight, torch.tensor([1, -100, 2, -100]), None, -100, return_predicted_tokens=True)
    assert [c["rows"] for c in calls] == [4, 4] and all("chunk_mem_const" not in c for c in calls)


def test_chunk_budget_is_one_chunk_when_the_logits_fit():
    # Qwen3-VL-8B (V 151936, H 4096): 16 grounding answers fit in one chunk (Liger: ceil(V / (C H)) = 1)
    assert chunk_mem_const(1000, 4096, 151936) == 38
    # every row of a 16 x 264-token batch: 31 -> Liger makes 2 chunks of at most 4096 rows
    assert chunk_mem_const(4224, 4096, 151936) == LOGITS_BUDGET // (4224 * 4096) == 31
    # never below Liger's own default
    assert chunk_mem_const(10 ** 6, 4096, 151936) == 1


def test_use_labelled_rows_wraps_liger_loss_once():
    original = reference_fused_loss([])
    loss_utils = SimpleNamespace(fixed_fused_linear_cross_entropy=original)
    assert use_labelled_rows(loss_utils) == 1
    wrapped = loss_utils.fixed_fused_linear_cross_entropy
    assert wrapped is not original and wrapped.__wrapped__ is original
    assert use_labelled_rows(loss_utils) == 0 and loss_utils.fixed_fused_linear_cross_entropy is wrapped
