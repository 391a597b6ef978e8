"""FP8 matmuls for the language model's frozen base weights (opt-in: it changes numerics, unlike the others).

Under LoRA the LM's projections keep their weights frozen, so a step runs two of their three matmuls: the forward
and the input gradient. Hopper runs FP8 (e4m3) matmuls at twice the bf16 rate. Here each frozen `nn.Linear` of the
decoder layers (the base layer of every LoRA projection) runs both in FP8 with one scale per row, the scheme
torchao calls "rowwise": the weight is quantised once, in the two layouts the two matmuls need (the GPU's FP8
matmul takes its second operand column-major), and again only if it is changed in place; the input (forward) and
the output gradient (backward) are quantised per row at each call. Scales are powers of two, so the division is
exact and only the cast to e4m3 rounds (3 mantissa bits). The LoRA matrices, the embeddings, the LM head and
everything trained stay as they were.

Why not LLaMA-Factory's `fp8: true` (accelerate's recipe, torchao's Float8Linear): torchao 0.18's backward always
computes the weight gradient, a third matmul that frozen-base LoRA throws away; it re-quantises every frozen weight
at every call; it converts any linear layer whose sizes suit, LoRA's own small matrices included; and ms-swift has
no such option. This module is trainer-neutral (the `speedups` callback of both trainers).

Memory: the two FP8 copies take 2 bytes per frozen LM weight, as much as the bf16 weights they sit beside (about 13
GB for Qwen2.5-VL-7B). Only layers whose weight is bf16, 2-D, frozen and has both sizes divisible by 16 (the FP8
matmul's constraint) change. At call time the layer's own forward runs whenever the step is not training (evaluation
and generation run in bf16, as the adapter will be served, and a merged adapter is never read from stale FP8
copies), the weight has become trainable, or autocast would not bring the input to bf16.
"""
from __future__ import annotations

import functools
import types

import torch
from torch import nn

E4M3 = torch.float8_e4m3fn
E4M3_MAX = torch.finfo(E4M3).max  # 448


# Compiled, so that a row's maximum, its scale, the division and the cast take one or two kernels instead of five
# eager passes over the tensor, with one graph for every number of rows. The division by a power of two is exact
# in bf16 and in the fp32 the compiled kernel computes in, so both round once, in the cast, to the same e4m3 values.
@torch.compile(dynamic=True, fullgraph=True)
def _quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    amax = t.abs().amax(dim=-1, keepdim=True).float()
    scale = torch.exp2(torch.ceil(torch.log2(amax.clamp(min=1e-12) / E4M3_MAX)))
    return (t / scale.to(t.dtype)).to(E4M3), scale


