"""FP8 matmuls for the frozen base weights: exact to the quantised operands, close to bf16, only where they apply."""

import pytest
import torch

from custom_modules.speedups.fp8_base import (E4M3_MAX, Fp8FrozenMatmul, FrozenWeightFp8, quantize_rows,
                                             use_fp8_frozen_base)
from tests.unit.test_speedups import largest_relative_error, lora_model, seeded_loss_and_grads


def quantised_products(x, grad, rows, row_scale, cols, col_scale):
    """The forward and input-gradient products of the quantised operands, in fp32: what the FP8 matmuls compute."""
    x8, x_scale = quantize_rows(x.detach())
    grad8, grad_scale = quantize_rows(grad)
    return ((x8.float() * x_scale) @ (rows.float() * row_scale.t()).t(),
            (grad8.float() * grad_scale) @ (cols.float() * col_scale.t()).t())


def test_quantize_rows_scales_each_row_by_a_power_of_two_within_e4m3():
    t = torch.tensor([[0.5, -1.0, 0.25, 0.0], [1000.0, 3.0, -7.0, 1.0], [0.0, 0.0, 0.0, 0.0]], dtype=torch.bfloat16)
    t8, scale = quantize_rows(t)
    assert scale.dtype == torch.float32 and scale.shape == (3, 1)
    assert torch.equal(torch.log2(scale), torch.log2(scale).round())  # powers of two: the division is exact
    assert float(t8.float().abs().max()) <= E4M3_MAX
    assert scale[0, 0] == 2.0 ** -8 and scale[1, 0] == 4.0  # the smallest powers bringing 1.0 and 1000 under 448
    torch.testing.assert_close((t8.float() * scale)[0], t[0].float(), rtol=0, atol=0)  # representable: exact
    assert torch.equal(t8[2].float(), torch.zeros(4))  # an all-zero row stays zero


@pytest.mark.parametrize("shape", [(37, 64), (5, 1040), (300, 48)])
def test_quantize_rows_compiled_for_any_shape_matches_the_eager_operations(shape):
    torch.manual_seed(0)
    t = torch.randn(shape, dtype=torch.bfloat16) * torch.logspace(-3, 3, shape[0]).unsqueeze(1).to(torch.bfloat16)
    t8, scale = quantize_rows(t)
    amax = t.float().abs().amax(dim=-1, keepdim=True)
    expected_scale = torch.exp2(torch.ceil(torch.log2(amax / E4M3_MAX)))
    assert torch.equal(scale, expected_scale)
    expected = (t / expected_scale.to(t.dtype)).to(torch.float8_e4m3fn)
    assert torch.equal(t8.view(torch.uint8), expected.view(torch.uint8))


def test_fp8_matmul_is_the_product_of_the_quantised_operands_and_computes_no_weight_gradient():
    torch.manual_seed(0)
    x = torch.randn(7, 32, dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(48, 32, dtype=torch.bfloat16)
    rows, row_scale, cols, col_scale = FrozenWeightFp8().get(weight)
    assert (rows.shape, row_scale.shape, cols.shape, col_scale.shape) == ((48, 32), (1, 48), (32, 48), (1, 32))
    out = Fp8FrozenMatmul.apply(x, rows, row_scale, cols, col_scale)
    grad = torch.randn(7, 48, dtype=torch.bfloat16)
    out.backward(grad)

    expected, expected_grad = quantised_products(x, grad, rows, row_scale, cols, col_scale)
    torch.testing.assert_close(out.float(), expected, rtol=1e-2, atol=1e-2)  # bf16 output rounding only
    torch.testing.assert_close(x.grad.float(), expected_grad, rtol=1e-2, atol=1e-2)
    # and e4m3's 3 mantissa bits keep it near the bf16 product
    exact = x.detach().float() @ weight.float().t()
    assert 0 < float((out.detach().float() - exact).norm() / exact.norm()) < 0.08


def test_frozen_weight_copies_are_remade_only_when_the_weight_changes():
    weight = torch.randn(16, 32, dtype=torch.bfloat16)
    cache = FrozenWeightFp8()
    first = cache.get(weight)
    assert cache.get(weight)[0] is first[0]
    with torch.no_grad():
        weight.mul_(4)  # in place, as load_state_dict copies
    remade = cache.get(weight)
    assert remade[0] is not first[0] and torch.equal(remade[1], first[1] * 4) and torch.equal(remade[3], first[3] * 4)


def test_fp8_base_converts_only_the_frozen_lm_layers_and_stays_close_to_bf16(tiny_model_dir):
    torch.manual_seed(0)  # the random LoRA weights
    model = lora_model(tiny_model_dir, torch.bfloat16, dropout=0.0)
    model.train()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    expected_loss, expected_grads = seeded_loss_and_grads(model, ids, autocast=True)
    n_layers = model.base_model.model.config.get_text_config().num_hidden_layers
    assert use_fp8_frozen_base(model) == 7 * n_layers  # the base layer of each LM projection, not LoRA's A and B
    assert use_fp8_frozen_base(model) == 0  # already switched
    converted = [n for n, m in model.named_modules() if hasattr(m, "fp8_weight")]
    assert all(".language_model." in n and n.endswith(".base_layer") for n in converted)

    loss, grads = seeded_loss_and_grads(model, ids, autocast=True)
    assert loss != expected_loss  # FP8 did run
    torch.testing.assert_close(loss, expected_loss, rtol=0.005, atol=0)
    assert grads.keys() == expected_grads.keys() and largest_relative_error(grads, expected_grads) < 0.2  # ~0.07

    model.eval()  # evaluation and generation run the bf16 weights
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        eval_loss = model(input_ids=ids, labels=ids).loss
    assert eval_loss == expected_loss


def test_fp8_base_leaves_trainable_and_unaligned_weights_alone():
    trainable = torch.nn.Linear(32, 16, dtype=torch.bfloat16)
    unaligned = torch.nn.Linear(24, 16, dtype=torch.bfloat16).requires_grad_(False)
    fp32 = torch.nn.Linear(32, 16).requires_grad_(False)
    from custom_modules.speedups import fp8_base

    assert [fp8_base._convertible(m) for m in (trainable, unaligned, fp32)] == [False, False, False]


@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.get_device_capability() < (8, 9),
                    reason="FP8 matmuls need an Ada or Hopper GPU")
