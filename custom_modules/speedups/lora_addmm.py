"""LoRA layers that add their scaled update to the base output inside the lora_B matmul.

peft's LoRA forward is `result + lora_B(lora_A(dropout(x))) * scaling`: after the small lora_B matmul it makes two
more passes over the layer's whole output (the scaling, then the sum), and the backward pass makes a third (the
scaling of the output's gradient). For a layer with a wide output (the MLP's gate and up projections) those passes
move more bytes than the lora_B matmul itself. Here the base output is updated in place by one `addmm_`
(`result += scaling * h @ lora_B.weight.T`): the scaling and the sum run in the matmul's epilogue, and the
gradient reaches `result` unchanged. The dropout module is called exactly as peft calls it (same masks, same random
stream); the update is rounded once (in the matmul's fp32 accumulator) where peft rounds the product, the scaled
product and the sum to bf16 in turn.

Only plain layers are changed: peft's `lora.Linear` (or a subclass with its forward, as ms-swift's) over an
`nn.Linear`, vanilla LoRA (no DoRA or other variant, no LoRA bias), weights not partitioned by DeepSpeed ZeRO-3
(which gathers them only through module calls). At call time anything else (adapters disabled or merged, per-sample
adapter names, extra arguments, dtypes that only peft's promotion reconciles) takes peft's own forward.
"""
from __future__ import annotations

import types

import torch
from torch import nn


def _plain_lora_linear(module) -> bool:
    from peft.tuners.lora.layer import Linear as LoraLinear

    if (not isinstance(module, LoraLinear) or type(module).forward is not LoraLinear.forward
            or type(module.base_layer) is not nn.Linear or module.lora_variant):
        return False
    weights = [m.weight for m in (*module.lora_A.values(), *module.lora_B.values())]
    return (all(b.bias is None for b in module.lora_B.values())
            and not any(hasattr(w, "ds_id") for w in (*weights, module.base_layer.weight)))


def _addmm_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    adapters = [name for name in self.active_adapters if name in self.lora_A]
    if args or kwargs or self.disable_adapters or self.merged or any(a in self.lora_variant for a in adapters):
        return self.peft_forward(x, *args, **kwargs)
    autocast = torch.is_autocast_enabled(x.device.type)
    if not autocast and any(self.lora_A[a].weight.dtype != self.base_layer.weight.dtype for a in adapters):
        return self.peft_forward(x, *args, **kwargs)  # peft promotes the sum to fp32 and casts it back
    leading = x.shape[:-1]
    x = x.reshape(-1, x.shape[-1])  # 2-D through the base module: its output is no view, so updated in place
    result = self.base_layer(x)
    for name in adapters:
        lora_a, lora_b = self.lora_A[name], self.lora_B[name]
        h = lora_a(self.lora_dropout[name](self._cast_input_dtype(x, lora_a.weight.dtype)))
        result.addmm_(h.to(result.dtype), lora_b.weight.to(result.dtype).t(), alpha=self.scaling[name])
    return result.view(*leading, result.shape[-1])


def use_addmm_lora(model) -> int:
    """Give every plain peft LoRA linear layer of `model` the in-place addmm forward; returns how many changed."""
    changed = 0
    for module in model.modules():
        if getattr(module, "peft_forward", None) is None and _plain_lora_linear(module):
            module.peft_forward = module.forward
            module.forward = types.MethodType(_addmm_forward, module)
            changed += 1
    return changed