def quantize_rows(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(t8, scale): `t` (rows x cols) as e4m3 with one fp32 power-of-two scale per row, t ~= t8 * scale; the
    scale is the smallest power of two that brings the row's largest magnitude within e4m3's range."""
    return _quantize_rows(t.detach())  # a plain tensor either way: a Parameter or a grad flag would be a new graph


class LastInput:
    """The FP8 copy of the last input quantised, reused while the next layers read the same tensor (q, k and v read
    one input, gate and up another): quantising an input moves about as many bytes as a narrow projection's FP8
    matmul takes time. The entry holds the tensor itself, so its storage cannot be reused under the same key."""

    def __init__(self):
        self.tensor = self.key = self.value = None

    def quantize(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        key = (x.untyped_storage().data_ptr(), x.storage_offset(), x.shape, x.stride(), x._version, x.dtype)
        if key != self.key:
            self.tensor, self.key, self.value = x, key, quantize_rows(x)
        return self.value


LAST_INPUT = LastInput()


class FrozenWeightFp8:
    """The FP8 copies of one frozen weight (out x in): `rows` (out x in, a scale per output row) for the forward,
    `cols` (in x out, a scale per input column) for the input gradient; remade when the weight changes."""

    def __init__(self):
        self.key = None

    def get(self, weight: torch.Tensor):
        key = (weight.data_ptr(), weight._version, weight.device)
        if key != self.key:
            with torch.no_grad():
                self.rows, self.row_scale = quantize_rows(weight)
                self.cols, self.col_scale = quantize_rows(weight.t().contiguous())
                self.row_scale, self.col_scale = self.row_scale.t().contiguous(), self.col_scale.t().contiguous()
            self.key = key
        return self.rows, self.row_scale, self.cols, self.col_scale


class Fp8FrozenMatmul(torch.autograd.Function):
    """x @ weight.T in FP8 with the gradient of x only (the weight is frozen: no weight gradient is computed)."""

    @staticmethod
    def forward(ctx, x, rows, row_scale, cols, col_scale):
        x8, x_scale = LAST_INPUT.quantize(x)
        ctx.save_for_backward(cols, col_scale)
        return torch._scaled_mm(x8, rows.t(), scale_a=x_scale, scale_b=row_scale, out_dtype=x.dtype,
                                use_fast_accum=True)

    @staticmethod
    def backward(ctx, grad):
        cols, col_scale = ctx.saved_tensors
        grad8, grad_scale = quantize_rows(grad.contiguous())
        grad_x = torch._scaled_mm(grad8, cols.t(), scale_a=grad_scale, scale_b=col_scale, out_dtype=grad.dtype)
        return grad_x, None, None, None, None


def _fp8_forward(self, x: torch.Tensor) -> torch.Tensor:
    weight = self.weight
    if weight.requires_grad or not (self.training and torch.is_grad_enabled()):
        return self.bf16_forward(x)
    if x.dtype != weight.dtype:
        if not (x.is_floating_point() and torch.is_autocast_enabled(x.device.type)
                and torch.get_autocast_dtype(x.device.type) == weight.dtype):
            return self.bf16_forward(x)
        x = x.to(weight.dtype)  # what autocast does to a linear layer's input
    leading = x.shape[:-1]
    out = Fp8FrozenMatmul.apply(x.reshape(-1, x.shape[-1]), *self.fp8_weight.get(weight))
    if self.bias is not None:
        out = out + self.bias.to(out.dtype)
    return out.view(*leading, out.shape[-1])


@functools.cache
def rowwise_fp8_supported(device: torch.device) -> bool:
    """Whether `device` runs torch._scaled_mm with a scale per row (CUDA compute capability 8.9+; CPU in recent
    torch releases only)."""
    try:
        a = torch.ones(16, 16, device=device).to(E4M3)
        torch._scaled_mm(a, a.t(), scale_a=torch.ones(16, 1, device=device), scale_b=torch.ones(1, 16, device=device),
                         out_dtype=torch.bfloat16)
    except (RuntimeError, NotImplementedError):
        return False
    return True


def _convertible(module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module) is nn.Linear and weight.dtype == torch.bfloat16 and not weight.requires_grad
            and weight.shape[0] % 16 == 0 and weight.shape[1] % 16 == 0 and not hasattr(weight, "ds_id"))


def use_fp8_frozen_base(model) -> int:
    """Give every frozen bf16 linear layer of `model`'s decoder layers the FP8 forward; returns how many changed."""
    from custom_modules.speedups.parts import decoder_layers

    modules = [m for layer in decoder_layers(model) for m in layer.modules()
               if getattr(m, "bf16_forward", None) is None and _convertible(m)]
    for device in {m.weight.device for m in modules}:
        if not rowwise_fp8_supported(device):
            raise RuntimeError(f"speedups fp8_base (qwenvl_recipes.speedups.fp8_base, QVR_SPEEDUPS_FP8_BASE) needs "
                               f"FP8 matmuls with a scale per row, which {device} does not run (CUDA GPUs of compute "
                               f"capability 8.9 or more: Ada, Hopper); switch it off")
    for module in modules:
        module.bf16_forward, module.fp8_weight = module.forward, FrozenWeightFp8()
        module.forward = types.MethodType(_fp8_forward, module)
    return len(modules)