def test_fp8_matmul_on_the_gpu_is_the_product_of_the_quantised_operands():
    torch.manual_seed(0)
    x = torch.randn(37, 64, dtype=torch.bfloat16, device="cuda", requires_grad=True)
    weight = torch.randn(96, 64, dtype=torch.bfloat16, device="cuda")
    rows, row_scale, cols, col_scale = FrozenWeightFp8().get(weight)
    out = Fp8FrozenMatmul.apply(x, rows, row_scale, cols, col_scale)
    grad = torch.randn_like(out)
    out.backward(grad)
    expected, expected_grad = quantised_products(x, grad, rows, row_scale, cols, col_scale)
    torch.testing.assert_close(out.float(), expected, rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(x.grad.float(), expected_grad, rtol=2e-2, atol=2e-2)


def test_fp8_base_refuses_a_device_without_rowwise_fp8_matmuls(tiny_model_dir, monkeypatch):
    from custom_modules.speedups import fp8_base

    model = lora_model(tiny_model_dir, torch.bfloat16, dropout=0.0)
    monkeypatch.setattr(fp8_base, "rowwise_fp8_supported", lambda device: False)
    with pytest.raises(RuntimeError, match=r"fp8_base .*QVR_SPEEDUPS_FP8_BASE\) needs FP8 matmuls .* cpu does not run"):
        use_fp8_frozen_base(model)
    assert not any(hasattr(m, "fp8_weight") for m in model.modules())  # nothing half-changed


def test_the_last_input_is_quantised_once_while_layers_read_the_same_tensor():
    from custom_modules.speedups.fp8_base import LastInput

    cache = LastInput()
    x = torch.randn(4, 6, 32, dtype=torch.bfloat16)
    first = cache.quantize(x.reshape(-1, 32))
    assert cache.quantize(x.reshape(-1, 32)) is first  # another view of the same input (k_proj after q_proj)
    with torch.no_grad():
        x.mul_(2)
    assert cache.quantize(x.reshape(-1, 32)) is not first  # changed in place: quantised again
    other = x.clone().reshape(-1, 32)
    assert cache.quantize(other) is not cache.quantize(x.reshape(-1, 32))
    assert torch.equal(cache.quantize(other)[0].float(), quantize_rows(other)[0].float())


def test_fp8_base_and_compiled_language_layers_are_refused_together():
    from custom_modules.speedups import parse_settings

    assert parse_settings({"fp8_base": True})["fp8_base"] is True
    with pytest.raises(ValueError, match=r"QVR_SPEEDUPS_FP8_BASE and QVR_SPEEDUPS_COMPILE_LANGUAGE cannot both be on"):
        parse_settings({"fp8_base": True, "compile_language": True}, where="QVR_SPEEDUPS")
