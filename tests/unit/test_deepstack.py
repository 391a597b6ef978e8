import pytest
import torch

from custom_modules.speedups.deepstack import add_visual_embeds, use_scattered_deepstack


def test_scattered_deepstack_is_bit_identical_to_transformers_boolean_indexing():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextModel

    torch.manual_seed(0)
    mask = torch.zeros(3, 10, dtype=torch.bool)
    mask[0, 2:6] = mask[2, 1:4] = True  # rows without image tokens too
    hidden = torch.randn(3, 10, 8, dtype=torch.bfloat16)
    visual = torch.randn(int(mask.sum()), 8, dtype=torch.bfloat16)
    weight = torch.randn(3, 10, 8, dtype=torch.bfloat16)

    def output_and_grads(fn):
        h, v = hidden.clone().requires_grad_(), visual.clone().requires_grad_()
        out = fn(h, mask, v)
        (out.float() * weight).sum().backward()
        return out.detach(), h.grad, v.grad

    expected = output_and_grads(lambda h, m, v: Qwen3VLTextModel._deepstack_process(None, h, m, v))
    for got, want in zip(output_and_grads(add_visual_embeds), expected):
        assert torch.equal(got, want)


@pytest.mark.parametrize("family, changed", [("qwen3_vl", 1), ("qwen2_5_vl", 0)])
def test_use_scattered_deepstack_changes_each_qwen3_vl_text_model_once(tiny_model_dir, family, changed):
    from transformers import AutoModelForImageTextToText

    model = AutoModelForImageTextToText.from_pretrained(tiny_model_dir(family))
    assert use_scattered_deepstack(model) == changed
    assert use_scattered_deepstack(model) == 0
    if changed:
        assert model.model.language_model._deepstack_process.__func__.__module__ == "custom_modules.speedups.deepstack"
